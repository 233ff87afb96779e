"""The ingress's health answer is read by probes (Kubernetes readiness, `mesh up`): it
says unhealthy in its status code, not only in its body."""

from __future__ import annotations

import httpx
import pytest

from services.ingress.http import http_app
from services.ingress.problems import Refusal
from services.ingress.tokens import BearerTokens


async def _refuse(source: str, body: object) -> Refusal:
    raise AssertionError("no case is opened by a health check")


@pytest.mark.parametrize(("connected", "status"), [(True, 200), (False, 503)])
async def test_health_is_in_the_status_code(connected: bool, status: int) -> None:
    app = http_app(
        _refuse,  # type: ignore[arg-type]
        BearerTokens({}),
        max_body_bytes=1024,
        drain_bytes=1024,
        healthy=lambda: connected,
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingress"
    ) as client:
        answer = await client.get("/healthz")
    assert answer.status_code == status
    assert answer.json() == {"ok": connected}
