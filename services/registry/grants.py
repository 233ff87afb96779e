"""Enrolment grants, as pure logic: read one, and check that an operator signed it for
this very agent and a card within the scope it names. No I/O, no await."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import msgspec

from contracts.cards import GRANT_SUBJECT, AgentCard, EnrolmentGrant, SignedStatement
from contracts.scope import grant_problems
from mesh.service import Refused, SignatureError, signing_operator

_grant_decoder = msgspec.json.Decoder(EnrolmentGrant)


def read_grant(statement: SignedStatement) -> EnrolmentGrant:
    """The grant a signed statement holds (its signature is checked by check_grant)."""
    if statement.subject != GRANT_SUBJECT:
        raise Refused(f"not an enrolment grant: signed under {statement.subject!r}")
    try:
        return _grant_decoder.decode(statement.body)
    except (msgspec.DecodeError, ValueError) as exc:
        raise Refused(f"unreadable enrolment grant: {exc}") from None


def grant_id_of(statement: SignedStatement | None) -> str | None:
    if statement is None or statement.subject != GRANT_SUBJECT:
        return None
    try:
        return _grant_decoder.decode(statement.body).grant_id
    except (msgspec.DecodeError, ValueError):
        return None


def check_grant(
    statement: SignedStatement,
    card: AgentCard,
    now: datetime,
    *,
    operators: Mapping[str, str],
    used_grants: Mapping[str, str],
) -> EnrolmentGrant:
    """The grant, if an operator signed it for this very agent and a card within it.
    `operators`: public key -> operator id; `used_grants`: grant id -> the agent that
    used it."""
    try:
        operator = signing_operator(statement, operators)
    except SignatureError as exc:
        raise Refused(f"enrolment grant: {exc.reason}") from None
    except ValueError as exc:  # a body that is not base64
        raise Refused(f"unreadable enrolment grant: {exc}") from None
    if operator is None:
        raise Refused(f"enrolment grant signed by {statement.signer}, which is not an operator")
    grant = read_grant(statement)
    problems = grant_problems(
        grant, card, signed_by=operator, at=now, used_by=used_grants.get(grant.grant_id)
    )
    if problems:
        raise Refused(f"enrolment grant {grant.grant_id} " + "; ".join(problems))
    return grant
