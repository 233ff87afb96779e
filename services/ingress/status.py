"""Where a case stands, as the system that opened it may see it (pure).

The answer is folded from the case's log: whether the case is open, waits for a
person's approval, was escalated to a person, or is closed (and how). Nothing else of
the log leaves the mesh: no evidence, no rationale, no agent's findings or names.

A case is the asking source's only if its opening — the first message on the case's
`case_opened` subject, which the ingress writes only where nothing was written before
— is a `case_opened` by the ingress itself, for that source and that reference. The id
(`<source>-<external_ref>`) alone proves nothing: anyone allowed to write case events
could write under it. Every other case is "not found", with the same words as a case
that does not exist, so that no source learns which references another has used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts.codec import EventDecoder
from contracts.envelope import Event
from contracts.errors import ContractError
from contracts.events.actions import (
    ActionApproved,
    ActionDenied,
    ApprovalExpired,
    ApprovalRequired,
)
from contracts.events.case import (
    CaseClosed,
    CaseEscalated,
    CaseOpened,
    CaseWaiting,
    WaitEnded,
)
from contracts.ingress import CASE_EVENT_KINDS, CaseState, CaseStatusReply, CaseStatusRequest
from contracts.subjects import event_type_of
from mesh.service import RawMessage
from services.ingress.domain import case_id_for, source_problem
from services.ingress.json_body import Limits, read_json
from services.ingress.problems import Refusal, convert_struct, problem

__all__ = [
    "CaseProgress",
    "case_status",
    "event_of",
    "not_found",
    "opening_of",
    "progress",
    "status_request",
]

_decoder = EventDecoder()


def status_request(
    source: str, asked: bytes | dict[str, Any], limits: Limits
) -> CaseStatusRequest | Refusal:
    """A status request from `source`: the JSON body received over NATS, or the
    members an HTTP request names in its URL. Refused with every reason why not."""
    if (bad_source := source_problem(source)) is not None:
        return Refusal([bad_source])
    if isinstance(asked, bytes):
        document = read_json(asked, limits)
        if isinstance(document, Refusal):
            return document
        value = document.value
    else:
        value = asked
    request, problems = convert_struct(value, CaseStatusRequest, "$")
    if problems or request is None:
        return Refusal(problems)
    return request


@dataclass
class CaseProgress:
    """What the log says of a case, as far as its opener may know it."""

    status: CaseState = "open"
    outcome: str | None = None
    updated_at: datetime | None = None
    awaiting: set[str] = field(default_factory=set)  # request ids waiting for a person
    # Open waits for what the case takes from outside: wait id -> (who waits, for what).
    waiting_for: dict[str, tuple[str, str]] = field(default_factory=dict)
    # What this case's kind takes from outside (contracts.ingress.CASE_EVENT_KINDS):
    # other waits are agents' own business, not the opener's.
    outside: frozenset[str] = frozenset()

    def evolve(self, event: Event, at: datetime) -> None:
        self.updated_at = at
        if self.status == "closed":
            return  # the first close stands, as in the event store's views
        match event:
            case CaseClosed(payload=p):
                self.status, self.outcome = "closed", p.outcome
            case CaseEscalated():
                self.status = "escalated"
            case ApprovalRequired(payload=p):
                self.awaiting.add(p.request_id)
            case CaseWaiting(payload=p) if p.waiting_for in self.outside:
                self.waiting_for.setdefault(event.event_id, (event.actor, p.waiting_for))
            case WaitEnded(payload=p):
                # Only the agent that waits ends its wait.
                if self.waiting_for.get(p.wait_id, ("", ""))[0] == event.actor:
                    del self.waiting_for[p.wait_id]
            # Only the policy's decision settles a wait: a person's answer it refused
            # (a clerk without the role) leaves the case waiting.
            case (
                ActionApproved(payload=settled)
                | ActionDenied(payload=settled)
                | ApprovalExpired(payload=settled)
            ):
                self.awaiting.discard(settled.request_id)
        if self.status in ("open", "awaiting_approval", "waiting"):
            self.status = (
                "awaiting_approval" if self.awaiting else "waiting" if self.waiting_for else "open"
            )


def progress(
    events: Iterable[tuple[Event, datetime]], outside: frozenset[str] = frozenset()
) -> CaseProgress:
    state = CaseProgress(outside=outside)
    for event, at in events:
        state.evolve(event, at)
    return state


Trusted = Callable[[RawMessage, Event], bool]


def case_status(
    source: str,
    external_ref: str,
    messages: Sequence[RawMessage],
    opener: str,
    trusted: Trusted,
) -> CaseStatusReply:
    """The status of case `<source>-<external_ref>`, from its messages in log order, if
    `opener` (the ingress's own id) opened it for this source and reference; else
    not found. What was written into the case before its opening counts for nothing,
    and so does every event `trusted` refuses (a signature that does not hold, a type
    its actor's card did not let it write): a forged close must not close a case."""
    case_id = case_id_for(source, external_ref)
    found = opening_of(messages, case_id, source, external_ref, opener, trusted)
    if found is None:
        return not_found(external_ref)
    at, opening = found
    state = progress(
        (
            (event, message.stored_at)
            for message in messages[at:]
            if (event := event_of(message, case_id)) is not None and trusted(message, event)
        ),
        frozenset(CASE_EVENT_KINDS.get(opening.payload.kind, {})),
    )
    return CaseStatusReply(
        ok=True,
        case_id=case_id,
        external_ref=external_ref,
        kind=opening.payload.kind,
        status=state.status,
        outcome=state.outcome,
        opened_at=messages[at].stored_at,
        updated_at=state.updated_at,
        waiting_for=sorted({what for _, what in state.waiting_for.values()})
        if state.status == "waiting"
        else [],
    )


def opening_of(
    messages: Sequence[RawMessage],
    case_id: str,
    source: str,
    external_ref: str,
    opener: str,
    trusted: Trusted,
) -> tuple[int, CaseOpened] | None:
    """The case's opening and where it is among `messages`, if `opener` (the ingress)
    opened it for this source and reference, and it holds up; None otherwise."""
    at = next(
        (i for i, m in enumerate(messages) if event_type_of(m.subject) == "case_opened"), None
    )
    if at is None:
        return None
    opening = event_of(messages[at], case_id)
    if (
        not isinstance(opening, CaseOpened)
        or not trusted(messages[at], opening)
        or opening.actor != opener
        or opening.payload.source != source
        or opening.payload.external_ref != external_ref
    ):
        return None
    return at, opening


def not_found(external_ref: str) -> CaseStatusReply:
    """One answer for a case that does not exist and for another source's case."""
    found = problem(
        "$.external_ref", "not_found", f"no case of yours has reference {external_ref!r}"
    )
    return CaseStatusReply(ok=False, errors=[found.message], problems=[found])


def event_of(message: RawMessage, case_id: str) -> Event | None:
    """The event `message` holds, if it can be read and is what its subject says; any
    other moves nothing (the event store flags it)."""
    try:
        event = _decoder.decode(message.body)
    except ContractError:
        return None
    if event.case_id != case_id or event.event_name() != event_type_of(message.subject):
        return None
    return event
