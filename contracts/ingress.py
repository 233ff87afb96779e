"""What another system sends to open a case, and what it gets back.

Over NATS: a request to `<root>.svc.ingress.<source>` (the source is the sender's own
principal name; the broker lets it publish there and nowhere else). Over HTTP:
`POST /v1/cases/<source>`. The body is an `OpenCaseRequest` as JSON; its JSON Schema is
`contracts/schema/ingress_open_case_request.json`, and the claim data of an insurance
claim (`kind` "insurance_claim", the one kind handled so far: any other is refused) is
`ingress_claim_data.json`.

The ingress accepts exactly what those schemas accept, within these bounds:
- the body is at most 64 KiB (the ingress's `max_body_bytes`: more than the largest
  claim needs with every character escaped, unless padded with whitespace or zeros)
  and nests at most 32 levels deep (a claim nests 2);
- it is I-JSON (RFC 7493): UTF-8 without a byte order mark, no member name twice in
  one object, no lone surrogate escapes;
- a pattern's `$` is the end of the string, as in ECMA-262 (not also before a final
  newline, as in Python's `re`); an integer may be written `42001.0`, as JSON Schema's
  data model has it.

The answer is an `IngressReply`; over NATS it goes only to an `_INBOX.` reply subject
(a request naming any other subject is handled, but not answered). Over HTTP: 201 a
case was opened, 200 it had been opened already (`duplicate`), 400 the body is not an
acceptable JSON document, 401 the bearer token is missing or wrong, 409 the case exists
and is not this request's, 413 the body is over the limit, 422 it breaks the contract,
503 the mesh could not take it (retry later). A refusal lists its reasons twice:
`problems` for machines, `errors` (one line each) for people; `dead_letter` says where
the refused input is kept.

A system adds evidence or a business event to an open case it is party to: the case's
opener, or a system the opener named in `parties`. Over NATS: a request to
`<root>.svc.ingress.events.<source>` (its own source) with a `CaseEventRequest`
(`ingress_case_event_request.json`); over HTTP: `POST
/v1/cases/<case_source>/<external_ref>/events` with its own bearer token and the
request's `event_id`, `kind` and `data`. What `data` must be depends on the kind
(`ingress_police_report.json` for a claim's `police_report`). The answer is an
`IngressReply`: 201 added (as `evidence_received` in the case), 200 this `event_id` was
added already with the same content, 404 no case it is party to has that reference,
409 the `event_id` came before with other content, or the case is closed, 422 the
contract, 429 too many events from this source just now (not taken, so not kept: send
it again), and as above. Every other refused event is kept. A "not found" takes the
same time whether the case does not exist or is another's.

A system reads the status of a case it opened. Over NATS: a request to
`<root>.svc.ingress.status.<source>` (again only its own: the broker lets it publish
there and nowhere else) with a `CaseStatusRequest` as JSON
(`ingress_case_status_request.json`). Over HTTP: `GET /v1/cases/<source>/<external_ref>`
with the same bearer token. The answer is a `CaseStatusReply`
(`ingress_case_status_reply.json`): the case's status, its closing outcome, when it was
opened and last changed, and nothing of what the mesh's agents found or decided on the
way. A case is the source's when the ingress opened it for that source and reference;
any other reference, whether no case or another source's case has it, is `not_found`
(HTTP 404), the same answer either way. Over HTTP: 200 the status, 401 the bearer token
is missing or wrong, 404 not found, 422 the reference is not a valid one, 503 the mesh
could not answer now (retry later). A status request changes nothing, so a refused one
is answered but not kept.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import msgspec

CLAIM_KIND = "insurance_claim"
Cents = Annotated[int, msgspec.Meta(gt=0, le=1_000_000_000, description="an amount in cents")]
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
# A system's source name: the last token of its ingress subject (no "-": see case ids).
SourceName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{1,60}$")]

# What `Problem.code` can say, and what it means.
PROBLEM_CODES: dict[str, str] = {
    "too_large": "the body is over the size limit",
    "too_deep": "the body nests deeper than the limit",
    "not_json": "the body is not a JSON document in UTF-8, or holds a lone surrogate",
    "duplicate_key": "a member name appears twice in one object",
    "type": "a value has the wrong JSON type",
    "required": "a required member is missing",
    "unknown_field": "a member the contract does not define",
    "pattern": "a string does not match its pattern",
    "length": "a string is too short or too long",
    "range": "a number is out of its range",
    "enum": "a value is not one of those allowed",
    "format": "a string is not in its format, e.g. a date",
    "unknown_kind": "no process here handles this kind of case",
    "invalid_source": "the source named by the subject or URL is not a valid name",
    "unauthorized": "over HTTP, the bearer token is missing or not the source's",
    "conflict": "the case exists and was not opened by this source and reference; or an "
    "event id was sent before with other content",
    "case_closed": "the case is closed: nothing more can be added to it",
    "not_found": "no case this source opened has this reference (another source's case "
    "is not found either)",
    "rate_limited": "too many requests from this source just now: retry after a moment",
    "unavailable": "the mesh could not take the request now: retry later",
    "internal": "the ingress failed: a bug, please report it",
}


class OpenCaseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: str  # which process handles the case, e.g. "insurance_claim"
    external_ref: Token  # the sender's own id: the same ref never opens two cases
    data: dict[str, Any]
    # Other systems (their source names) that may add events to the case besides the
    # opener, e.g. the police force's system that files a report.
    parties: Annotated[list[SourceName], msgspec.Meta(max_length=16)] = msgspec.field(
        default_factory=list
    )


class CaseEventRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a system adds to a case it is party to: evidence or a business event.

    Over NATS: a request to `<root>.svc.ingress.events.<source>` (the sender's own
    source), naming the case by `case_source` (who opened it: the sender itself, or the
    system that named the sender a party) and `external_ref`. Over HTTP: `POST
    /v1/cases/<case_source>/<external_ref>/events` with the sender's bearer token, the
    body holding only `event_id`, `kind` and `data`."""

    case_source: SourceName
    external_ref: Token
    # The sender's own id of this event: sent again, it is added once (the same content
    # is answered as a duplicate, other content refused as a conflict).
    event_id: Token
    kind: str  # e.g. "police_report": what its `data` must be (CASE_EVENT_KINDS)
    data: dict[str, Any]


class PoliceReport(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A police report on an insurance claim's incident."""

    report_number: Annotated[str, msgspec.Meta(pattern=r"^[A-Z]{2,4}-[0-9]{4,12}$")]
    police_force: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    filed_on: date
    summary: Annotated[str, msgspec.Meta(max_length=4000)] = ""


class ClaimData(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An insurance claim, as the claims process needs it."""

    policy_number: Annotated[str, msgspec.Meta(pattern=r"^P-[0-9]{4,10}$")]
    claimant: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    claim_type: Literal["auto", "home", "travel", "health"]
    amount_cents: Cents
    currency: Literal["EUR"] = "EUR"
    incident_date: date
    description: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    payee_account: Annotated[str, msgspec.Meta(min_length=4, max_length=64)]


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    """One reason why input was refused."""

    path: Annotated[
        str,
        msgspec.Meta(
            description='where, as a JSON path into the body: "$" is the whole body, '
            '"$.data.amount_cents" one member'
        ),
    ]
    code: Annotated[
        str,
        msgspec.Meta(
            description="what kind of problem: "
            + "; ".join(f"{code}: {meaning}" for code, meaning in PROBLEM_CODES.items())
        ),
    ]
    message: str  # the same, for a person


class IngressReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    case_id: str | None = None
    event_id: str | None = None  # the case_opened (or evidence_received) event
    duplicate: bool = False  # this external_ref had opened the case (this event was added)
    errors: list[str] = msgspec.field(default_factory=list)
    dead_letter: int | None = None  # where the refused input is kept (DLQ sequence)
    problems: list[Problem] = msgspec.field(default_factory=list)  # `errors`, structured


CaseState = Literal["open", "waiting", "awaiting_approval", "escalated", "closed"]
# What `CaseStatusReply.status` can say, and what it means.
CASE_STATES: dict[str, str] = {
    "open": "the mesh is working on the case",
    "waiting": "the case waits for something from outside (`waiting_for` says what), "
    "until a deadline",
    "awaiting_approval": "a step waits for a person's approval",
    "escalated": "the case was handed to a person to finish",
    "closed": "the case is finished; `outcome` says how",
}


class CaseStatusRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    external_ref: Token  # the reference the case was opened with


class CaseStatusReply(msgspec.Struct, frozen=True, kw_only=True):
    """Where a case this system opened stands, or why there is no answer."""

    ok: bool
    case_id: str | None = None
    external_ref: str | None = None
    kind: str | None = None
    status: Annotated[
        CaseState | None,
        msgspec.Meta(
            description="; ".join(f"{state}: {meaning}" for state, meaning in CASE_STATES.items())
        ),
    ] = None
    outcome: Annotated[
        str | None,
        msgspec.Meta(description='how a closed case ended, e.g. "paid", "denied", "rejected"'),
    ] = None
    opened_at: Annotated[
        datetime | None,
        msgspec.Meta(description="when the log took the case's opening (RFC 3339, UTC)"),
    ] = None
    updated_at: Annotated[
        datetime | None,
        msgspec.Meta(description="when the log last took an event of the case (RFC 3339, UTC)"),
    ] = None
    waiting_for: Annotated[
        list[str],
        msgspec.Meta(description='what a waiting case waits for, e.g. ["police_report"]'),
    ] = msgspec.field(default_factory=list)
    errors: list[str] = msgspec.field(default_factory=list)
    problems: list[Problem] = msgspec.field(default_factory=list)  # `errors`, structured


# What each kind of case takes from outside once open, by the request's `kind`.
CASE_EVENT_KINDS: dict[str, dict[str, type[msgspec.Struct]]] = {
    CLAIM_KIND: {"police_report": PoliceReport},
}

# The facts a case's opening states: what the outside system sent. Their authority is
# the ingress, which opens cases (mesh/_trust/principals.py), and no agent.
OPENING_FACTS: tuple[str, ...] = ClaimData.__struct_fields__
