"""The policy service's reactions. Each reads one way: what arrived, the facts the log
establishes (`case_log.py`, `store.py`), the pure decision (`domain.py`,
`approvals.py`), the events that announce it.

    action_requested ─► the case's evidence ─► decide_for ─► action_approved | action_denied
      (facts, earlier actions, its closing)               └► approval_required, kept pending
    approval_granted ─► the pending approval, claimed ─► check_approver ─► action_approved
    approval_rejected ─► (the same) ────────────────────────────────────► action_denied
    activate(bundle directory) ─► policy_bundle_activated, the bundle in force
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from contracts.authorship import DECISION_TYPES, TIMER_TYPES
from contracts.cards import AgentCard
from contracts.envelope import Event
from contracts.events.actions import (
    ActionApproved,
    ActionDecisionPayload,
    ActionDenied,
    ActionRequested,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequired,
    ApprovalRequiredPayload,
    DecisionProvenance,
)
from contracts.events.operations import PolicyBundleActivated, PolicyBundleActivatedPayload
from mesh.service import (
    ActingFor,
    Agent,
    HandlerContext,
    KeyDirectory,
    PermanentError,
    acting_for,
)
from services.policy.approvals import (
    ApprovalRefused,
    PendingApproval,
    check_approver,
    decision_scope,
)
from services.policy.bundle import PolicyBundle
from services.policy.case_log import CaseLog
from services.policy.deadlines import ApprovalDeadlines, set_deadline
from services.policy.domain import (
    ActionRequest,
    Decision,
    decide_delegated_approval,
    decide_for,
    human_grant_refusal,
    provenance,
)
from services.policy.evidence import PRIOR_ACTIONS
from services.policy.store import ApprovalStore

log = logging.getLogger(__name__)

# An agent's decision under a delegation: whom it acted for, and policy's judgement.
Delegated = tuple[ActingFor, Decision]

DECIDES = ["action_requested", "approval_granted", "approval_rejected"]
PUBLISHES = list(DECISION_TYPES)


def policy_card(service_id: str) -> AgentCard:
    return AgentCard(
        agent_id=service_id,
        name="Policy service",
        version="1",
        owner="platform",
        purpose="decides every requested action by Cedar policy and human approval",
        kind="service",
        consumes=[*DECIDES, "timer_fired"],
        produces=[*PUBLISHES, *TIMER_TYPES],
    )


Emit = Callable[[Event], Awaitable[object]]


class PolicyHandlers:
    def __init__(
        self,
        service_id: str,
        keys: KeyDirectory,
        approvals: ApprovalStore,
        case_log: CaseLog,
        emit: Emit,
    ) -> None:
        self.service_id = service_id
        self.keys = keys
        self.approvals = approvals
        self.case_log = case_log
        self.emit = emit  # the runner's: for events built before they are sent
        self.deadlines = ApprovalDeadlines(approvals)
        self.bundle: PolicyBundle | None = None

    def subscribe(self, agent: Agent) -> None:
        agent.on(ActionRequested)(self.on_action_requested)
        agent.on(ApprovalGranted)(self.on_approval_granted)
        agent.on(ApprovalRejected)(self.on_approval_rejected)
        self.deadlines.subscribe(agent)

    async def activate(self, directory: Path) -> PolicyBundle:
        """Load, validate and put a bundle in force. An invalid one raises
        PolicyBundleInvalid and the previous bundle stays in force."""
        bundle = PolicyBundle.load(directory)
        previous = self.bundle
        if previous is not None and previous.hash == bundle.hash:
            return previous
        await self.emit(
            PolicyBundleActivated(
                actor=self.service_id,
                payload=PolicyBundleActivatedPayload(
                    bundle_hash=bundle.hash,
                    source=str(directory),
                    policy_ids=sorted(r.policy_id for r in bundle.rules.values()),
                    previous_hash=previous.hash if previous else None,
                ),
            )
        )
        self.bundle = bundle
        log.info("policy bundle %s in force (%d policies)", bundle.hash[:12], len(bundle.rules))
        return bundle

    # ------------------------------------------------------------------ by policy

    async def on_action_requested(self, event: ActionRequested, ctx: HandlerContext) -> None:
        bundle = self.bundle
        assert bundle is not None
        assert event.case_id is not None
        considered = bundle.case_attributes - {PRIOR_ACTIONS}
        evidence = await self.case_log.evidence_for(event, ctx, considered)
        if evidence is None:
            return  # answered already
        request = ActionRequest(
            request_id=event.event_id,
            case_id=event.case_id,
            action_type=event.payload.action_type,
            parameters=event.payload.parameters,
            case_facts=evidence.attributes(bundle.case_attributes),
            closed=evidence.closed,
        )
        # The card the requester held when its request was stored: its scope then is what
        # counts (its signature, key and lifecycle then were checked on delivery).
        card = self.keys.card_at(event.actor, ctx.written_at)
        decision = decide_for(bundle, event.actor, card, request)
        why = provenance(decision, considered, evidence.facts.values())
        if decision.outcome == "require_approval":
            await self._ask_a_human(event, ctx, decision, why, evidence.kind)
            return
        payload = ActionDecisionPayload(
            request_id=event.event_id,
            action_type=request.action_type,
            provenance=why,
            reasons=decision.reasons,
            request_digest=ctx.digest,
        )
        await ctx.emit(ActionApproved if decision.outcome == "allow" else ActionDenied, payload)

    async def _ask_a_human(
        self,
        event: ActionRequested,
        ctx: HandlerContext,
        decision: Decision,
        why: DecisionProvenance,
        case_kind: str | None,
    ) -> None:
        assert event.case_id is not None
        assert decision.approval_sla is not None
        assert decision.approver_role is not None
        digest = ctx.digest
        deadline = ctx.written_at + decision.approval_sla
        receipt_event = ctx.derive(
            ApprovalRequired,
            ApprovalRequiredPayload(
                request_id=event.event_id,
                action_type=event.payload.action_type,
                provenance=why,
                approver_role=decision.approver_role,
                deadline=deadline,
                request_digest=digest,
            ),
        )
        # Kept (create-only) before it is announced: an approval never finds nothing
        # pending, and a redelivered request never reopens one. Its deadline is a
        # durable timer, set first (a redelivery sets the same one again).
        pending = PendingApproval(
            request_id=event.event_id,
            case_id=event.case_id,
            correlation_id=event.correlation_id,
            action_type=event.payload.action_type,
            requester=event.actor,
            approver_role=decision.approver_role,
            requested_at=ctx.written_at,  # the broker's time, not the requester's
            deadline=deadline,
            sla_seconds=decision.approval_sla.total_seconds(),
            provenance=why,
            required_event_id=receipt_event.event_id,
            escalate_to=decision.escalate_to,
            request_digest=digest,
            parameters=event.payload.parameters,
            case_kind=case_kind,
        )
        timer_id = await set_deadline(ctx, pending)
        await self.approvals.create(msgspec.structs.replace(pending, deadline_timer=timer_id))
        await self.emit(receipt_event)

    # ------------------------------------------------------------------ by a human

    async def on_approval_granted(self, event: ApprovalGranted, ctx: HandlerContext) -> None:
        reason = f"approved by {event.actor}: {event.payload.comment}".rstrip(": ")
        await self._decide_by_human(event, ctx, ActionApproved, reason)

    async def on_approval_rejected(self, event: ApprovalRejected, ctx: HandlerContext) -> None:
        reason = f"rejected by {event.actor}: {event.payload.reason}"
        await self._decide_by_human(event, ctx, ActionDenied, reason)

    async def _decide_by_human(
        self,
        event: ApprovalGranted | ApprovalRejected,
        ctx: HandlerContext,
        outcome: type[ActionApproved] | type[ActionDenied],
        reason: str,
    ) -> None:
        claimed = await self._claim(event, ctx)
        if claimed is None:
            return
        pending, delegated = claimed
        reasons = [reason]
        if delegated is not None:
            acting, judged = delegated
            reasons.append(
                f"{event.actor} acted for {acting.principal} under delegation "
                f"{' <- '.join(acting.delegations)}"
            )
            reasons += judged.reasons
        if outcome is ActionApproved:
            refusal = human_grant_refusal(
                pending.case_id,
                await self.case_log.closure_before(
                    pending.case_id,
                    ctx.stream_sequence,
                    at_least=ctx.stream_sequence if ctx.event.case_id == pending.case_id else 0,
                ),
            )
            if refusal is not None:
                outcome, reasons = ActionDenied, [*reasons, f"but {refusal}"]
        await ctx.emit(
            outcome,
            ActionDecisionPayload(
                request_id=pending.request_id,
                action_type=pending.action_type,
                provenance=pending.provenance,
                reasons=reasons,
                approval_id=event.event_id,
                approver=event.actor,
                request_digest=pending.request_digest,
                acting_for=delegated[0].principal if delegated else None,
                delegations=delegated[0].delegations if delegated else [],
            ),
        )
        if pending.deadline_timer:
            await ctx.cancel_timer(pending.deadline_timer, f"decided by {event.actor}")
        await self.approvals.forget(pending.request_id)

    async def _claim(
        self, event: ApprovalGranted | ApprovalRejected, ctx: HandlerContext
    ) -> tuple[PendingApproval, Delegated | None] | None:
        """Claim the pending approval for this human decision (compare-and-swap), or
        say why not; with, for an agent's decision under a delegation, whom it acted
        for and policy's judgement of it. None: this very decision was already
        announced (a redelivery)."""
        request_id = event.payload.request_id
        loaded = await self.approvals.load(request_id)
        if loaded is not None and loaded[0].closed_by == event.event_id:
            # Claimed before a crash: announce it (same event id, same judgement).
            return loaded[0], _counted(self._delegated(event, loaded[0], ctx))
        if (
            loaded is None
            and event.case_id
            and await self.case_log.decided_with(
                event.case_id, request_id, event.event_id, at_least=ctx.stream_sequence
            )
        ):
            return None
        # The card the approver held when the approval was stored (the dispatcher has
        # checked its signature, key and lifecycle at that time already).
        approver = self.keys.card_at(event.actor, ctx.written_at)
        try:
            delegated = self._delegated(event, loaded[0], ctx) if loaded else None
            pending = check_approver(
                loaded[0] if loaded else None,
                request_id,
                event.actor,
                approver,
                ctx.written_at,
                case_id=event.case_id,
                named_approver=event.payload.approver,
                request_digest=event.payload.request_digest,
                delegated=delegated[0] if delegated else None,
            )
        except ApprovalRefused as exc:
            # Dead-lettered with the reason: the attempt is kept, the request still waits.
            raise PermanentError(f"approval refused: {exc.reason}") from None
        assert loaded is not None
        claimed = msgspec.structs.replace(pending, state="decided", closed_by=event.event_id)
        await self.approvals.swap(claimed, loaded[1])  # a racing deadline or approval loses
        return claimed, _counted(delegated)  # check_approver refused any other

    def _delegated(
        self,
        event: ApprovalGranted | ApprovalRejected,
        pending: PendingApproval,
        ctx: HandlerContext,
    ) -> tuple[ActingFor | str, Decision] | None:
        """For a decision under a delegation: the chain's verdict (whom it acts for, or
        why it does not count), and — for a grant — Cedar's judgement of it (a grant
        policy does not permit is refused, and the request still waits)."""
        delegation_id = event.payload.delegation_id
        if delegation_id is None:
            return None
        acting = acting_for(
            event.actor, delegation_id, decision_scope(pending), ctx.written_at, self.keys
        )
        bundle = self.bundle
        assert bundle is not None
        if isinstance(acting, str) or isinstance(event, ApprovalRejected):
            return acting, Decision("allow", bundle.hash, [], [], {})
        held = self.keys.delegation(delegation_id)
        approver = self.keys.card_at(event.actor, ctx.written_at)
        if held is None or approver is None:
            return f"{event.actor} held no card or delegation in force", Decision(
                "deny", bundle.hash, [], [], {}
            )
        judged = decide_delegated_approval(
            bundle,
            approver,
            acting,
            held.delegation,
            self.keys.card_at(acting.principal, ctx.written_at),
            pending.parameters,
            pending.case_id,
            pending.action_type,
        )
        if judged.outcome != "allow":
            return f"policy does not let it through: {'; '.join(judged.reasons)}", judged
        return acting, judged


def _counted(delegated: tuple[ActingFor | str, Decision] | None) -> Delegated | None:
    """A delegated decision that counts: whom it acted for, and policy's judgement."""
    if delegated is None or isinstance(delegated[0], str):
        return None
    return delegated[0], delegated[1]
