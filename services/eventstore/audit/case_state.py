"""What one case's log has held so far, as the policy checks walk its verified
messages in log order (pure)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from contracts.envelope import Event
from contracts.events.actions import ActionRequested, ApprovalGranted
from contracts.events.case import CaseWaiting
from contracts.events.timers import TimerSet
from services.eventstore.domain import LogRecord

# What a check found: the message it is about, and what is wrong with it.
Finding = Callable[[LogRecord, str], None]


class RequestSeen(NamedTuple):
    record: LogRecord
    event: ActionRequested
    digest: str  # of its stored bytes: what a decision or a grant must cite


@dataclass
class TimerSeen:
    record: LogRecord  # its timer_set
    event: TimerSet
    fired: LogRecord | None = None
    cancelled: LogRecord | None = None


@dataclass
class WaitSeen:
    record: LogRecord  # its case_waiting
    event: CaseWaiting
    ended: LogRecord | None = None


@dataclass
class CaseSoFar:
    requests: dict[str, RequestSeen] = field(default_factory=dict)
    # Policy's asks for a human (approval_required, escalations), for the role asked.
    asked: list[Event] = field(default_factory=list)
    grants: dict[str, tuple[LogRecord, ApprovalGranted]] = field(default_factory=dict)
    approved: set[str] = field(default_factory=set)  # requests with an approving decision
    executed: dict[str, str] = field(default_factory=dict)  # action type -> its request
    opened: LogRecord | None = None
    closed: LogRecord | None = None
    timers: dict[str, TimerSeen] = field(default_factory=dict)  # by timer (timer_set) id
    waits: dict[str, WaitSeen] = field(default_factory=dict)  # by wait (case_waiting) id
