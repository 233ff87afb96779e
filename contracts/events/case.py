"""Case lifecycle: a case is opened by another system, moves through steps, and ends."""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.envelope import Event


class CaseOpenedPayload(msgspec.Struct, frozen=True, kw_only=True):
    kind: str  # e.g. "insurance_claim": which process handles the case
    source: str  # the external system that opened it
    external_ref: str | None = None  # the opener's own id, for its reconciliation
    data: dict[str, Any] = msgspec.field(default_factory=dict)


class CaseOpened(Event, frozen=True, kw_only=True, tag="case_opened"):
    payload: CaseOpenedPayload


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
