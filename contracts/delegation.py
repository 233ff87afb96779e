"""Explicit delegation: a person hands an agent part of their authority to decide
approvals, scoped and time-bound, so that it shows in the record (pure data).

A delegation names who hands over (`delegator`), who receives (`delegate`), for which
approver role, which action types, up to which amount, on which kinds of case, from
when until when, and whether the delegate may pass it on (`may_delegate`; a passed-on
delegation names its `parent`). The delegator signs it, the registry checks that
it gives no more than the delegator holds and records it in its history
(`delegation_granted`); the delegator (or one up its chain) or an operator revokes it at
once (`delegation_revoked`). Both are signed requests to the registry, kept as signed
statements in its history, so an auditor checks them offline. An approval the delegate
signs names the delegation; policy, the executor and the auditor each check the whole
chain as it stood when the approval was stored (`mesh._trust.approval_chain`).

Only an agent whose card holds the role DELEGATE_ROLE (put in force by an operator's
approval, like any role) may sign approvals at all, and only under a delegation.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from contracts.cards import SignedStatement

DELEGATE_ROLE = "delegate"

_Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]


class Delegation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    delegation_id: _Token
    delegator: _Token  # the person (or the delegate of a parent delegation) handing over
    delegate: _Token  # the agent that may now decide for the delegator
    role: _Token  # the approver role whose decisions it may make, e.g. "claims_manager"
    action_types: Annotated[list[_Token], msgspec.Meta(min_length=1, max_length=16)]
    # The most an approval under it may let through (the request's `amount` parameter,
    # in cents): never more than the delegator's own limit.
    max_amount: Annotated[int, msgspec.Meta(ge=0)]
    case_kinds: Annotated[list[_Token], msgspec.Meta(min_length=1, max_length=16)]
    valid_from: datetime
    valid_until: datetime
    may_delegate: bool = False  # may the delegate pass it on (never widened)?
    parent: _Token | None = None  # the delegation the delegator holds and passes on
    purpose: Annotated[str, msgspec.Meta(max_length=500)] = ""


class DelegationRevocation(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Signed by the delegator (or anyone up its chain) or an operator."""

    delegation_id: _Token
    reason: Annotated[str, msgspec.Meta(max_length=500)] = ""


class DelegationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A delegation as the registry's history holds it: what was signed, when it took
    effect (the broker time its event was stored), and its revocation, if any."""

    delegation: Delegation
    statement: SignedStatement  # the delegator's signature over it
    granted_at: datetime
    revoked_at: datetime | None = None
    revoked_by: str | None = None
    revocation_reason: str = ""

    def in_force(self, at: datetime) -> bool:
        d = self.delegation
        revoked = self.revoked_at is not None and self.revoked_at <= at
        return self.granted_at <= at and d.valid_from <= at < d.valid_until and not revoked
