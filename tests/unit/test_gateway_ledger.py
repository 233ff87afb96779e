"""The simulated gateway's ledger keeps a journal of every capture that moved money,
apart from the guard that stops a second capture — so reconciliation can see a double
payment when the guard fails, instead of reading the guard's own counter back."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from services.agents.claims.gateway import GatewaySettings, Ledger, PaymentRequest, gateway_app


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "gateway.db")
    yield opened
    opened.close()


def _request(key: str = "case-1:issue_payment") -> PaymentRequest:
    return PaymentRequest(
        idempotency_key=key, amount_cents=42_001, currency="EUR", payee_account="DE89-1"
    )


def _authorized(ledger: Ledger, key: str = "case-1:issue_payment") -> str:
    attempted = ledger.attempt(_request(key))
    assert attempted is not None
    ref = str(attempted[0]["payment_ref"])
    assert ledger.authorize(ref) == "authorized"
    return ref


def test_a_capture_moves_money_once_and_is_journaled(ledger: Ledger) -> None:
    ref = _authorized(ledger)
    assert ledger.capture(ref) is True
    assert ledger.capture(ref) is False  # a retry moves no more money
    [payment] = ledger.rows()
    assert (payment["status"], payment["captures"]) == ("captured", 1)
    [capture] = ledger.captures()
    assert (capture["idempotency_key"], capture["payment_ref"]) == ("case-1:issue_payment", ref)
    assert capture["amount_cents"] == 42_001


def test_a_broken_guard_shows_as_two_captures_of_one_key(tmp_path: Path) -> None:
    class Unguarded(Ledger):
        CAPTURE = "UPDATE payments SET status='captured' WHERE payment_ref=?"

    ledger = Unguarded(tmp_path / "gateway.db")
    ref = _authorized(ledger)
    assert ledger.capture(ref) is True
    assert ledger.capture(ref) is True
    [payment] = ledger.rows()
    assert payment["captures"] == 2
    assert len(ledger.captures()) == 2
    ledger.close()


def test_a_ledger_from_before_the_journal_keeps_its_captures(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE payments (idempotency_key TEXT PRIMARY KEY, payment_ref TEXT UNIQUE,"
        " amount_cents INTEGER, currency TEXT, payee TEXT, status TEXT, attempts INTEGER,"
        " captures INTEGER DEFAULT 0)"
    )
    db.execute("INSERT INTO payments VALUES ('k1', 'pay-1', 100, 'EUR', 'DE', 'captured', 1, 1)")
    db.execute("INSERT INTO payments VALUES ('k2', 'pay-2', 100, 'EUR', 'DE', 'voided', 1, 0)")
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert {p["idempotency_key"]: p["captures"] for p in ledger.rows()} == {"k1": 1, "k2": 0}
    journal = ledger.captures()
    ledger.close()
    again = Ledger(path)
    assert again.captures() == journal  # opened again: not journaled twice
    again.close()


async def test_the_ledger_endpoint_lists_payments_and_captures(ledger: Ledger) -> None:
    app = gateway_app(GatewaySettings(failure_rate=0.0), ledger)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
        authorized = await http.post(
            "/v1/payments",
            json={
                "idempotency_key": "case-9:issue_payment",
                "amount_cents": 500,
                "currency": "EUR",
                "payee_account": "DE89-2",
            },
        )
        ref = authorized.json()["payment_ref"]
        for _ in range(2):
            assert (await http.post(f"/v1/payments/{ref}/capture")).status_code == 200
        body = (await http.get("/v1/ledger")).json()
    [payment] = body["payments"]
    assert (payment["status"], payment["captures"]) == ("captured", 1)
    assert [c["payment_ref"] for c in body["captures"]] == [ref]
