"""A simulated external payment gateway that fails and stalls on purpose
(`python -m services.agents.claims.gateway`).

    POST /v1/payments                 authorize: {idempotency_key, amount_cents,
                                      currency, payee_account} -> {payment_ref, status}
                                      (409 if the key was used with other details)
    POST /v1/payments/{ref}/capture   move the money
    POST /v1/payments/{ref}/void      release an authorization that will not be captured
    GET  /v1/ledger                   every payment, and every capture that moved money,
                                      for reconciliation

Idempotent like a real one: the same idempotency key always answers with the same
payment, so a retried or redelivered request never pays twice; the same key with
other details (amount, currency, payee) is refused. Every capture that moved money is
written to a journal of its own (the acquirer's settlement record), apart from the
guard that stops a second capture: reconciliation counts the journal, so a gateway
whose guard failed would show the same key paid twice. Every call needs the gateway's
credential (`Authorization: Bearer <MESH_GATEWAY_TOKEN>`), as a real acquirer's would:
nothing else on the host can move money. The ledger is a SQLite file, so a gateway
restart forgets nothing.

Misbehaviour, by the payee account's prefix (and a random share of plain failures):
    FAIL…    503 on every attempt: an outage that outlasts the retries
    FLAKY…   503 on the first two attempts, then fine
    SLOW…    the first attempt stalls past the client's timeout (but is recorded)
    CLOSED…  authorizes, then refuses the capture: the account is closed
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import random
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from fastapi import FastAPI, Request, Response
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8099, ge=0, le=65535)
    ledger: Path = Field(default=Path(".mesh/gateway.db"))
    failure_rate: float = Field(default=0.05, ge=0, le=1, description="random 503s")
    token: SecretStr | None = Field(
        default=None, description="the bearer token every caller must present (unset: none)"
    )
    stall_seconds: float = Field(default=2.5, ge=0)


class PaymentRequest(msgspec.Struct, frozen=True, kw_only=True):
    idempotency_key: str
    amount_cents: int
    currency: str
    payee_account: str


class Ledger:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS payments (idempotency_key TEXT PRIMARY KEY,"
            " payment_ref TEXT UNIQUE, amount_cents INTEGER, currency TEXT, payee TEXT,"
            " status TEXT, attempts INTEGER, captures INTEGER DEFAULT 0)"
        )
        # One row per capture that moved money; `payments.captures` above is no longer
        # written (kept so that an older ledger file still opens).
        journaled = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='captures'"
        ).fetchone()
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS captures (capture_id INTEGER PRIMARY KEY,"
            " idempotency_key TEXT, payment_ref TEXT, amount_cents INTEGER, currency TEXT,"
            " payee TEXT, captured_at TEXT DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ')))"
        )
        if journaled is None:
            # A ledger written before the journal existed: its captured payments moved
            # money once each (its guard counted them), so the journal starts from those.
            self._db.execute(
                "INSERT INTO captures (idempotency_key, payment_ref, amount_cents, currency,"
                " payee) SELECT idempotency_key, payment_ref, amount_cents, currency, payee"
                " FROM payments WHERE captures > 0"
            )

    def attempt(self, request: PaymentRequest) -> tuple[dict[str, Any], int] | None:
        """The payment for this key (created on first sight) and the attempt number;
        None if the key was used for another payment (other amount, currency or payee)."""
        with self._lock:
            row = self._db.execute(
                "SELECT payment_ref, status, attempts, amount_cents, currency, payee"
                " FROM payments WHERE idempotency_key=?",
                (request.idempotency_key,),
            ).fetchone()
            if row is not None and tuple(row[3:]) != (
                request.amount_cents,
                request.currency,
                request.payee_account,
            ):
                return None
            if row is None:
                ref = f"pay-{uuid.uuid4().hex[:12]}"
                self._db.execute(
                    "INSERT INTO payments VALUES (?, ?, ?, ?, ?, 'new', 1, 0)",
                    (
                        request.idempotency_key,
                        ref,
                        request.amount_cents,
                        request.currency,
                        request.payee_account,
                    ),
                )
                return {"payment_ref": ref, "status": "new"}, 1
            attempts = row[2] + 1
            self._db.execute(
                "UPDATE payments SET attempts=? WHERE idempotency_key=?",
                (attempts, request.idempotency_key),
            )
            return {"payment_ref": row[0], "status": row[1]}, attempts

    # The idempotency guard: a captured payment is not captured again.
    CAPTURE = "UPDATE payments SET status='captured' WHERE payment_ref=? AND status != 'captured'"

    def capture(self, ref: str) -> bool:
        """Move the money: True if this call moved it (and journaled it), False if the
        payment was captured already (a retry or a redelivery moves no more money)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                moved = self._db.execute(self.CAPTURE, (ref,)).rowcount > 0
                if moved:
                    self._db.execute(
                        "INSERT INTO captures (idempotency_key, payment_ref, amount_cents,"
                        " currency, payee) SELECT idempotency_key, payment_ref, amount_cents,"
                        " currency, payee FROM payments WHERE payment_ref=?",
                        (ref,),
                    )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return moved

    def void(self, ref: str) -> None:
        with self._lock:
            self._db.execute("UPDATE payments SET status='voided' WHERE payment_ref=?", (ref,))

    def authorize(self, ref: str) -> str:
        """Authorize a new payment; a payment already further along stays as it is (a
        stalled first attempt must not undo what its retry went on to do)."""
        with self._lock:
            self._db.execute(
                "UPDATE payments SET status='authorized' WHERE payment_ref=? AND status='new'",
                (ref,),
            )
            row = self._db.execute(
                "SELECT status FROM payments WHERE payment_ref=?", (ref,)
            ).fetchone()
            return str(row[0])

    # A payment's `captures`: how many captures of it moved money (from the journal).
    _PAYMENTS = (
        "SELECT p.idempotency_key, p.payment_ref, p.amount_cents, p.currency, p.payee,"
        " p.status, p.attempts, (SELECT COUNT(*) FROM captures c"
        " WHERE c.idempotency_key = p.idempotency_key) AS captures FROM payments p"
    )

    def payment(self, ref: str) -> dict[str, Any] | None:
        rows = self._select(f"{self._PAYMENTS} WHERE p.payment_ref=?", (ref,))
        return rows[0] if rows else None

    def rows(self) -> list[dict[str, Any]]:
        return self._select(f"{self._PAYMENTS} ORDER BY p.idempotency_key")

    def captures(self) -> list[dict[str, Any]]:
        """Every capture that moved money, in order."""
        return self._select("SELECT * FROM captures ORDER BY capture_id")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _select(self, query: str, parameters: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            cursor = self._db.execute(query, parameters)
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def gateway_app(
    settings: GatewaySettings, ledger: Ledger, rng: random.Random | None = None
) -> FastAPI:
    app = FastAPI(title="Simulated payment gateway")
    chance = rng or random.Random()
    token = settings.token.get_secret_value() if settings.token else None

    @app.middleware("http")
    async def authenticate(request: Request, call_next: Any) -> Response:
        given = request.headers.get("authorization", "")
        if token is not None and not hmac.compare_digest(
            given.encode(), f"Bearer {token}".encode()
        ):
            return answer(401, {"error": "the gateway's credential is required"})
        response: Response = await call_next(request)
        return response

    def answer(status: int, body: dict[str, Any]) -> Response:
        return Response(
            msgspec.json.encode(body), status_code=status, media_type="application/json"
        )

    @app.post("/v1/payments")
    async def authorize_v1(request_body: dict[str, Any]) -> Response:
        try:
            request = msgspec.convert(request_body, PaymentRequest)
        except msgspec.ValidationError as exc:
            return answer(400, {"error": str(exc)})
        attempted = ledger.attempt(request)
        if attempted is None:
            return answer(
                409,
                {
                    "error": f"idempotency key {request.idempotency_key} was used for "
                    "another payment"
                },
            )
        payment, attempt = attempted
        payee = request.payee_account
        if payee.startswith("FAIL"):
            return answer(503, {"error": "acquirer unreachable"})
        if payee.startswith("FLAKY") and attempt <= 2:
            return answer(503, {"error": "try again"})
        if payee.startswith("SLOW") and attempt == 1:
            ledger.authorize(payment["payment_ref"])
            await asyncio.sleep(settings.stall_seconds)  # recorded, but answered too late
        elif attempt == 1 and chance.random() < settings.failure_rate:
            return answer(503, {"error": "temporarily unavailable"})
        payment["status"] = ledger.authorize(payment["payment_ref"])
        return answer(200, payment)

    @app.post("/v1/payments/{ref}/capture")
    async def capture(ref: str) -> Response:
        row = ledger.payment(ref)
        if row is None:
            return answer(404, {"error": f"no payment {ref}"})
        if row["status"] == "voided":
            return answer(409, {"error": f"{ref} was voided"})
        if str(row["payee"]).startswith("CLOSED"):
            return answer(422, {"error": "payee account is closed"})
        ledger.capture(ref)
        return answer(200, {"payment_ref": ref, "status": "captured"})

    @app.post("/v1/payments/{ref}/void")
    async def void(ref: str) -> Response:
        row = ledger.payment(ref)
        if row is None:
            return answer(404, {"error": f"no payment {ref}"})
        if row["status"] == "captured":
            return answer(409, {"error": f"{ref} is captured; refund it instead"})
        ledger.void(ref)
        return answer(200, {"payment_ref": ref, "status": "voided"})

    @app.get("/v1/ledger")
    async def all_payments() -> Response:
        return answer(200, {"payments": ledger.rows(), "captures": ledger.captures()})

    return app


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings()
    app = gateway_app(settings, Ledger(settings.ledger))
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


if __name__ == "__main__":
    main()
