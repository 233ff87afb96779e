"""The demo's "each payment exactly once", counted where a double payment would show:
the gateway's journal of captures that moved money (per idempotency key, which is the
claim's obligation), the action_completed events in the log (per request), and paid
cases against keys whose money moved."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from contracts import ActionCompleted, ContractError, decode
from contracts.audit_bundle import AuditBundle
from contracts.eventstore_api import CaseView
from contracts.subjects import event_type_of
from services.agents.claims.domain import obligation_key


def completions_in(bundle: AuditBundle) -> Counter[str]:
    """request id -> how many distinct action_completed events the log holds for it."""
    name = ActionCompleted.event_name()
    seen: set[str] = set()
    completions: Counter[str] = Counter()
    for stored in bundle.events:
        if event_type_of(stored.subject) != name:
            continue
        try:
            event = decode(stored.body)
        except ContractError:
            continue  # the verification names it
        if isinstance(event, ActionCompleted) and event.event_id not in seen:
            seen.add(event.event_id)
            completions[event.payload.request_id] += 1
    return completions


def payment_problems(
    ledger: list[dict[str, Any]], completions: Counter[str], views: Mapping[str, CaseView]
) -> list[str]:
    """Whatever shows a claim paid other than exactly once: the gateway's `ledger`, the
    log's `completions` (from `completions_in`) and the case `views`."""
    problems = [
        f"{p['idempotency_key']}: money moved {p['captures']} times ({p['payment_ref']})"
        for p in ledger
        if p["captures"] > 1
    ]
    problems += [
        f"request {request}: completed {count} times"
        for request, count in sorted(completions.items())
        if count > 1
    ]
    moved = {p["idempotency_key"] for p in ledger if p["captures"] > 0}
    paid = {
        obligation_key(view.case_id, "issue_payment")
        for view in views.values()
        if view.status == "closed" and view.outcome == "paid"
    }
    problems += [f"{key}: money moved, but the case is not paid" for key in sorted(moved - paid)]
    problems += [f"{key}: the case is paid, but no money moved" for key in sorted(paid - moved)]
    return problems
