"""The ingress's entry point: `python -m services.ingress`."""

from __future__ import annotations

import asyncio
import logging

from mesh.service_process import run_service
from mesh.settings import MeshSettings
from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings


async def run(settings: MeshSettings, ingress: IngressSettings) -> None:
    await run_service(
        settings,
        ingress.service_id,
        ingress.seed_file,
        lambda nc, identity: IngressService(nc, identity, settings, ingress),
    )


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(MeshSettings(), IngressSettings()))
