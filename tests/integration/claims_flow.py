"""The claims process on a secured mesh, for event-store, audit and policy tests: the
real claims agents of services/agents/claims (intake, fraud screening, adjudication,
payment), the real policy service with the reference bundle, the simulated payment
gateway in-process (its real app and SQLite ledger, reached over an in-process
transport), and a human claims manager.

A claim opened with `open_claim` goes the whole way as in `make demo`: intake accepts
it, the fraud agent scores it, adjudication asks to pay it, policy decides (a claims
manager approves a large one), payment captures it at the gateway and closes the case.
A case opened with `open_case` is of another kind: the claims agents leave it alone, so
a test can write its steps itself."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
from nats.aio.client import Client
from pydantic import SecretStr

from contracts import (
    ActionGrant,
    AgentCard,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.envelope import Event
from contracts.ingress import CLAIM_KIND, ClaimData
from mesh import Identity
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._sdk.app import StartedAgent
from mesh._trust.onboarding import connect_as, register
from mesh.testing import eventually
from services.agents.claims import adjudication, fraud, intake, payment
from services.agents.claims.gateway import GatewaySettings, Ledger, gateway_app
from services.agents.claims.gateway_client import GatewayClient
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh

REFERENCE_POLICIES = Path(__file__).resolve().parents[2] / "deploy" / "policies"
PAYEE = "DE89-0001"
# Two of the fraud agent's signals: it scores such a claim 95, above the policy's bar of 80.
SUSPICIOUS = "staged accident, cash only"
# The agents as the stack runs them (`mesh run services.agents.claims.<name>`).
DECIDING = (intake.agent, fraud.agent, adjudication.agent)


@dataclass
class InProcessGateway:
    """The simulated gateway (services/agents/claims/gateway.py) in this process: its
    app with its SQLite ledger, which the payment agent pays through."""

    ledger: Ledger
    client: GatewayClient

    @classmethod
    def open(cls, directory: Path) -> InProcessGateway:
        token = "gateway-credential"  # the payment agent presents it, as in the stack
        settings = GatewaySettings(failure_rate=0.0, token=SecretStr(token))
        ledger = Ledger(directory / "gateway.db")
        transport = httpx.ASGITransport(app=gateway_app(settings, ledger))
        return cls(ledger, GatewayClient("http://gateway", token=token, transport=transport))

    async def close(self) -> None:
        payment.use_gateway(None)
        await self.client.close()
        self.ledger.close()


@dataclass
class _PaymentAgent(StartedAgent):
    """The started payment agent, which closes its gateway once it has stopped (the
    mesh stops every agent it started when it closes)."""

    gateway: InProcessGateway | None = None

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            if self.gateway is not None:
                await self.gateway.close()


async def start_agents(mesh: SecuredMesh) -> None:
    """The claims agents up to the payment request (intake, fraud screening,
    adjudication): what policy decides is not executed."""
    for agent in DECIDING:
        await mesh.run_agent(agent)


async def start_payment(mesh: SecuredMesh) -> InProcessGateway:
    """The payment agent, paying through a gateway of its own in this process."""
    gateway = InProcessGateway.open(mesh.directory)
    payment.use_gateway(gateway.client)  # before it consumes anything
    try:
        await mesh.run_agent(payment.agent)
    except BaseException:
        await gateway.close()
        raise
    started = mesh.started[-1]
    fields = {field.name: getattr(started, field.name) for field in dataclasses.fields(started)}
    mesh.started[-1] = _PaymentAgent(**fields, gateway=gateway)
    return gateway


async def start_claims(mesh: SecuredMesh) -> InProcessGateway:
    """The whole claims process: policy and the four claims agents, with the gateway."""
    await mesh.start_policy(REFERENCE_POLICIES)
    await start_agents(mesh)
    return await start_payment(mesh)


def claim_data(amount: int, *, fraudulent: bool = False) -> dict[str, object]:
    """A health claim (no deductible: the payout is the amount claimed) on a policy in
    force, reported a week after the incident."""
    claim = ClaimData(
        policy_number="P-12345",
        claimant="Ada Lovelace",
        claim_type="health",
        amount_cents=amount,
        incident_date=(datetime.now(UTC) - timedelta(days=7)).date(),
        description=SUSPICIOUS if fraudulent else "treatment after a fall",
        payee_account=PAYEE,
    )
    data: dict[str, object] = msgspec.to_builtins(claim)
    return data


async def open_claim(
    mesh: SecuredMesh, case_id: str, amount: int, *, fraudulent: bool = False
) -> None:
    """An insurance claim, as the ingress opens a case for it (its data are the claim's
    facts). `fraudulent`: its description carries two of the fraud agent's signals."""
    await _open(mesh, case_id, CLAIM_KIND, claim_data(amount, fraudulent=fraudulent))


async def open_case(mesh: SecuredMesh, case_id: str, amount: int) -> None:
    """A case the claims agents leave alone (not of their kind), with a claim's facts as
    the ingress states them: its steps are the test's to write."""
    data = {"amount_cents": amount, "currency": "EUR", "payee_account": PAYEE}
    await _open(mesh, case_id, "claim", data)


async def _open(mesh: SecuredMesh, case_id: str, kind: str, data: dict[str, object]) -> None:
    assert mesh.harness_nc is not None
    opened = CaseOpened(
        case_id=case_id,
        actor="ingress",
        payload=CaseOpenedPayload(kind=kind, source="crm", data=data),
    )
    js = mesh.harness_nc.jetstream()
    await EventPublisher(js, mesh.ingress_identity, mesh.topology).publish(opened)


async def screen(
    mesh: SecuredMesh, case_id: str, fraud: int, step: str = "fraud_screening"
) -> None:
    """A fraud screening's result, in the log, signed by the screener whose card makes
    it an authority for `fraud_score` and intake's `claim_accepted`: the facts policy
    reads (never the requester's own evidence, nor anyone else's)."""
    assert mesh.harness_nc is not None
    screener = await mesh.ensure_screener()
    screened = CaseStepCompleted(
        case_id=case_id,
        actor="screener",
        payload=CaseStepCompletedPayload(
            step=step,
            outcome="screened",
            evidence={"claim_accepted": True, "fraud_score": fraud},
        ),
    )
    await EventPublisher(mesh.harness_nc.jetstream(), screener, mesh.topology).publish(screened)


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
