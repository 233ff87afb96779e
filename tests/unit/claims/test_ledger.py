"""The payment gateway's ledger (services/agents/claims/gateway.py), as a port: one
abstract suite of what reconciliation and exactly-once rest on, subclassed once per
backend. The ledger has one backend today, a SQLite file; a new one (PostgreSQL, say)
subclasses `LedgerSuite` with an `open_ledger` fixture and must pass the same."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.agents.claims.gateway import Ledger, PaymentRequest

OpenLedger = Callable[[], Ledger]
KEY = "case-1:issue_payment"


def request(key: str = KEY, changes: dict[str, object] | None = None) -> PaymentRequest:
    fields: dict[str, object] = {
        "idempotency_key": key,
        "amount_cents": 42_001,
        "currency": "EUR",
        "payee_account": "DE89-0001",
    }
    fields.update(changes or {})
    return PaymentRequest(**fields)  # type: ignore[arg-type]


class LedgerSuite:
    """Subclass with an `open_ledger` fixture: a callable that opens the ledger on this
    test's storage, and, called again, opens the same storage (a restarted gateway)."""

    @pytest.fixture
    def ledger(self, open_ledger: OpenLedger) -> Iterator[Ledger]:
        opened = open_ledger()
        yield opened
        opened.close()

    @staticmethod
    def authorized(ledger: Ledger, key: str = KEY) -> str:
        attempted = ledger.attempt(request(key))
        assert attempted is not None
        reference = str(attempted[0]["payment_ref"])
        assert ledger.authorize(reference) == "authorized"
        return reference

    # ------------------------------------------------------------------ attempts

    def test_a_key_seen_first_makes_a_new_payment(self, ledger: Ledger) -> None:
        attempted = ledger.attempt(request())
        assert attempted is not None
        payment, attempt = attempted
        assert attempt == 1
        assert payment["status"] == "new"
        stored = ledger.payment(payment["payment_ref"])
        assert stored is not None
        assert (stored["idempotency_key"], stored["amount_cents"]) == (KEY, 42_001)
        assert (stored["currency"], stored["payee"], stored["captures"]) == ("EUR", "DE89-0001", 0)

    def test_the_same_key_answers_with_the_same_payment_and_counts_attempts(
        self, ledger: Ledger
    ) -> None:
        reference = self.authorized(ledger)
        for expected in (2, 3):
            attempted = ledger.attempt(request())
            assert attempted == ({"payment_ref": reference, "status": "authorized"}, expected)
        assert [row["attempts"] for row in ledger.rows()] == [3]

    @pytest.mark.parametrize(
        "changed",
        [{"amount_cents": 42_002}, {"currency": "USD"}, {"payee_account": "DE89-0002"}],
    )
    def test_the_same_key_for_another_payment_is_refused(
        self, ledger: Ledger, changed: dict[str, object]
    ) -> None:
        reference = self.authorized(ledger)
        assert ledger.attempt(request(changes=changed)) is None
        [row] = ledger.rows()
        assert (row["payment_ref"], row["attempts"], row["amount_cents"]) == (reference, 1, 42_001)

    def test_each_key_has_its_own_payment(self, ledger: Ledger) -> None:
        first, second = self.authorized(ledger, "case-1:x"), self.authorized(ledger, "case-2:x")
        assert first != second
        assert [row["idempotency_key"] for row in ledger.rows()] == ["case-1:x", "case-2:x"]

    # ------------------------------------------------------------------ authorizing

    def test_an_authorization_never_undoes_what_came_after_it(self, ledger: Ledger) -> None:
        captured = self.authorized(ledger, "captured")
        ledger.capture(captured)
        voided = self.authorized(ledger, "voided")
        ledger.void(voided)
        # A stalled first attempt answers late: the payment stays as its retry left it.
        assert ledger.authorize(captured) == "captured"
        assert ledger.authorize(voided) == "voided"

    # ------------------------------------------------------------------ capturing

    def test_a_capture_moves_money_once_and_journals_it(self, ledger: Ledger) -> None:
        reference = self.authorized(ledger)
        assert ledger.capture(reference) is True
        assert ledger.capture(reference) is False  # a retry, a redelivery: no more money
        stored = ledger.payment(reference)
        assert stored is not None
        assert (stored["status"], stored["captures"]) == ("captured", 1)
        [capture] = ledger.captures()
        assert capture["idempotency_key"] == KEY
        assert capture["payment_ref"] == reference
        assert (capture["amount_cents"], capture["currency"]) == (42_001, "EUR")
        assert capture["payee"] == "DE89-0001"
        assert capture["captured_at"]

    def test_capturing_an_unknown_payment_moves_nothing(self, ledger: Ledger) -> None:
        assert ledger.capture("pay-nonexistent") is False
        assert ledger.captures() == []
        assert ledger.payment("pay-nonexistent") is None

    def test_concurrent_captures_of_one_payment_move_money_once(self, ledger: Ledger) -> None:
        reference = self.authorized(ledger)
        start = threading.Barrier(8)
        moved: list[bool] = []

        def capture() -> None:
            start.wait()
            moved.append(ledger.capture(reference))

        threads = [threading.Thread(target=capture) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(moved) == [False] * 7 + [True]
        assert len(ledger.captures()) == 1

    def test_the_journal_lists_captures_in_the_order_they_moved_money(self, ledger: Ledger) -> None:
        references = [self.authorized(ledger, key) for key in ("c:x", "a:x", "b:x")]
        for reference in reversed(references):
            ledger.capture(reference)
        assert [c["payment_ref"] for c in ledger.captures()] == list(reversed(references))
        # Payments, by contrast, are listed by idempotency key.
        assert [p["idempotency_key"] for p in ledger.rows()] == ["a:x", "b:x", "c:x"]

    # ------------------------------------------------------------------ voiding

    def test_a_void_releases_an_authorization_and_moves_no_money(self, ledger: Ledger) -> None:
        reference = self.authorized(ledger)
        ledger.void(reference)
        stored = ledger.payment(reference)
        assert stored is not None
        assert (stored["status"], stored["captures"]) == ("voided", 0)
        assert ledger.captures() == []

    # ------------------------------------------------------------------ restarts

    def test_a_restarted_ledger_forgets_nothing(self, open_ledger: OpenLedger) -> None:
        ledger = open_ledger()
        reference = self.authorized(ledger)
        ledger.capture(reference)
        voided = self.authorized(ledger, "case-2:issue_payment")
        ledger.void(voided)
        rows, journal = ledger.rows(), ledger.captures()
        ledger.close()

        again = open_ledger()
        try:
            assert again.rows() == rows
            assert again.captures() == journal
            assert again.capture(reference) is False  # the guard survives the restart too
            attempted = again.attempt(request())
            assert attempted == ({"payment_ref": reference, "status": "captured"}, 2)
        finally:
            again.close()


class TestSQLiteLedger(LedgerSuite):
    @pytest.fixture
    def open_ledger(self, tmp_path: Path) -> OpenLedger:
        return lambda: Ledger(tmp_path / "gateway.db")
