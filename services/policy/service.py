"""The policy service: every `action_requested` gets a decision event; humans' approvals
and missed deadlines resolve the ones that wait.

Built on the agent SDK (one durable over the case events it decides on), as a static
principal: its decision subjects are ones no agent card may produce, so the broker
refuses a forged decision from an agent.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import KeyValueConfig, StorageType
from nats.js.kv import KeyValue

from contracts.authorship import DECISION_TYPES
from contracts.cards import AgentCard
from contracts.envelope import Event
from contracts.events.actions import (
    ActionApproved,
    ActionDecisionPayload,
    ActionDenied,
    ActionRequested,
    ApprovalEscalated,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequired,
    ApprovalRequiredPayload,
    ApprovalTimedOutPayload,
    DecisionProvenance,
)
from contracts.events.operations import PolicyBundleActivated, PolicyBundleActivatedPayload
from contracts.ids import derived_event_id
from mesh.service import (
    Agent,
    AgentRunner,
    BrokerError,
    ConcurrencyConflict,
    HandlerContext,
    Identity,
    KeyDirectory,
    MeshError,
    MeshSettings,
    PermanentError,
    RegistryClient,
    Topology,
    ensure_key_value,
    ensure_stream,
    read_case,
    respond,
    stop_task,
)
from services.policy.approvals import (
    ApprovalRefused,
    PendingApproval,
    check_approver,
    on_deadline,
)
from services.policy.bundle import PolicyBundle
from services.policy.domain import ActionRequest, Decision, decide
from services.policy.evidence import PRIOR_ACTIONS, answers, case_evidence, first_copy
from services.policy.settings import PolicySettings

log = logging.getLogger(__name__)
_pending = msgspec.json.Decoder(PendingApproval)

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
        consumes=DECIDES,
        produces=PUBLISHES,
    )


class PolicyService:
    def __init__(
        self,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        policy: PolicySettings,
        topology: Topology | None = None,
    ) -> None:
        self.nc = nc
        self.settings = settings
        self.policy = policy
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.registry = RegistryClient(nc, self.topology.subjects)
        self.keys = KeyDirectory()
        self.bundle: PolicyBundle | None = None
        self.agent = Agent(policy_card(policy.service_id))
        self.agent.on(ActionRequested)(self.on_action_requested)
        self.agent.on(ApprovalGranted)(self.on_approval_granted)
        self.agent.on(ApprovalRejected)(self.on_approval_rejected)
        self.runner = AgentRunner(
            self.agent,
            nc=nc,
            identity=identity,
            settings=settings,
            topology=self.topology,
            key_directory=self.keys,  # forged or revoked approvals never reach a handler
        )
        self._approvals: KeyValue | None = None
        self._timer: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.runner.provision:
            for config in self.topology.streams():
                await ensure_stream(self.js, config)
        await self.activate(self.policy.bundle_dir)
        bucket = self._bucket
        await ensure_key_value(
            self.js,
            KeyValueConfig(bucket=bucket, history=1, storage=StorageType.FILE),
        )
        self._approvals = await self.js.key_value(bucket)
        await self.keys.follow(self.nc, self.topology, self.registry)
        await self.runner.start()
        self._subscription = await self.nc.subscribe(
            f"{self.topology.subjects.service('policy', 'pending')}.*", cb=self._serve_pending
        )
        await self.nc.flush()
        self._timer = asyncio.create_task(self._deadlines(), name="approval-deadlines")

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        await stop_task(self._timer)
        await self.runner.stop()
        await self.keys.close()

    async def activate(self, directory: Path) -> PolicyBundle:
        """Load, validate and put a bundle in force. An invalid one raises
        PolicyBundleInvalid and the previous bundle stays in force."""
        bundle = PolicyBundle.load(directory)
        previous = self.bundle
        if previous is not None and previous.hash == bundle.hash:
            return previous
        await self.runner.emit(
            PolicyBundleActivated(
                actor=self.policy.service_id,
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

    # ------------------------------------------------------------------ decisions

    async def on_action_requested(self, event: ActionRequested, ctx: HandlerContext) -> None:
        assert self.bundle is not None
        assert event.case_id is not None
        assert ctx.message is not None
        history = await read_case(self.js, self.topology, event.case_id)
        if history:
            await self.keys.ensure_current(max(s.stored_at for s in history))
        first = first_copy(history, event.event_id)
        if first is not None and first.sequence != ctx.stream_sequence:
            # A copy (replayed under a fresh Nats-Msg-Id) or another event reusing the
            # id: one request id is judged once, on the bytes first stored under it.
            raise PermanentError(
                f"request {event.event_id} was first stored at #{first.sequence}; "
                f"#{ctx.stream_sequence} is a second event under its id and is not decided"
            )
        if answers(history, event.event_id, self.policy.service_id, self.keys):
            return  # redelivered after we answered: never decide (or reopen) twice
        considered = self.bundle.case_attributes - {PRIOR_ACTIONS}
        evidence = case_evidence(history, self.keys, request=ctx.message, considered=considered)
        request = ActionRequest(
            request_id=event.event_id,
            case_id=event.case_id,
            action_type=event.payload.action_type,
            parameters=event.payload.parameters,
            case_facts=evidence.attributes(self.bundle.case_attributes),
        )
        # The card the requester held when its request was stored: its scope then is what
        # counts (its signature, key and lifecycle then were checked on delivery).
        card = self.keys.card_at(event.actor, ctx.written_at)
        if card is None:
            reasons = [f"requester {event.actor} held no card in force when it asked"]
            decision = Decision("deny", self.bundle.hash, [], reasons, {})
        else:
            decision = decide(self.bundle, card, request)
        provenance = DecisionProvenance(
            policy_bundle_hash=decision.bundle_hash,
            determining_policies=decision.determining,
            inputs=decision.inputs,
            facts_considered=sorted(considered),
            facts=sorted(evidence.facts.values(), key=lambda f: f.name),
        )
        digest = ctx.digest
        if decision.outcome == "require_approval":
            assert decision.approval_sla is not None
            assert decision.approver_role is not None
            deadline = ctx.written_at + decision.approval_sla
            receipt_event = ctx.derive(
                ApprovalRequired,
                ApprovalRequiredPayload(
                    request_id=event.event_id,
                    action_type=request.action_type,
                    provenance=provenance,
                    approver_role=decision.approver_role,
                    deadline=deadline,
                    request_digest=digest,
                ),
            )
            # Kept (create-only) before it is announced: an approval never finds nothing
            # pending, and a redelivered request never reopens one.
            await self._create(
                PendingApproval(
                    request_id=event.event_id,
                    case_id=event.case_id,
                    correlation_id=event.correlation_id,
                    action_type=request.action_type,
                    requester=event.actor,
                    approver_role=decision.approver_role,
                    requested_at=ctx.written_at,  # the broker's time, not the requester's
                    deadline=deadline,
                    sla_seconds=decision.approval_sla.total_seconds(),
                    provenance=provenance,
                    required_event_id=receipt_event.event_id,
                    escalate_to=decision.escalate_to,
                    request_digest=digest,
                    parameters=event.payload.parameters,
                )
            )
            await self.runner.emit(receipt_event)
            return
        payload = ActionDecisionPayload(
            request_id=event.event_id,
            action_type=request.action_type,
            provenance=provenance,
            reasons=decision.reasons,
            request_digest=digest,
        )
        await ctx.emit(ActionApproved if decision.outcome == "allow" else ActionDenied, payload)

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
        pending = await self._close(event, ctx, event.payload.approver)
        if pending is None:
            return
        await ctx.emit(
            outcome,
            ActionDecisionPayload(
                request_id=pending.request_id,
                action_type=pending.action_type,
                provenance=pending.provenance,
                reasons=[reason],
                approval_id=event.event_id,
                approver=event.actor,
                request_digest=pending.request_digest,
            ),
        )
        await self._forget(pending.request_id)

    async def _close(
        self, event: ApprovalGranted | ApprovalRejected, ctx: HandlerContext, named: str
    ) -> PendingApproval | None:
        """Claim the pending approval for this human decision (compare-and-swap), or
        say why not. None: this very decision was already announced (a redelivery)."""
        request_id = event.payload.request_id
        loaded = await self._load(request_id)
        if loaded is not None and loaded[0].closed_by == event.event_id:
            return loaded[0]  # claimed before a crash: announce it (same event id)
        if loaded is None and event.case_id and await self._decided_with(event, request_id):
            return None
        # The card the approver held when the approval was stored (the dispatcher has
        # checked its signature, key and lifecycle at that time already).
        approver = self.keys.card_at(event.actor, ctx.written_at)
        try:
            pending = check_approver(
                loaded[0] if loaded else None,
                request_id,
                event.actor,
                approver,
                ctx.written_at,
                case_id=event.case_id,
                named_approver=named,
                request_digest=event.payload.request_digest,
            )
        except ApprovalRefused as exc:
            # Dead-lettered with the reason: the attempt is kept, the request still waits.
            raise PermanentError(f"approval refused: {exc.reason}") from None
        assert loaded is not None
        claimed = msgspec.structs.replace(pending, state="decided", closed_by=event.event_id)
        await self._swap(claimed, loaded[1])  # a racing deadline or approval loses
        return claimed

    async def _decided_with(
        self, event: ApprovalGranted | ApprovalRejected, request_id: str
    ) -> bool:
        """Has the policy service already answered this request with this approval?"""
        assert event.case_id is not None
        history = await read_case(self.js, self.topology, event.case_id)
        return any(
            isinstance(answer, ActionApproved | ActionDenied)
            and answer.payload.approval_id == event.event_id
            for answer in answers(history, request_id, self.policy.service_id, self.keys)
        )

    # ------------------------------------------------------------------ deadlines

    async def _deadlines(self) -> None:
        while True:
            await asyncio.sleep(self.policy.deadline_check_every)
            try:
                await self.check_deadlines(datetime.now(UTC))
            except MeshError:
                log.exception("approval deadline check failed; will retry")

    async def check_deadlines(self, now: datetime) -> None:
        assert self._approvals is not None
        keys = await self._keys()
        for key in keys:
            loaded = await self._load(key)
            if loaded is None:
                continue
            pending, revision = loaded
            if pending.state == "expired":
                await self._announce_timeout(pending, "expire", pending)  # finish a crash
                continue
            if pending.state != "waiting" or now <= pending.deadline:
                continue
            step, updated = on_deadline(pending, now)
            if step == "expire":
                updated = msgspec.structs.replace(pending, state="expired")
            try:
                await self._swap(updated, revision)
            except ConcurrencyConflict:
                continue  # a human decided meanwhile: theirs stands
            await self._announce_timeout(pending, step, updated)

    async def _announce_timeout(
        self, pending: PendingApproval, step: str, updated: PendingApproval
    ) -> None:
        payload = ApprovalTimedOutPayload(
            request_id=pending.request_id,
            action_type=pending.action_type,
            waited_since=pending.requested_at,
            reason=f"no {pending.approver_role} decided by {pending.deadline.isoformat()}",
            escalated_to=updated.approver_role if step == "escalate" else None,
            new_deadline=updated.deadline if step == "escalate" else None,
        )
        event_type: type[Event] = ApprovalEscalated if step == "escalate" else ApprovalExpired
        # Derived ids: announcing the same step twice (after a crash) stores it once.
        index = 100 + (1 if step == "escalate" else 2)
        await self.runner.emit(
            event_type(  # type: ignore[call-arg]
                event_id=derived_event_id(
                    pending.case_id,
                    pending.required_event_id,
                    self.policy.service_id,
                    index,
                    self.runner.id_key,
                ),
                case_id=pending.case_id,
                correlation_id=pending.correlation_id,
                causation_id=pending.required_event_id,
                actor=self.policy.service_id,
                payload=payload,
            )
        )
        if step == "expire":
            await self._forget(pending.request_id)

    # ------------------------------------------------------------------ state

    @property
    def _bucket(self) -> str:
        return f"{self.topology.root.upper()}_APPROVALS"

    async def _keys(self) -> list[str]:
        """Every key the approvals bucket holds (deleted ones too: loading says which
        are gone). Read from the stream's subject counts: nats-py's `KeyValue.keys()`
        watches the bucket and can stop early while another key is being deleted."""
        prefix = f"$KV.{self._bucket}."
        try:
            info = await self.js.stream_info(f"KV_{self._bucket}", subjects_filter=f"{prefix}>")
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError("list pending approvals", repr(exc)) from exc
        return sorted(subject[len(prefix) :] for subject in info.state.subjects or {})

    async def _load(self, request_id: str) -> tuple[PendingApproval, int] | None:
        assert self._approvals is not None
        try:
            entry = await self._approvals.get(request_id)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError(f"read pending approval {request_id}", repr(exc)) from exc
        if not entry.value:
            return None
        return _pending.decode(entry.value), int(entry.revision or 0)

    async def _create(self, pending: PendingApproval) -> bool:
        """Create-only: False when the request already has a record."""
        assert self._approvals is not None
        try:
            await self._approvals.create(pending.request_id, msgspec.json.encode(pending))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError(f"keep pending approval {pending.request_id}", repr(exc)) from exc
        return True

    async def _swap(self, pending: PendingApproval, revision: int) -> None:
        """Compare-and-swap: only if nobody changed the record since `revision`."""
        assert self._approvals is not None
        try:
            await self._approvals.update(
                pending.request_id, msgspec.json.encode(pending), last=revision
            )
        except nats.js.errors.KeyWrongLastSequenceError:
            raise ConcurrencyConflict(pending.request_id, revision, "approval changed") from None
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError(f"update pending approval {pending.request_id}", repr(exc)) from exc

    async def _pending(self, request_id: str) -> PendingApproval | None:
        loaded = await self._load(request_id)
        return loaded[0] if loaded else None

    async def _forget(self, request_id: str) -> None:
        assert self._approvals is not None
        try:
            await self._approvals.delete(request_id)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError(f"forget pending approval {request_id}", repr(exc)) from exc

    async def _serve_pending(self, msg: Msg) -> None:
        """`<root>.svc.policy.pending.<principal>`: what waits for a human, for the one
        asking (the broker lets each principal ask only under its own name): an
        approver sees what its roles may decide, a requester its own requests, an
        operator everything."""
        principal = msg.subject.rsplit(".", 1)[-1]
        try:
            visible = self.visible_to(principal, await self.pending())
            body = _fitting(sorted(visible, key=lambda p: p.deadline), principal)
        except MeshError as exc:
            body = msgspec.json.encode({"error": str(exc)})
        await respond(msg, body, what="pending approvals")

    def visible_to(self, principal: str, pending: list[PendingApproval]) -> list[PendingApproval]:
        card = self.keys.card_at(principal, datetime.now(UTC))
        roles = set(card.roles) if card is not None else set()
        if "operator" in roles:
            return pending
        human = card is not None and card.kind == "human"
        return [
            p for p in pending if p.requester == principal or (human and p.approver_role in roles)
        ]

    async def pending(self) -> list[PendingApproval]:
        assert self._approvals is not None
        keys = await self._keys()
        found = [await self._pending(key) for key in keys]
        return [p for p in found if p is not None and p.state == "waiting"]


# The answer must fit one message whatever waits: the earliest deadlines first.
PENDING_REPLY_BYTES = 512 * 1024


def _fitting(pending: list[PendingApproval], principal: str) -> bytes:
    shown = pending
    body = msgspec.json.encode(shown)
    while len(body) > PENDING_REPLY_BYTES and shown:
        shown = shown[: len(shown) // 2]
        body = msgspec.json.encode(shown)
    if len(shown) < len(pending):
        log.warning(
            "pending approvals for %s: %d of %d fit one answer (earliest deadlines first)",
            principal,
            len(shown),
            len(pending),
        )
    return body


__all__ = ["PolicyService", "policy_card"]
