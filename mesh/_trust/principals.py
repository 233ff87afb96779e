"""The mesh's static principals — its services, operators and outside systems, with
fixed keys from the principals file — and the scope each role holds.

One home for who may write what among them: the broker's generated permissions
(`mesh._broker.permissions`) and the cards the registry vouches for in `keys` (which
every consumer and auditor checks events against) both come from here; the event types
reserved to an author come from `contracts.authorship`.

The principals file is a JSON list of {name, public_key, role}, with `added_at` /
`removed_at` (RFC 3339) for those added to or removed from a running mesh.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from contracts.authorship import (
    APPROVAL_TYPES,
    DECISION_TYPES,
    INGRESS_TYPES,
    POLICY_OPERATION_TYPES,
    REGISTRY_TYPES,
    TIMER_TYPES,
)
from contracts.cards import AgentCard, CardPeriod, PrincipalKind
from contracts.catalog import CATALOG
from contracts.ingress import OPENING_FACTS
from mesh._support.files import write_atomically
from mesh.errors import ConfigurationError

PrincipalRole = Literal[
    "registry", "policy", "eventstore", "ingress", "reader", "operator", "service", "external"
]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class StaticPrincipal:
    """A service, operator or outside system with a fixed key (the principals file).
    One added to a running mesh holds its scope from `valid_from`; one removed keeps
    its entry, ended at `valid_until`, so that what it signed before still verifies
    and its name and key are never given to anyone else."""

    name: str
    public_key: str
    role: PrincipalRole
    valid_from: datetime = EPOCH
    valid_until: datetime | None = None

    @property
    def active(self) -> bool:
        return self.valid_until is None


def role_produces(role: PrincipalRole) -> tuple[str, ...]:
    """The event types a static principal may sign (and the broker lets it publish)."""
    match role:
        case "registry":
            return REGISTRY_TYPES
        case "policy":
            return (*DECISION_TYPES, *POLICY_OPERATION_TYPES, *TIMER_TYPES)
        case "eventstore":
            return ("log_checkpointed",)
        case "ingress":
            # Opens cases, and adds to them what outside systems send later.
            return ("case_opened", *INGRESS_TYPES)
        case "service":
            # A generic mesh service (a test harness): any case event but the policy's
            # decisions, humans' approvals and the registry's history.
            closed = {*DECISION_TYPES, *APPROVAL_TYPES, *REGISTRY_TYPES, *INGRESS_TYPES}
            return tuple(name for name in CATALOG.names() if name not in closed)
        case "operator" | "reader" | "external":
            # Operators act through the registry and the CLI, outside systems through
            # the ingress, the reader only answers: none of them writes the log.
            return ()


def role_kind(role: PrincipalRole) -> PrincipalKind:
    return "human" if role == "operator" else "service"


def static_card(principal: StaticPrincipal) -> AgentCard:
    """The card a static principal holds, from its role."""
    return AgentCard(
        agent_id=principal.name,
        name=principal.name,
        version="static",
        owner="mesh operators (principals file)",
        purpose=f"the mesh's {principal.role}",
        kind=role_kind(principal.role),
        roles=[principal.role],
        produces=list(role_produces(principal.role)),
        # The ingress states what outside systems sent when it opens their cases.
        facts=list(OPENING_FACTS) if principal.role == "ingress" else [],
        status="active",
    )


def static_cards(principal: StaticPrincipal) -> list[CardPeriod]:
    return [
        CardPeriod(
            card=static_card(principal),
            valid_from=principal.valid_from,
            valid_until=principal.valid_until,
        )
    ]


def load_principals(path: Path) -> list[StaticPrincipal]:
    """Read the static principals file."""
    try:
        rows = json.loads(path.read_text())
        return [
            StaticPrincipal(
                r["name"],
                r["public_key"],
                r["role"],
                valid_from=_time(r.get("added_at")) or EPOCH,
                valid_until=_time(r.get("removed_at")),
            )
            for r in rows
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"principals file {path}: {exc!r}") from exc


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def write_principals(path: Path, principals: Iterable[StaticPrincipal]) -> None:
    rows: list[dict[str, str]] = []
    for p in principals:
        row = {"name": p.name, "public_key": p.public_key, "role": p.role}
        if p.valid_from != EPOCH:
            row["added_at"] = p.valid_from.isoformat()
        if p.valid_until is not None:
            row["removed_at"] = p.valid_until.isoformat()
        rows.append(row)
    write_atomically(path, json.dumps(rows, indent=2) + "\n")
