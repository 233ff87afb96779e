"""Enrolment grants: an operator's signed, expiring, one-time permission for one agent
to join the mesh with at most a given scope (as a bootstrap token is in Kubernetes or
SPIFFE). The operator issues it (`mesh registry grant`, or `issue_grant` here); the
agent presents it with its first registration (`MESH_ENROLMENT_GRANT_FILE`); the
registry checks the signature, the expiry, the agent id and owner, the scope, and that
it was never used before.

`signing_operator` is the one rule for every statement an operator signs (a grant, an
approval, an activation): its signer is an operator's key, and its signature verifies.
The registry refuses with it; the offline audit re-checks the registry's history with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from contracts.cards import (
    GRANT_SUBJECT,
    AgentCard,
    EnrolmentGrant,
    SignedStatement,
)
from contracts.ids import new_event_id
from mesh._trust.identity import Identity, verify
from mesh.errors import ConfigurationError

_statement = msgspec.json.Decoder(SignedStatement)


def signing_operator(statement: SignedStatement, operators: Mapping[str, str]) -> str | None:
    """The operator who signed `statement` (`operators`: public key -> operator id);
    None if its signer is no operator's key. Raises SignatureError if the signature
    does not verify over its subject and body, ValueError if its body is not base64.
    Each caller words its own refusal: the registry's and the auditor's differ."""
    operator = operators.get(statement.signer)
    if operator is None:
        return None
    verify(statement.signer, statement.subject, statement.body, statement.signature)
    return operator


def grant_for(
    card: AgentCard,
    *,
    issued_by: str,
    valid_for: timedelta = timedelta(hours=24),
    now: datetime | None = None,
) -> EnrolmentGrant:
    """A grant of exactly the scope `card` asks for."""
    return EnrolmentGrant(
        grant_id=new_event_id(),
        agent_id=card.agent_id,
        owner=card.owner,
        issued_by=issued_by,
        expires_at=(now or datetime.now(UTC)) + valid_for,
        kind=card.kind,
        roles=list(card.roles),
        consumes=list(card.consumes),
        produces=list(card.produces),
        reads=list(card.reads),
        facts=list(card.facts),
        actions=list(card.actions),
    )


def sign_grant(grant: EnrolmentGrant, operator: Identity) -> SignedStatement:
    body = msgspec.json.encode(grant)
    return SignedStatement.of(
        GRANT_SUBJECT, body, operator.public_key, operator.sign(GRANT_SUBJECT, body)
    )


def issue_grant(
    card: AgentCard,
    operator: Identity,
    operator_id: str,
    valid_for: timedelta = timedelta(hours=24),
) -> SignedStatement:
    """What an operator hands an agent's team so it can enrol with `card`."""
    return sign_grant(grant_for(card, issued_by=operator_id, valid_for=valid_for), operator)


def write_grant(statement: SignedStatement, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(statement) + b"\n")


def load_grant(path: Path) -> SignedStatement:
    try:
        return _statement.decode(path.read_bytes())
    except OSError as exc:
        raise ConfigurationError(f"cannot read enrolment grant {path}: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ConfigurationError(f"{path} is not an enrolment grant: {exc}") from None
