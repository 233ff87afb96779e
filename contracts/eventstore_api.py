"""What the event store answers: case state, the audit timeline and per-agent activity.

The views are projections of the case log; each is what a fold over the log up to its
`last_sequence` gives, so an auditor's replay of the log compares equal to them. Asked
over request/reply on `<root>.svc.eventstore.<operation>`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from contracts.audit_bundle import Proofs, SignedDocument

CaseStatus = Literal["open", "waiting", "escalated", "closed"]
ActionStatus = Literal[
    "requested",  # waiting for policy
    "approved",  # policy (or a human) allowed it: the executor may run it
    "denied",
    "awaiting_approval",  # policy asks a human
    "rejected",  # the human said no
    "expired",  # nobody decided in time
    "completed",
    "failed",
]
# Statuses after which nothing more is expected for an action.
FINISHED_ACTIONS: frozenset[str] = frozenset(
    {"denied", "rejected", "expired", "completed", "failed"}
)


class ActionView(msgspec.Struct, frozen=True, kw_only=True):
    request_id: str  # the action_requested event id (and the side effect's idempotency key)
    case_id: str
    action_type: str
    requested_by: str
    status: ActionStatus
    requested_at: datetime
    updated_at: datetime
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    approver_role: str | None = None  # set while a human is asked
    deadline: datetime | None = None
    approver: str | None = None  # the human who decided, if one did
    policy_bundle_hash: str | None = None  # the bundle that decided
    outcome: str | None = None  # the executor's result or error, in a line


class CaseView(msgspec.Struct, frozen=True, kw_only=True):
    case_id: str
    kind: str | None  # None until the case_opened event is seen
    source: str | None
    status: CaseStatus
    step: str | None  # the last step completed
    outcome: str | None  # the last step's outcome, or the closing outcome
    opened_at: datetime | None
    updated_at: datetime
    closed_at: datetime | None
    event_count: int  # every message of the case in the log, flagged ones included
    last_sequence: int
    open_actions: int
    pending_approvals: int
    flagged_events: int  # failed verification, unreadable, or duplicates of earlier ids
    chain_head: str  # hex: the per-case hash chain over the stored bytes, in log order


class CaseDetail(msgspec.Struct, frozen=True, kw_only=True):
    case: CaseView
    actions: list[ActionView]


class TimelineEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One line of the audit timeline: who did what, on what evidence, and why."""

    sequence: int
    case_id: str
    event_id: str | None  # None when the message could not be read
    event_type: str | None
    actor: str | None
    signer: str | None
    occurred_at: datetime | None  # the actor's clock
    stored_at: datetime  # the broker's clock: when it entered the log
    summary: str
    rationale: str | None = None
    evidence: dict[str, Any] = msgspec.field(default_factory=dict)
    decision: str | None = None  # approved / denied / approval_required / granted / …
    request_id: str | None = None
    approver: str | None = None
    policy_bundle_hash: str | None = None
    determining_policies: list[str] = msgspec.field(default_factory=list)
    verified: bool = True
    problem: str | None = None  # why it is flagged
    duplicate_of: int | None = None  # the sequence of the first copy of this event id


class AgentActivity(msgspec.Struct, frozen=True, kw_only=True):
    actor: str
    event_type: str
    events: int
    flagged: int
    first_at: datetime
    last_at: datetime


class CaseQuery(msgspec.Struct, frozen=True, kw_only=True):
    status: CaseStatus | None = None
    kind: str | None = None
    limit: int = 100
    after: str | None = None  # page on: case ids sort ascending


class CaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    case_id: str


class ActivityQuery(msgspec.Struct, frozen=True, kw_only=True):
    actor: str | None = None


class ManifestRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Ask the store to seal one page of what it holds for a case (or the whole log),
    and to prove it against the checkpoint of `tree_size`: what an export carries."""

    tree_size: int  # a size the store has published a checkpoint for
    case_id: str | None = None  # None: the whole log
    after_sequence: int = 0  # the page starts after this sequence
    page_size: int = 2000
    inclusion: bool = True  # with an inclusion proof for each message of the page
    consistency_from: list[int] = msgspec.field(default_factory=list)  # earlier sizes


class StoreStatus(msgspec.Struct, frozen=True, kw_only=True):
    last_sequence: int
    tree_size: int
    root_hash: str
    last_checkpoint_size: int
    cases: int
    flagged_events: int


class StoreReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str | None = None
    cases: list[CaseView] = msgspec.field(default_factory=list)
    detail: CaseDetail | None = None
    timeline: list[TimelineEntry] = msgspec.field(default_factory=list)
    activity: list[AgentActivity] = msgspec.field(default_factory=list)
    status: StoreStatus | None = None
    manifest: SignedDocument | None = None  # one signed Manifest page
    proofs: Proofs | None = None
