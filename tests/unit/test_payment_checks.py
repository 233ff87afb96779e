"""The demo's (and the e2e test's) "each payment exactly once" counts what a double
payment would change: captures that moved money per idempotency key, action_completed
events per request, and paid cases against keys whose money moved."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from contracts.eventstore_api import CaseView
from services.eventstore.audit import Report
from services.stack.demo import DemoResult


def view(case_id: str, outcome: str) -> CaseView:
    now = datetime.now(UTC)
    return CaseView(
        case_id=case_id,
        kind="insurance_claim",
        source="crm",
        status="closed",
        step="payment",
        outcome=outcome,
        opened_at=now,
        updated_at=now,
        closed_at=now,
        event_count=10,
        last_sequence=10,
        open_actions=0,
        pending_approvals=0,
        flagged_events=0,
        chain_head="",
    )


def payment(case_id: str, captures: int, status: str = "captured") -> dict[str, Any]:
    return {
        "idempotency_key": f"{case_id}:issue_payment",
        "payment_ref": f"pay-{case_id}",
        "status": status,
        "captures": captures,
    }


def result(
    ledger: list[dict[str, Any]], views: list[CaseView], completions: dict[str, int]
) -> DemoResult:
    return DemoResult(
        cases=[],
        views={v.case_id: v for v in views},
        elapsed=1.0,
        dead_letters=Counter(),
        approvals=Counter(),
        ledger=ledger,
        report=Report(scope="*"),
        timed_out=False,
        completions=Counter(completions),
    )


def test_each_claim_paid_once_passes() -> None:
    checked = result(
        [payment("c1", 1), payment("c2", 0, status="voided")],
        [view("c1", "paid"), view("c2", "rejected")],
        {"r1": 1},
    )
    assert checked.payment_problems == []
    assert checked.paid_once


def test_money_moved_twice_for_one_key_fails() -> None:
    checked = result([payment("c1", 2)], [view("c1", "paid")], {"r1": 1})
    assert checked.payment_problems == ["c1:issue_payment: money moved 2 times (pay-c1)"]
    assert not checked.paid_once


def test_a_request_completed_twice_fails() -> None:
    checked = result([payment("c1", 1)], [view("c1", "paid")], {"r1": 2})
    assert checked.payment_problems == ["request r1: completed 2 times"]


def test_money_and_outcomes_must_agree() -> None:
    checked = result([payment("c1", 1)], [view("c1", "rejected"), view("c2", "paid")], {})
    assert checked.payment_problems == [
        "c1:issue_payment: money moved, but the case is not paid",
        "c2:issue_payment: the case is paid, but no money moved",
    ]
