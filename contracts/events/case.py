"""Case lifecycle: a case is opened by another system, moves through steps, and ends."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from contracts.envelope import Event, UtcTime


class CaseOpenedPayload(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # e.g. "insurance_claim": which process handles the case
    source: str  # the external system that opened it
    external_ref: str | None = None  # the opener's own id, for its reconciliation
    data: dict[str, Any] = msgspec.field(default_factory=dict)
    # Other systems the opener named, which may add events to the case as it may.
    parties: list[str] = msgspec.field(default_factory=list)


class CaseOpened(Event, frozen=True, kw_only=True, tag="case_opened"):
    payload: CaseOpenedPayload


class EvidenceReceivedPayload(msgspec.Struct, frozen=True, kw_only=True):
    """What a system outside the mesh added to an open case (written by the ingress,
    which checked it against the contract of its `kind`)."""

    source: str  # the system that sent it: the case's opener or a party it named
    external_event_id: str  # that system's own id of it
    kind: str  # e.g. "police_report"
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class EvidenceReceived(Event, frozen=True, kw_only=True, tag="evidence_received"):
    payload: EvidenceReceivedPayload


class CaseStepCompletedPayload(msgspec.Struct, frozen=True, kw_only=True):
    step: str
    outcome: str
    rationale: str = ""
    evidence: dict[str, Any] = msgspec.field(default_factory=dict)


class CaseStepCompleted(Event, frozen=True, kw_only=True, tag="case_step_completed"):
    payload: CaseStepCompletedPayload


class CaseEscalatedPayload(msgspec.Struct, frozen=True, kw_only=True):
    step: str
    reason: str
    to_role: str = "case_handler"


class CaseEscalated(Event, frozen=True, kw_only=True, tag="case_escalated"):
    payload: CaseEscalatedPayload


class CaseClosedPayload(msgspec.Struct, frozen=True, kw_only=True):
    outcome: str
    summary: str = ""


class CaseClosed(Event, frozen=True, kw_only=True, tag="case_closed"):
    payload: CaseClosedPayload


class CaseWaitingPayload(msgspec.Struct, frozen=True, kw_only=True):
    """An agent puts the case on hold for something from outside, until a deadline."""

    step: str  # the agent's step that waits
    waiting_for: str  # what it waits for, e.g. "police_report" (a subject-safe token)
    until: UtcTime  # when the wait ends without it (the timer's due time)
    timer_id: str  # the timer_set that ends the wait at `until`
    reason: str = ""
    # Whom it was asked from, if outside the mesh (a source name, e.g. the claim's CRM).
    requested_from: str | None = None


class CaseWaiting(Event, frozen=True, kw_only=True, tag="case_waiting"):
    payload: CaseWaitingPayload


WaitOutcome = Literal["arrived", "deadline_passed"]


class WaitEndedPayload(msgspec.Struct, frozen=True, kw_only=True):
    wait_id: str  # the case_waiting it ends
    waiting_for: str
    outcome: WaitOutcome  # what it waited for arrived, or the deadline passed first
    by: str | None = None  # the event that ended it: what arrived, or the timer_fired


class WaitEnded(Event, frozen=True, kw_only=True, tag="wait_ended"):
    payload: WaitEndedPayload
