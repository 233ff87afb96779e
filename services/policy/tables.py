"""Decision tables: policy owners test a bundle before activating it (like `opa test`).

A table file (`<bundle>/tests/*.json`) names agents by card and lists rows:

    {"agents": {"adjudicator": {"agent_id": "adjudicator", "owner": "claims-team", …,
                                "actions": [{"action_type": "issue_payment"}]}},
     "rows": [{"name": "a small payout is allowed", "agent": "adjudicator",
               "action": "issue_payment", "parameters": {"amount": 5000, "currency": "EUR"},
               "case": {"fraud_score": 10}, "expect": "allow", "rule": "small-payouts"}]}

`rule` (optional) is the @id that must be among the determining policies.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from contracts.cards import AgentCard
from services.policy.bundle import PolicyBundle
from services.policy.domain import ActionRequest, Outcome, decide


class Row(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    agent: str
    action: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    case: dict[str, Any] = msgspec.field(default_factory=dict)
    expect: Outcome
    rule: str | None = None


class Table(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agents: dict[str, AgentCard]
    rows: list[Row]


@dataclass(frozen=True)
class RowResult:
    file: str
    row: Row
    passed: bool
    detail: str


def load_table(path: Path) -> Table:
    try:
        return msgspec.json.decode(path.read_bytes(), type=Table)
    except (OSError, msgspec.DecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def run_row(bundle: PolicyBundle, table: Table, row: Row, file: str) -> RowResult:
    card = table.agents.get(row.agent)
    if card is None:
        return RowResult(file, row, False, f"no agent named {row.agent!r} in the table")
    decision = decide(
        bundle,
        card,
        ActionRequest(
            request_id=f"test:{row.name}",
            case_id="test-case",
            action_type=row.action,
            parameters=row.parameters,
            case_facts=row.case,
        ),
    )
    decided_by = [p.policy_id for p in decision.determining]
    got = f"{decision.outcome} by {decided_by or '-'} ({'; '.join(decision.reasons)})"
    if decision.outcome != row.expect:
        return RowResult(file, row, False, f"expected {row.expect}, got {got}")
    if row.rule is not None and row.rule not in decided_by:
        return RowResult(file, row, False, f"expected rule {row.rule}, got {got}")
    return RowResult(file, row, True, got)


def run_tables(bundle_dir: Path) -> list[RowResult]:
    """Every row of every table under `<bundle_dir>/tests/`, against that bundle."""
    bundle = PolicyBundle.load(bundle_dir)
    files = sorted((bundle_dir / "tests").glob("*.json"))
    if not files:
        raise ValueError(f"no decision tables in {bundle_dir / 'tests'}")
    results = []
    for path in files:
        table = load_table(path)
        results += [run_row(bundle, table, row, path.name) for row in table.rows]
    return results
