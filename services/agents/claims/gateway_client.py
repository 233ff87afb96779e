"""The payment agent's side of the gateway: HTTP with a short timeout, failures sorted
into "try again" (timeouts, 5xx) and "never" (4xx)."""

from __future__ import annotations

from typing import Any

import httpx

from mesh import PermanentError, TransientError


class GatewayUnavailable(TransientError):
    pass


class GatewayRefused(PermanentError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class GatewayClient:
    def __init__(
        self,
        base_url: str,
        timeout: float = 1.0,
        token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,  # tests: a gateway in-process
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            base_url=base_url, timeout=timeout, headers=headers, transport=transport
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http.post(path, json=body or {})
        except httpx.TimeoutException:
            raise GatewayUnavailable(f"gateway {path}: no answer in time") from None
        except httpx.TransportError as exc:
            raise GatewayUnavailable(f"gateway {path}: {exc!r}") from None
        detail = response.json() if response.content else {}
        if response.status_code >= 500:
            raise GatewayUnavailable(f"gateway {path}: {response.status_code} {detail}")
        if response.status_code >= 400:
            raise GatewayRefused(
                f"gateway {path}: {response.status_code} {detail.get('error')}",
                response.status_code,
            )
        result: dict[str, Any] = detail
        return result

    async def authorize(
        self, idempotency_key: str, amount_cents: int, currency: str, payee_account: str
    ) -> dict[str, Any]:
        return await self._post(
            "/v1/payments",
            {
                "idempotency_key": idempotency_key,
                "amount_cents": amount_cents,
                "currency": currency,
                "payee_account": payee_account,
            },
        )

    async def capture(self, payment_ref: str) -> dict[str, Any]:
        return await self._post(f"/v1/payments/{payment_ref}/capture")

    async def void(self, payment_ref: str) -> dict[str, Any]:
        return await self._post(f"/v1/payments/{payment_ref}/void")

    async def ledger(self) -> list[dict[str, Any]]:
        response = await self._http.get("/v1/ledger")
        response.raise_for_status()
        payments: list[dict[str, Any]] = response.json()["payments"]
        return payments
