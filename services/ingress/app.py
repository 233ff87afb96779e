"""The ingress's entry point: `python -m services.ingress`."""

from __future__ import annotations

from mesh.service import Service, service_main
from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings


async def _reload_tokens(service: Service) -> None:
    assert isinstance(service, IngressService)
    await service.reload_tokens()


def main() -> None:
    own = IngressSettings()
    service_main(
        own,
        lambda nc, identity, settings: IngressService(nc, identity, settings, own),
        reload=_reload_tokens,
    )
