"""Waiting for evidence, pure: which waits are open, and the claims rule that waits."""

from __future__ import annotations

from datetime import UTC, date, datetime

from contracts import CaseWaiting, CaseWaitingPayload, WaitEnded, WaitEndedPayload
from contracts.envelope import Event
from contracts.ingress import ClaimData
from mesh._sdk.waits import open_waits
from services.agents.claims.domain import needs_police_report

UNTIL = datetime(2026, 12, 14, tzinfo=UTC)


def waiting(what: str, actor: str = "intake") -> CaseWaiting:
    payload = CaseWaitingPayload(step="intake", waiting_for=what, until=UNTIL, timer_id="t")
    return CaseWaiting(case_id="c1", actor=actor, payload=payload)


def ended(wait: CaseWaiting, actor: str = "intake") -> WaitEnded:
    payload = WaitEndedPayload(
        wait_id=wait.event_id, waiting_for=wait.payload.waiting_for, outcome="arrived"
    )
    return WaitEnded(case_id="c1", actor=actor, payload=payload)


def test_open_waits_are_the_agents_own_not_yet_ended() -> None:
    report, photos = waiting("police_report"), waiting("photos")
    theirs = waiting("invoice", actor="fraud")
    log: list[Event] = [report, photos, theirs, ended(photos, actor="fraud")]
    assert sorted(open_waits(log, "intake")) == ["photos", "police_report"]
    assert open_waits(log, "intake")["police_report"].wait_id == report.event_id
    log.append(ended(photos))
    assert sorted(open_waits(log, "intake")) == ["police_report"]
    assert sorted(open_waits(log, "fraud")) == ["invoice"]


def _claim(description: str) -> ClaimData:
    return ClaimData(
        policy_number="P-12345",
        claimant="A",
        claim_type="auto",
        amount_cents=10_000,
        incident_date=date(2026, 10, 1),
        description=description,
        payee_account="DE89-1",
    )


def test_a_theft_needs_a_police_report() -> None:
    assert needs_police_report(_claim("Car STOLEN overnight"))
    assert needs_police_report(_claim("break-in at the garage"))
    assert not needs_police_report(_claim("rear-ended at a light"))
