"""What another system sends to open a case, and what it gets back.

Over NATS: a request to `<root>.svc.ingress.<source>` (the source is the sender's own
principal name; the broker lets it publish there and nowhere else). Over HTTP:
`POST /v1/cases/<source>`. The body is an `OpenCaseRequest` as JSON; its JSON Schema is
`contracts/schema/ingress_open_case_request.json`, and the claim data of an insurance
claim is `ingress_claim_data.json`. The answer is an `IngressReply` (HTTP 201, or 422 with the
same `errors` when the input is refused).
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal

import msgspec

CLAIM_KIND = "insurance_claim"
Cents = Annotated[int, msgspec.Meta(gt=0, le=1_000_000_000, description="an amount in cents")]
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class OpenCaseRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: str  # which process handles the case, e.g. "insurance_claim"
    external_ref: Token  # the sender's own id: the same ref never opens two cases
    data: dict[str, Any]


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


class IngressReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    case_id: str | None = None
    event_id: str | None = None  # the case_opened event
    duplicate: bool = False  # this external_ref had opened the case already
    errors: list[str] = msgspec.field(default_factory=list)
    dead_letter: int | None = None  # where the refused input is kept (DLQ sequence)
