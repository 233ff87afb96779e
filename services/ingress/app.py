"""The ingress's entry point: `python -m services.ingress`."""

from __future__ import annotations

from mesh.service_process import service_main
from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings


def main() -> None:
    own = IngressSettings()
    service_main(own, lambda nc, identity, settings: IngressService(nc, identity, settings, own))
