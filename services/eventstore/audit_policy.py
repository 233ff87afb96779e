"""The policy invariants, checked on one case's verified messages (pure).

- every decision answers a request of the case and cites the digest of the exact
  request stored, and re-derives: the case facts it records are exactly the
  authoritative statements the log held before the request (mesh._trust.facts), each from an
  agent whose card then named the fact, and its earlier actions are what policy had
  approved before;
- every executed action has an approving decision before it; where policy required a
  human, the decision cites a grant, earlier in the log, of the same request digest,
  by a human whose card then held the role asked, who is not the requester;
- one obligation (an action type in a case) is executed at most once;
- a step stating a fact that another agent is the authority for is named (readers
  ignore it; its presence shows someone tried to speak for another);
- a case is opened before anything else happens in it, and closed once.

Messages that failed their signature, key or card check do not get here: they are
reported as such and count for nothing (a decision by anyone but a principal whose
card produces decisions is such a message).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts.events.actions import (
    ActionApproved,
    ActionCompleted,
    ActionDenied,
    ActionFailed,
    ActionRequested,
    ApprovalEscalated,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequired,
    DecisionProvenance,
)
from contracts.events.case import CaseClosed, CaseOpened, CaseStepCompleted
from mesh.service import KeyDirectory, Statement, authoritative_facts, message_digest, prior_actions
from services.eventstore.domain import LogRecord

# (message the finding is about, what is wrong)
Report = Callable[[LogRecord, str], None]
Decided = ActionApproved | ActionDenied | ApprovalRequired


class CasePolicyAudit:
    def __init__(self, keys: KeyDirectory, report: Report) -> None:
        self.keys = keys
        self.report = report

    def check(self, records: list[LogRecord]) -> None:
        """`records`: one case's verified messages, first copies only, in log order."""
        requests: dict[str, tuple[LogRecord, ActionRequested, str]] = {}
        role_asked: dict[str, str] = {}
        grants: dict[str, tuple[LogRecord, ApprovalGranted]] = {}
        approved: set[str] = set()
        executed: dict[str, str] = {}  # action type -> the request that executed it
        opened: LogRecord | None = None
        closed: LogRecord | None = None
        for record in records:
            event = record.event
            if isinstance(event, CaseOpened):
                opened = opened or record
            elif opened is None:
                self.report(record, "comes before the case was opened: it squats the case id")
            if isinstance(event, CaseClosed):
                if closed is not None:
                    self.report(
                        record, f"closes the case again (closed at sequence {closed.sequence})"
                    )
                closed = closed or record
            match event:
                case CaseStepCompleted():
                    self._check_statement(record, event)
                case ActionRequested():
                    requests[event.event_id] = (
                        record,
                        event,
                        message_digest(record.subject, record.body),
                    )
                case ActionApproved() | ActionDenied() | ApprovalRequired():
                    request = requests.get(event.payload.request_id)
                    if request is None:
                        self.report(record, f"decides {event.payload.request_id}, no request here")
                        continue
                    self._check_decision(record, event, request, records)
                    if isinstance(event, ApprovalRequired):
                        role_asked[event.payload.request_id] = event.payload.approver_role
                    elif isinstance(event, ActionApproved):
                        self._check_human(record, event, role_asked, grants, requests)
                        approved.add(event.payload.request_id)
                case ApprovalEscalated(payload=p) if p.escalated_to:
                    role_asked[p.request_id] = p.escalated_to
                case ApprovalGranted() | ApprovalRejected():
                    self._check_grant(record, event, requests)
                    if isinstance(event, ApprovalGranted):
                        grants[event.event_id] = (record, event)
                case ActionCompleted(payload=p) | ActionFailed(payload=p):
                    if p.request_id not in requests:
                        self.report(record, f"executes unknown request {p.request_id}")
                    elif p.request_id not in approved:
                        self.report(
                            record,
                            f"executed request {p.request_id} without an approving decision "
                            "before it",
                        )
                    if isinstance(event, ActionCompleted):
                        first = executed.setdefault(p.action_type, p.request_id)
                        if first != p.request_id:
                            self.report(
                                record,
                                f"executes {p.action_type} a second time in this case "
                                f"(request {p.request_id}; request {first} executed it "
                                "already): one obligation, one execution",
                            )

    # ------------------------------------------------------------------ facts

    def _check_statement(self, record: LogRecord, step: CaseStepCompleted) -> None:
        """A step that states a fact another agent is the authority for speaks out of
        turn: it counts for nothing (readers ignore it), and it is named."""
        for fact in sorted(step.payload.evidence):
            if self.keys.authoritative(step.actor, fact, record.stored_at):
                continue
            others = self.keys.authorities(fact, record.stored_at)
            if others:
                self.report(
                    record,
                    f"states fact {fact}, for which {', '.join(others)} (not {step.actor}) "
                    "is the authority: ignored by every reader",
                )

    # ------------------------------------------------------------------ decisions

    def _check_decision(
        self,
        record: LogRecord,
        decision: Decided,
        request: tuple[LogRecord, ActionRequested, str],
        records: list[LogRecord],
    ) -> None:
        request_record, requested, digest = request
        if decision.payload.request_digest != digest:
            self.report(
                record,
                f"cites request digest {decision.payload.request_digest or '(none)'}, but the "
                f"request stored at #{request_record.sequence} has {digest}",
            )
        provenance = decision.payload.provenance
        if not provenance.facts_considered:
            return  # decided before any fact was looked at (an unknown requester, say)
        earlier = [r for r in records if r.sequence < request_record.sequence]
        for problem in self._input_problems(provenance, earlier, request_record, requested):
            self.report(record, problem)

    def _input_problems(
        self,
        provenance: DecisionProvenance,
        earlier: list[LogRecord],
        request_record: LogRecord,
        requested: ActionRequested,
    ) -> list[str]:
        statements = [
            statement
            for r in earlier
            if r.event is not None and (statement := Statement.of(r.sequence, r.stored_at, r.event))
        ]
        derived = authoritative_facts(
            statements,
            self.keys.authoritative,
            considered=provenance.facts_considered,
            excluded_actor=requested.actor,
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
                request_record.sequence,
            )
            if sorted(resource["prior_actions"]) != before:
                problems.append(
                    f"policy saw earlier actions {resource['prior_actions']}, but the log "
                    f"holds {before}"
                )
        return problems

    # ------------------------------------------------------------------ humans

    def _check_grant(
        self,
        record: LogRecord,
        grant: ApprovalGranted | ApprovalRejected,
        requests: dict[str, tuple[LogRecord, ActionRequested, str]],
    ) -> None:
        if grant.payload.approver != grant.actor:
            self.report(
                record, f"decides in the name of {grant.payload.approver}, signed by {grant.actor}"
            )
        request = requests.get(grant.payload.request_id)
        if request is None:
            return
        if request[1].actor == grant.actor:
            self.report(record, f"{grant.actor} approves its own request (self-approval)")
        if grant.payload.request_digest != request[2]:
            self.report(
                record,
                f"approves request bytes with digest {grant.payload.request_digest or '(none)'}, "
                f"not the request stored at #{request[0].sequence} ({request[2]})",
            )

    def _check_human(
        self,
        record: LogRecord,
        decision: ActionApproved,
        role_asked: dict[str, str],
        grants: dict[str, tuple[LogRecord, ApprovalGranted]],
        requests: dict[str, tuple[LogRecord, ActionRequested, str]],
    ) -> None:
        request_id = decision.payload.request_id
        role = role_asked.get(request_id)
        if role is None:
            return  # policy allowed it outright
        found = grants.get(decision.payload.approval_id or "")
        if found is None or found[1].payload.request_id != request_id:
            self.report(
                record,
                f"approves request {request_id}, which needed a {role}'s approval, without "
                "citing a grant of it earlier in the log",
            )
            return
        grant_record, grant = found
        card = self.keys.card_at(grant.actor, grant_record.stored_at)
        if card is None or card.kind != "human" or role not in card.roles:
            self.report(
                record,
                f"relies on {grant.actor}'s grant, but {grant.actor} was not a human {role} "
                "when it was given",
            )
        if grant.payload.request_digest != requests[request_id][2]:
            self.report(record, f"relies on {grant.actor}'s grant of other request bytes")
