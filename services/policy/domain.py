"""Deciding one requested action, as pure logic: the card first, then Cedar.

    the case was closed before the request ────► deny (no policy runs)
    parameters larger than MAX_PARAMETERS_BYTES ► deny (no policy runs)
    action not on the agent's card ─────────────► deny (no policy runs)
    a parameter over a card limit (max_<name>) ─► deny
    Cedar: a forbid matches ────────────────────► deny        (forbid wins)
           no permit matches ───────────────────► deny        (default deny)
           a matching permit says @outcome("require_approval") ► require_approval
           otherwise ───────────────────────────► allow
    Cedar reports any error (request or policy) ► deny, with Cedar's errors
    a requester that held no card when it asked ► deny (`decide_for`)

Every decision carries the bundle hash, the determining policies with their @id and
@rationale, and the inputs Cedar saw, so an auditor can re-run it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import cedarpy
import msgspec

from contracts.cards import AgentCard
from contracts.delegation import Delegation
from contracts.events.actions import DecisionProvenance, FactSource, PolicyReference
from mesh.service import AMOUNT, ActingFor, own_limit
from services.policy.bundle import (
    DEFAULT_APPROVAL_SLA,
    DEFAULT_APPROVER_ROLE,
    PolicyBundle,
    parse_duration,
)

Outcome = Literal["allow", "deny", "require_approval"]
# A request's parameters are a few fields: whatever bigger is not a request but a load
# on everyone who must read it (the approvers' list above all).
MAX_PARAMETERS_BYTES = 2048


@dataclass(frozen=True)
class CaseClosure:
    """The case_closed the log held before a request (the first, verified): a closed
    case is answered, and nothing more is done in it whoever asks."""

    sequence: int
    actor: str
    outcome: str

    def describe(self) -> dict[str, Any]:
        return {"sequence": self.sequence, "actor": self.actor, "outcome": self.outcome}


@dataclass(frozen=True)
class ActionRequest:
    request_id: str
    case_id: str
    action_type: str
    parameters: dict[str, Any]
    case_facts: dict[str, Any] = field(default_factory=dict)
    closed: CaseClosure | None = None  # the case's closing, if stored before the request


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    bundle_hash: str
    determining: list[PolicyReference]
    reasons: list[str]
    inputs: dict[str, Any]
    approver_role: str | None = None
    approval_sla: timedelta | None = None
    escalate_to: str | None = None  # who is asked when the SLA passes


def human_grant_refusal(case_id: str, closed: CaseClosure | None) -> str | None:
    """Why a human's grant, valid in itself, still approves nothing: the case was closed
    while the request waited (a closing before the grant was stored). None: it may."""
    if closed is None:
        return None
    return (
        f"case {case_id} was closed ({closed.outcome}) by {closed.actor} at "
        f"#{closed.sequence} while the request waited: no action is taken in a closed case"
    )


def decide(bundle: PolicyBundle, card: AgentCard, request: ActionRequest) -> Decision:
    inputs: dict[str, Any] = {
        "principal": {"agent_id": card.agent_id, "owner": card.owner, "kind": card.kind},
        "action": request.action_type,
        "resource": {"case_id": request.case_id, **request.case_facts},
        "context": request.parameters,
    }
    if request.closed is not None:
        inputs["case_closed"] = request.closed.describe()

    def refuse(reasons: list[str], determining: list[PolicyReference] | None = None) -> Decision:
        return Decision("deny", bundle.hash, determining or [], reasons, inputs)

    if request.closed is not None:
        closed = request.closed
        return refuse(
            [
                f"case {request.case_id} was closed ({closed.outcome}) by {closed.actor} at "
                f"#{closed.sequence}, before this request: no action is taken in a closed case"
            ]
        )
    size = len(msgspec.json.encode(request.parameters))
    if size > MAX_PARAMETERS_BYTES:
        return refuse([f"parameters of {size} bytes; at most {MAX_PARAMETERS_BYTES}"])
    grant = next((a for a in card.actions if a.action_type == request.action_type), None)
    if grant is None:
        return refuse([f"{request.action_type} is not on agent {card.agent_id}'s card"])
    over = _over_limits(grant.limits, request.parameters)
    if over:
        return refuse(over)

    result = cedarpy.is_authorized(
        {
            "principal": f'Agent::"{card.agent_id}"',
            "action": f'Action::"{request.action_type}"',
            "resource": f'Case::"{request.case_id}"',
            "context": request.parameters,
        },
        bundle.policy_set,
        [
            {
                "uid": {"__entity": {"type": "Agent", "id": card.agent_id}},
                "attrs": {"owner": card.owner, "kind": card.kind},
                "parents": [],
            },
            {
                "uid": {"__entity": {"type": "Case", "id": request.case_id}},
                "attrs": request.case_facts,
                "parents": [],
            },
        ],
        schema=bundle.schema,
    )
    errors = [str(error) for error in result.diagnostics.errors]
    determining = [bundle.rules[cedar_id] for cedar_id in result.diagnostics.reasons]
    references = [
        PolicyReference(policy_id=rule.policy_id, rationale=rule.annotations.get("rationale", ""))
        for rule in determining
    ]
    if errors:
        # A policy that cannot be evaluated (a type error, an overflow) might have been a
        # forbid: never let an error fall through to an allow.
        return refuse([f"policy evaluation failed: {e}" for e in errors], references)
    if result.decision != cedarpy.Decision.Allow:
        if not determining:
            return refuse(["no policy permits this action (default deny)"])
        return refuse([f"forbidden by {r.policy_id}" for r in determining], references)
    approvals = [r for r in determining if r.annotations.get("outcome") == "require_approval"]
    if approvals:
        rule = approvals[0]
        return Decision(
            "require_approval",
            bundle.hash,
            references,
            [f"{rule.policy_id} requires a human approval"],
            inputs,
            approver_role=rule.annotations.get("approver_role", DEFAULT_APPROVER_ROLE),
            approval_sla=parse_duration(rule.annotations.get("approval_sla"))
            or DEFAULT_APPROVAL_SLA,
            escalate_to=rule.annotations.get("escalate_to"),
        )
    return Decision(
        "allow",
        bundle.hash,
        references,
        [f"permitted by {r.policy_id}" for r in determining],
        inputs,
    )


# The action a delegated approval is judged as (deploy/policies/delegations.cedar).
APPROVE = "approve"


def decide_delegated_approval(
    bundle: PolicyBundle,
    approver: AgentCard,
    acting: ActingFor,
    delegation: Delegation,
    root_card: AgentCard | None,
    pending_parameters: dict[str, Any],
    case_id: str,
    action_type: str,
) -> Decision:
    """An agent's approval for a person, judged by Cedar as the action "approve": the
    principal is the agent; the context says whom it acts for (and that person's own
    limit), under which delegation, and what it approves. Default deny: a bundle that
    says nothing of delegated approvals lets none through."""
    acting_for: dict[str, Any] = {"principal": acting.principal}
    limit = own_limit(root_card, action_type) if root_card is not None else None
    if limit is not None:
        acting_for["limit"] = limit
    context = {
        "action_type": action_type,
        "amount": pending_parameters.get(AMOUNT, 0),
        "role": delegation.role,
        "acting_for": acting_for,
        "delegation": {
            "delegation_id": acting.delegations[0],
            "root": acting.delegations[-1],
            "depth": len(acting.delegations),
            "max_amount": delegation.max_amount,
        },
    }
    inputs = {
        "principal": {
            "agent_id": approver.agent_id,
            "owner": approver.owner,
            "kind": approver.kind,
        },
        "action": APPROVE,
        "resource": {"case_id": case_id},
        "context": context,
    }
    result = cedarpy.is_authorized(
        {
            "principal": f'Agent::"{approver.agent_id}"',
            "action": f'Action::"{APPROVE}"',
            "resource": f'Case::"{case_id}"',
            "context": context,
        },
        bundle.policy_set,
        [
            {
                "uid": {"__entity": {"type": "Agent", "id": approver.agent_id}},
                "attrs": {"owner": approver.owner, "kind": approver.kind},
                "parents": [],
            },
            {"uid": {"__entity": {"type": "Case", "id": case_id}}, "attrs": {}, "parents": []},
        ],
        schema=bundle.schema,
    )
    return _judged(bundle, result, inputs)


def _judged(bundle: PolicyBundle, result: Any, inputs: dict[str, Any]) -> Decision:
    """Cedar's answer as a decision: errors and no permit deny, a forbid wins."""
    errors = [str(error) for error in result.diagnostics.errors]
    determining = [bundle.rules[cedar_id] for cedar_id in result.diagnostics.reasons]
    references = [
        PolicyReference(policy_id=rule.policy_id, rationale=rule.annotations.get("rationale", ""))
        for rule in determining
    ]
    if errors:
        reasons = [f"policy evaluation failed: {e}" for e in errors]
        return Decision("deny", bundle.hash, references, reasons, inputs)
    if result.decision != cedarpy.Decision.Allow:
        if not determining:
            return Decision(
                "deny", bundle.hash, [], ["no policy permits it (default deny)"], inputs
            )
        reasons = [f"forbidden by {r.policy_id}" for r in determining]
        return Decision("deny", bundle.hash, references, reasons, inputs)
    reasons = [f"permitted by {r.policy_id}" for r in determining]
    return Decision("allow", bundle.hash, references, reasons, inputs)


def decide_for(
    bundle: PolicyBundle, requester: str, card: AgentCard | None, request: ActionRequest
) -> Decision:
    """`decide`, for a requester judged by the card it held when its request was stored
    (None: it held none in force then)."""
    if card is None:
        reasons = [f"requester {requester} held no card in force when it asked"]
        return Decision("deny", bundle.hash, [], reasons, {})
    return decide(bundle, card, request)


def provenance(
    decision: Decision, considered: frozenset[str], facts: Iterable[FactSource]
) -> DecisionProvenance:
    """What a decision event records so an auditor can re-run it: the bundle, the
    determining policies, Cedar's inputs, the case facts asked for and those found."""
    return DecisionProvenance(
        policy_bundle_hash=decision.bundle_hash,
        determining_policies=decision.determining,
        inputs=decision.inputs,
        facts_considered=sorted(considered),
        facts=sorted(facts, key=lambda f: f.name),
    )


def _over_limits(limits: dict[str, Any], parameters: dict[str, Any]) -> list[str]:
    """A card limit `max_<name>` caps parameter `<name>`, before any policy runs."""
    problems = []
    for key, limit in sorted(limits.items()):
        if not key.startswith("max_"):
            continue
        name = key.removeprefix("max_")
        value = parameters.get(name)
        if isinstance(value, int | float) and isinstance(limit, int | float) and value > limit:
            problems.append(f"{name} {value} exceeds the card's limit {limit}")
    return problems
