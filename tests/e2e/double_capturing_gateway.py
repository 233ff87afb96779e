"""A payment gateway that really pays twice, for tests only (never in production
code): `python -m tests.e2e.double_capturing_gateway`, in the stack's `gateway` place.

It is the simulated gateway with its idempotency guard broken on purpose:
- its ledger captures a captured payment again, moving the money again;
- the first answer to each capture is lost after the money moved (a 503, as a proxy
  that timed out would give), so the payment agent asks again — and is paid again.
With the real guard the second request moves nothing; here the ledger's journal shows
two captures for one idempotency key, which the exactly-once check must report.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import uvicorn
from fastapi import Request, Response

from services.agents.claims.gateway import GatewaySettings, Ledger, gateway_app


class UnguardedLedger(Ledger):
    CAPTURE = "UPDATE payments SET status='captured' WHERE payment_ref=?"


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings()
    app = gateway_app(settings, UnguardedLedger(settings.ledger))
    answered: set[str] = set()

    @app.middleware("http")
    async def lose_first_capture_answer(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        path = request.url.path
        if path.endswith("/capture") and response.status_code == 200 and path not in answered:
            answered.add(path)
            body = msgspec.json.encode({"error": "upstream timed out"})
            return Response(body, status_code=503, media_type="application/json")
        return response

    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
