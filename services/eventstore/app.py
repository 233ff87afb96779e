"""The event store's entry point: `python -m services.eventstore`."""

from __future__ import annotations

from mesh.service import service_main
from services.eventstore.service import EventStoreService
from services.eventstore.settings import EventStoreSettings


def main() -> None:
    own = EventStoreSettings()
    service_main(own, lambda nc, identity, settings: EventStoreService(nc, identity, settings, own))
