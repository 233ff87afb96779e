"""The event store's entry point: `python -m services.eventstore`."""

from __future__ import annotations

import asyncio
import logging

from mesh.service_process import run_service
from mesh.settings import MeshSettings
from services.eventstore.service import EventStoreService
from services.eventstore.settings import EventStoreSettings


async def run(settings: MeshSettings, store: EventStoreSettings) -> None:
    await run_service(
        settings,
        store.service_id,
        store.seed_file,
        lambda nc, identity: EventStoreService(nc, identity, settings, store),
    )


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(MeshSettings(), EventStoreSettings()))
