"""Adding to an open case from outside (pure): a system sends evidence or a business
event for a case it is party to, and the ingress writes it into the case as
`evidence_received` — or refuses it with every reason why.

A system is party to a case when the ingress opened the case for it, or when the
opener named it among the case's `parties`; any other case (none, or one it is no party
to) is "not found", in the same words, so no system learns what cases others have. What
it sends must be a `kind` the case's kind takes from outside (`CASE_EVENT_KINDS`), with
data exactly as that kind's contract says. A closed case takes nothing more.

Each event carries the sender's own id: sent again with the same content it is answered
as a duplicate (the id of what was added the first time), with other content refused as
a conflict — two different events under one id prove nothing. The log's event id is
derived from the case, the sender and its id (keyed with the ingress's secret), so two
copies racing each other are also stored once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from contracts.events.case import CaseClosed, EvidenceReceived, EvidenceReceivedPayload
from contracts.ids import derived_event_id
from contracts.ingress import CASE_EVENT_KINDS, CaseEventRequest, Problem
from mesh.service import RawMessage
from services.ingress.domain import case_id_for, source_problem
from services.ingress.json_body import Limits, read_json
from services.ingress.problems import Refusal, convert_struct, problem
from services.ingress.status import Trusted, event_of, opening_of

# Over HTTP these come from the URL, never from the body.
URL_MEMBERS = ("case_source", "external_ref")


@dataclass(frozen=True)
class AlreadyAdded:
    """This event had been added to the case already, with the same content."""

    case_id: str
    event_id: str  # the evidence_received written the first time


def event_request(
    source: str,
    body: bytes,
    limits: Limits,
    *,
    size: int | None = None,
    case: tuple[str, str] | None = None,
) -> CaseEventRequest | Refusal:
    """What `source` asks to add: the whole request as JSON (NATS), or — with `case`,
    the (case_source, external_ref) of an HTTP URL — a body of the other members."""
    if (bad_source := source_problem(source)) is not None:
        return Refusal([bad_source])
    document = read_json(body, limits, size=size)
    if isinstance(document, Refusal):
        return document
    value: Any = document.value
    if case is not None and isinstance(value, dict):
        problems = [
            problem(f"$.{name}", "unknown_field", f"{name} is given by the URL, not the body")
            for name in URL_MEMBERS
            if name in value
        ]
        if problems:
            return Refusal(problems)
        value = {**value, **dict(zip(URL_MEMBERS, case, strict=True))}
    request, problems = convert_struct(value, CaseEventRequest, "$")
    if problems or request is None:
        return Refusal(problems)
    return request


def is_party(
    source: str,
    request: CaseEventRequest,
    opening: Sequence[RawMessage],
    opener: str,
    trusted: Trusted,
) -> bool:
    """Is `source` party to the case `request` names, by its opening alone (the first
    message on its `case_opened` subject)?"""
    case_id = case_id_for(request.case_source, request.external_ref)
    found = opening_of(opening, case_id, request.case_source, request.external_ref, opener, trusted)
    return found is not None and source in (found[1].payload.source, *found[1].payload.parties)


def not_a_party(request: CaseEventRequest) -> Refusal:
    return Refusal([_not_found(request)])


def continue_case(
    source: str,
    request: CaseEventRequest,
    messages: Sequence[RawMessage],
    *,
    opener: str,
    trusted: Trusted,
    id_key: bytes,
) -> EvidenceReceived | AlreadyAdded | Refusal:
    """The event to add to the case `request` names (`messages`: its log, in order), the
    one added before under the same id, or why not."""
    case_id = case_id_for(request.case_source, request.external_ref)
    found = opening_of(
        messages, case_id, request.case_source, request.external_ref, opener, trusted
    )
    if found is None or source not in (found[1].payload.source, *found[1].payload.parties):
        return not_a_party(request)
    at, opening = found
    contract = CASE_EVENT_KINDS.get(opening.payload.kind, {}).get(request.kind)
    if contract is None:
        known = sorted(CASE_EVENT_KINDS.get(opening.payload.kind, {}))
        refusal = f"a {opening.payload.kind} case takes no {request.kind!r} from outside; {known}"
        return Refusal([problem("$.kind", "unknown_kind", refusal)])
    details, problems = convert_struct(request.data, contract, "$.data")
    if problems or details is None:
        return Refusal(problems)
    data = msgspec.to_builtins(details)
    earlier: EvidenceReceived | None = None
    for stored in messages[at:]:
        event = event_of(stored, case_id)
        if event is None or not trusted(stored, event):
            continue
        if isinstance(event, CaseClosed):
            return Refusal([problem("$", "case_closed", f"case {case_id} is closed")])
        if (
            isinstance(event, EvidenceReceived)
            and event.actor == opener
            and event.payload.source == source
            and event.payload.external_event_id == request.event_id
        ):
            earlier = earlier or event
    if earlier is not None:
        if earlier.payload.kind == request.kind and earlier.payload.data == data:
            return AlreadyAdded(case_id, earlier.event_id)
        return Refusal([_conflict(request)])
    return EvidenceReceived(
        event_id=derived_event_id(
            case_id, opening.event_id, f"{source}/{request.event_id}", 0, id_key
        ),
        case_id=case_id,
        correlation_id=opening.correlation_id,
        actor=opener,
        payload=EvidenceReceivedPayload(
            source=source, external_event_id=request.event_id, kind=request.kind, data=data
        ),
    )


def same_content(event: EvidenceReceived, other: EvidenceReceived) -> bool:
    """Whether a stored event under the same id says what `event` says."""
    return event.payload == other.payload and event.case_id == other.case_id


def conflict(request: CaseEventRequest) -> Refusal:
    return Refusal([_conflict(request)])


def _conflict(request: CaseEventRequest) -> Problem:
    message = f"event {request.event_id} was sent before with other content"
    return problem("$.event_id", "conflict", message)


def _not_found(request: CaseEventRequest) -> Problem:
    message = (
        f"no case you are party to is {request.case_source}'s reference {request.external_ref!r}"
    )
    return problem("$.external_ref", "not_found", message)
