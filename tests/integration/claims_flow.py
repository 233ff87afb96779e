"""A small claims process on a secured mesh, for event-store tests: the real policy
service with the reference bundle, an adjudicator that requests payments, a payer that
executes approved ones and closes the case, and a human claims manager."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client

from contracts import (
    ActionApproved,
    ActionCompleted,
    ActionCompletedPayload,
    ActionDenied,
    ActionGrant,
    ActionRequested,
    ActionRequestedPayload,
    AgentCard,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.envelope import Event
from mesh import Agent, HandlerContext, Identity
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._trust.onboarding import connect_as, register
from mesh.testing import eventually
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh

REFERENCE_POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"


def adjudicator() -> Agent:
    """Asks to pay a screened claim its amount (from the claim, as the case was opened
    with it), to the claim's payee."""
    agent = Agent(
        AgentCard(
            agent_id="adjudicator",
            name="Adjudication",
            version="1",
            owner=KNOWN_OWNER,
            purpose="decides payouts",
            consumes=["case_step_completed"],
            produces=["case_step_completed", "action_requested"],
            reads=["case_opened"],
            actions=[ActionGrant(action_type="issue_payment", limits={"max_amount": 10_000_000})],
        )
    )

    @agent.on(CaseStepCompleted)
    async def decide(event: CaseStepCompleted, ctx: HandlerContext) -> None:
        if event.payload.step != "fraud_screening":
            return
        opened = next(s.event for s in await ctx.history() if isinstance(s.event, CaseOpened))
        claim = opened.payload.data
        await ctx.emit(
            CaseStepCompleted,
            CaseStepCompletedPayload(
                step="adjudication",
                outcome="payout",
                rationale="the policy covers the loss",
                evidence={"payout": claim["amount_cents"]},
            ),
        )
        await ctx.emit(
            ActionRequested,
            ActionRequestedPayload(
                action_type="issue_payment",
                parameters={
                    "amount": claim["amount_cents"],
                    "currency": claim["currency"],
                    "payee_account": claim["payee_account"],
                },
                evidence={"fraud_score": 0},  # its own word: never a fact for policy
                rationale="claim covered",
            ),
        )

    return agent


def payer() -> Agent:
    """Executes approved payments (the side effect is simulated) and closes the case;
    a denied payment closes the case too."""
    agent = Agent(
        AgentCard(
            agent_id="payer",
            name="Payment",
            version="1",
            owner=KNOWN_OWNER,
            purpose="pays approved claims",
            consumes=["action_approved", "action_denied"],
            produces=["action_completed", "case_closed"],
        )
    )

    @agent.on(ActionApproved)
    async def pay(event: ActionApproved, ctx: HandlerContext) -> None:
        await ctx.emit(
            ActionCompleted,
            ActionCompletedPayload(
                request_id=event.payload.request_id,
                action_type=event.payload.action_type,
                result={"payment_ref": f"pay-{event.payload.request_id[-8:]}"},
            ),
        )
        await ctx.emit(CaseClosed, CaseClosedPayload(outcome="paid"))

    @agent.on(ActionDenied)
    async def close(event: ActionDenied, ctx: HandlerContext) -> None:
        await ctx.emit(CaseClosed, CaseClosedPayload(outcome="denied"))

    return agent


async def start_claims(mesh: SecuredMesh) -> None:
    await mesh.start_policy(REFERENCE_POLICIES)
    await mesh.run_agent(adjudicator())
    await mesh.run_agent(payer())


async def screen(
    mesh: SecuredMesh, case_id: str, fraud: int, step: str = "fraud_screening"
) -> None:
    """The fraud screening's result, in the log, signed by the screener whose card makes
    it the authority for `fraud_score`: the fact policy reads (never the requester's own
    evidence, nor anyone else's)."""
    assert mesh.harness_nc is not None
    screener = await mesh.ensure_screener()
    step = CaseStepCompleted(
        case_id=case_id,
        actor="screener",
        payload=CaseStepCompletedPayload(
            step=step, outcome="screened", evidence={"fraud_score": fraud}
        ),
    )
    await EventPublisher(mesh.harness_nc.jetstream(), screener, mesh.topology).publish(step)


async def open_claim(mesh: SecuredMesh, case_id: str, amount: int, fraud: int = 0) -> None:
    """The claim as the ingress opens a case (its data are the claim's facts), then the
    screening the adjudicator waits for."""
    await open_case(mesh, case_id, amount)
    await screen(mesh, case_id, fraud)


async def open_case(mesh: SecuredMesh, case_id: str, amount: int) -> None:
    """The claim as the ingress opens a case: its data are the claim's facts."""
    assert mesh.harness_nc is not None
    opened = CaseOpened(
        case_id=case_id,
        actor="ingress",
        payload=CaseOpenedPayload(
            kind="claim",
            source="crm",
            data={"amount_cents": amount, "currency": "EUR", "payee_account": "DE89-0001"},
        ),
    )
    js = mesh.harness_nc.jetstream()
    await EventPublisher(js, mesh.ingress_identity, mesh.topology).publish(opened)


async def wait_for(mesh: SecuredMesh, case_id: str, event_type: type[Event]) -> Event:
    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()

    async def found() -> Event | None:
        for stored in await read_case(js, mesh.topology, case_id):
            if isinstance(stored.event, event_type):
                return stored.event
        return None

    return await eventually(found, timeout=20, what=f"{event_type.event_name()} in {case_id}")


async def human(mesh: SecuredMesh, agent_id: str, roles: list[str]) -> tuple[Identity, Client]:
    """A human enrolled on an operator's grant, connected with its own key."""
    identity = Identity.generate()
    card = AgentCard(
        agent_id=agent_id,
        name=agent_id.title(),
        version="1",
        owner=KNOWN_OWNER,
        purpose="approves large payouts",
        kind="human",
        roles=roles,
        produces=["approval_granted", "approval_rejected", "action_requested"],
        actions=[ActionGrant(action_type="issue_payment")],
    )
    await mesh.enrol(card, identity)  # with the operator's grant: nobody enrols without
    record = await register(mesh.url, card, identity, mesh.topology.subjects, wait=5)
    assert record.status == "active"
    nc = await connect_as(mesh.url, agent_id, identity)
    mesh.connections.append(nc)
    return identity, nc


async def claims_manager(mesh: SecuredMesh, agent_id: str = "maria") -> tuple[Identity, Client]:
    return await human(mesh, agent_id, ["approver", "claims_manager"])


async def approve(
    mesh: SecuredMesh, case_id: str, approver: tuple[Identity, Client], name: str = "maria"
) -> ApprovalGranted:
    required = await wait_for(mesh, case_id, ApprovalRequired)
    assert isinstance(required, ApprovalRequired)
    identity, nc = approver
    grant = ApprovalGranted(
        case_id=case_id,
        correlation_id=required.correlation_id,
        causation_id=required.event_id,
        actor=name,
        payload=ApprovalGrantedPayload(
            request_id=required.payload.request_id,
            approver=name,
            comment="documents checked",
            request_digest=required.payload.request_digest,
        ),
    )
    await EventPublisher(nc.jetstream(), identity, mesh.topology, nc=nc).publish(grant)
    return grant
