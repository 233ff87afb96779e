"""Policy's decisions re-derived from the log (pure): a decision cites the digest of
the exact request stored, and the case facts it records are exactly the authoritative
statements the log held before the request (mesh's `authoritative_facts`: each from an
agent whose card then named the fact, never the requester's), as are the earlier
actions it saw."""

from __future__ import annotations

from typing import Any

from contracts.events.actions import ActionApproved, ActionDenied, ApprovalRequired
from mesh.service import KeyDirectory, Statement, authoritative_facts, prior_actions
from services.eventstore.audit.case_state import Finding, RequestSeen
from services.eventstore.domain import LogRecord

Decided = ActionApproved | ActionDenied | ApprovalRequired


def check_decision(
    keys: KeyDirectory,
    record: LogRecord,
    decision: Decided,
    request: RequestSeen,
    records: list[LogRecord],
    found: Finding,
) -> None:
    """`records`: the case's verified messages, first copies only, in log order."""
    if decision.payload.request_digest != request.digest:
        found(
            record,
            f"cites request digest {decision.payload.request_digest or '(none)'}, but the "
            f"request stored at #{request.record.sequence} has {request.digest}",
        )
    if not decision.payload.provenance.facts_considered:
        return  # decided before any fact was looked at (an unknown requester, say)
    earlier = [r for r in records if r.sequence < request.record.sequence]
    for problem in _input_problems(keys, decision, earlier, request):
        found(record, problem)


def _input_problems(
    keys: KeyDirectory, decision: Decided, earlier: list[LogRecord], request: RequestSeen
) -> list[str]:
    provenance = decision.payload.provenance
    statements = [
        statement
        for r in earlier
        if r.event is not None and (statement := Statement.of(r.sequence, r.stored_at, r.event))
    ]
    derived = authoritative_facts(
        statements,
        keys.authoritative,
        considered=provenance.facts_considered,
        excluded_actor=request.event.actor,
    )
    recorded = {f.name: f for f in provenance.facts}
    problems = []
    for name in sorted(set(derived) | set(recorded)):
        want, got = derived.get(name), recorded.get(name)
        if want is None and got is not None:
            problems.append(
                f"rests on fact {name}={got.value!r} from {got.actor} (event {got.event_id}), "
                f"which no authority for {name} stated before the request"
            )
        elif want is not None and got is None:
            problems.append(
                f"omits fact {name}={want.value!r} that {want.actor} stated with authority "
                f"(event {want.event_id})"
            )
        elif (
            want is not None
            and got is not None
            and ((want.value, want.event_id) != (got.value, got.event_id))
        ):
            problems.append(
                f"records fact {name}={got.value!r} from event {got.event_id}, but the log's "
                f"authoritative statement is {want.value!r} (event {want.event_id})"
            )
    resource: dict[str, Any] = dict(provenance.inputs.get("resource") or {})
    for name in sorted(provenance.facts_considered):
        fact = derived.get(name)
        if resource.get(name) != (fact.value if fact else None):
            problems.append(
                f"policy saw {name}={resource.get(name)!r}, but the log establishes "
                f"{fact.value if fact else None!r}"
            )
    if "prior_actions" in resource:
        before = prior_actions(
            [(r.sequence, r.event) for r in earlier if r.event is not None],
            request.record.sequence,
        )
        if sorted(resource["prior_actions"]) != before:
            problems.append(
                f"policy saw earlier actions {resource['prior_actions']}, but the log "
                f"holds {before}"
            )
    return problems
