"""The case reader's entry point: `python -m services.reader`."""

from __future__ import annotations

from mesh.service import service_main
from services.reader.service import ReaderService
from services.reader.settings import ReaderSettings


def main() -> None:
    own = ReaderSettings()
    service_main(own, lambda nc, identity, settings: ReaderService(nc, settings))
