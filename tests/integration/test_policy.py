"""Policy decisions and human approvals end to end, on a broker enforcing the registry."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionDenied,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalEscalated,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    CaseClosed,
    CaseClosedPayload,
    DecisionProvenance,
    PolicyBundleActivated,
    TimerCancelled,
    TimerSet,
)
from mesh import HandlerContext, Identity
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case, read_subject
from mesh._runtime.dead_letters import read_dead_letters
from mesh._trust.authorization import NotAuthorized, require_authorization
from mesh._trust.key_directory import KeyDirectory
from mesh.cli import app
from mesh.errors import PermissionDenied
from mesh.testing import eventually
from services.agents.claims import adjudication
from services.policy.bundle import PolicyBundleInvalid
from tests.integration.claims_flow import (
    approve,
    human,
    open_case,
    open_claim,
    screen,
    start_agents,
)
from tests.integration.claims_flow import wait_for as first
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh

cli = CliRunner()
REFERENCE = Path(__file__).resolve().parents[2] / "deploy" / "policies"


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as secured:
        yield secured


async def test_allow_and_deny_carry_their_provenance(mesh: SecuredMesh) -> None:
    policy = await mesh.start_policy(REFERENCE)
    await start_agents(mesh)
    await open_claim(mesh, "small", 25_000)
    await open_claim(mesh, "fraud", 25_000, fraudulent=True)

    approved = await first(mesh, "small", ActionApproved)
    assert isinstance(approved, ActionApproved)
    assert policy.handlers.bundle is not None
    assert approved.payload.provenance.policy_bundle_hash == policy.handlers.bundle.hash
    [rule] = approved.payload.provenance.determining_policies
    assert rule.policy_id == "small-payouts"
    assert rule.rationale
    assert approved.payload.provenance.inputs["context"]["amount"] == 25_000
    assert approved.actor == "policy"

    denied = await first(mesh, "fraud", ActionDenied)
    assert isinstance(denied, ActionDenied)
    assert [p.policy_id for p in denied.payload.provenance.determining_policies] == [
        "high-fraud-score"
    ]
    requested = await first(mesh, "fraud", ActionRequested)
    assert denied.payload.request_id == requested.event_id
    assert denied.causation_id == requested.event_id

    assert mesh.harness_nc is not None
    activations = await read_subject(
        mesh.harness_nc.jetstream(),
        mesh.topology.ops_stream,
        mesh.topology.subjects.history("ops", "policy"),
    )
    [activation] = [s.event for s in activations]
    assert isinstance(activation, PolicyBundleActivated)
    assert activation.payload.bundle_hash == policy.handlers.bundle.hash


async def test_a_large_payout_waits_for_a_claims_manager(mesh: SecuredMesh) -> None:
    await mesh.start_policy(REFERENCE)
    await start_agents(mesh)
    manager, manager_nc = await human(mesh, "maria", ["approver", "claims_manager"])
    await open_claim(mesh, "large", 250_000)
    required = await first(mesh, "large", ApprovalRequired)
    assert isinstance(required, ApprovalRequired)
    assert required.payload.approver_role == "claims_manager"
    assert required.payload.deadline > datetime.now(UTC)

    grant = ApprovalGranted(
        case_id="large",
        actor="maria",
        correlation_id=required.correlation_id,
        causation_id=required.event_id,
        payload=ApprovalGrantedPayload(
            request_id=required.payload.request_id,
            approver="maria",
            comment="docs checked",
            request_digest=required.payload.request_digest,
        ),
    )
    await EventPublisher(manager_nc.jetstream(), manager, mesh.topology).publish(grant)  # type: ignore[attr-defined]
    approved = await first(mesh, "large", ActionApproved)
    assert isinstance(approved, ActionApproved)
    assert approved.payload.approval_id == grant.event_id
    assert approved.payload.approver == "maria"
    assert approved.payload.request_id == required.payload.request_id


async def test_nobody_approves_their_own_request(mesh: SecuredMesh) -> None:
    service = await mesh.start_policy(REFERENCE)
    manager, manager_nc = await human(mesh, "maria", ["approver", "claims_manager"])
    publisher = EventPublisher(manager_nc.jetstream(), manager, mesh.topology)  # type: ignore[attr-defined]
    # A claim and its screening, but no adjudication (the step is named otherwise).
    await open_case(mesh, "own", 500_000)
    await screen(mesh, "own", 1, step="fraud_check")
    request = ActionRequested(
        case_id="own",
        actor="maria",
        payload=ActionRequestedPayload(
            action_type="issue_payment",
            parameters={"amount": 500_000, "currency": "EUR", "payee_account": "DE89-0001"},
            evidence={"fraud_score": 1},
        ),
    )
    await publisher.publish(request)
    required = await first(mesh, "own", ApprovalRequired)
    await publisher.publish(
        ApprovalGranted(
            case_id="own",
            actor="maria",
            payload=ApprovalGrantedPayload(
                request_id=request.event_id,
                approver="maria",
                request_digest=required.payload.request_digest,  # type: ignore[attr-defined]
            ),
        )
    )
    assert mesh.harness_nc is not None

    async def refused() -> list[object]:
        assert mesh.harness_nc is not None
        letters = await read_dead_letters(mesh.harness_nc.jetstream(), mesh.topology)
        return [letter for letter in letters if letter.consumer == "policy"]

    [letter] = await eventually(refused, what="the self-approval refused")
    assert "maria requested issue_payment itself and cannot decide it" in letter.reason  # type: ignore[attr-defined]
    request_id = required.payload.request_id  # type: ignore[attr-defined]
    assert [p.request_id for p in await service.approvals.waiting()] == [request_id]


async def test_an_agent_cannot_forge_a_decision_or_an_approval(mesh: SecuredMesh) -> None:
    runner, nc = await mesh.run_agent(adjudication.agent)
    publisher = EventPublisher(nc.jetstream(), runner.identity, mesh.topology, timeout=1, nc=nc)
    for forged in (
        ActionApproved,
        ApprovalGranted,
    ):
        subject = mesh.topology.subjects.case_event("x", forged.event_name())
        with pytest.raises(PermissionDenied):
            await publisher.publish_raw(subject, b"{}", {})


async def test_an_unanswered_approval_escalates_then_expires(
    mesh: SecuredMesh, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(REFERENCE, bundle)
    cedar = bundle / "payments.cedar"
    cedar.write_text(cedar.read_text().replace('@approval_sla("4h")', '@approval_sla("1s")'))
    await mesh.start_policy(bundle)
    await start_agents(mesh)
    await open_claim(mesh, "slow", 250_000)
    escalated = await first(mesh, "slow", ApprovalEscalated)
    assert isinstance(escalated, ApprovalEscalated)
    assert escalated.payload.escalated_to == "head_of_claims"
    expired = await first(mesh, "slow", ApprovalExpired)
    assert isinstance(expired, ApprovalExpired)
    assert expired.payload.escalated_to is None
    assert "no head_of_claims decided" in expired.payload.reason


async def test_an_invalid_bundle_is_refused_and_the_old_one_stays(
    mesh: SecuredMesh, tmp_path: Path
) -> None:
    service = await mesh.start_policy(REFERENCE)
    assert service.handlers.bundle is not None
    in_force = service.handlers.bundle.hash
    broken = tmp_path / "broken"
    shutil.copytree(REFERENCE, broken)
    (broken / "oops.cedar").write_text('permit(principal, action == Action::"teleport", resource);')
    with pytest.raises(PolicyBundleInvalid, match="teleport"):
        await service.handlers.activate(broken)
    assert service.handlers.bundle.hash == in_force
    await start_agents(mesh)
    await open_claim(mesh, "still-works", 1_000)
    decided = await first(mesh, "still-works", ActionApproved)
    assert decided.payload.provenance.policy_bundle_hash == in_force  # type: ignore[attr-defined]


async def test_the_executor_proves_authorization_from_the_log(mesh: SecuredMesh) -> None:
    await mesh.start_policy(REFERENCE)
    await start_agents(mesh)
    manager, manager_nc = await human(mesh, "maria", ["approver", "claims_manager"])
    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()
    keys = KeyDirectory()
    await keys.follow(mesh.harness_nc, mesh.topology, mesh.client(mesh.harness_nc))
    try:
        await open_claim(mesh, "small", 1_000)
        await open_claim(mesh, "fraud", 1_000, fraudulent=True)
        await open_claim(mesh, "large", 250_000)
        small = await first(mesh, "small", ActionApproved)
        proof = await require_authorization(
            await read_case(js, mesh.topology, "small"),
            keys,
            request_id=small.payload.request_id,  # type: ignore[attr-defined]
        )
        assert proof.approval is None

        denied = await first(mesh, "fraud", ActionDenied)
        with pytest.raises(NotAuthorized, match="denied: forbidden by high-fraud-score"):
            await require_authorization(
                await read_case(js, mesh.topology, "fraud"),
                keys,
                request_id=denied.payload.request_id,  # type: ignore[attr-defined]
            )

        required = await first(mesh, "large", ApprovalRequired)
        request_id = required.payload.request_id  # type: ignore[attr-defined]
        with pytest.raises(NotAuthorized, match="no approving decision"):
            await require_authorization(
                await read_case(js, mesh.topology, "large"), keys, request_id=request_id
            )
        # Another service (with the run of the mesh) cannot write a decision at all.
        forged = ActionApproved(
            case_id="large",
            actor="harness",
            payload=ActionDecisionPayload(
                request_id=request_id,
                action_type="issue_payment",
                provenance=DecisionProvenance(policy_bundle_hash="forged"),
            ),
        )
        harness = EventPublisher(js, mesh.harness, mesh.topology, timeout=1, nc=mesh.harness_nc)
        with pytest.raises(PermissionDenied):
            await harness.publish(forged)
        # The claims manager approves: now the chain holds, human approval included.
        grant = ApprovalGranted(
            case_id="large",
            actor="maria",
            payload=ApprovalGrantedPayload(
                request_id=request_id,
                approver="maria",
                request_digest=required.payload.request_digest,  # type: ignore[attr-defined]
            ),
        )
        await EventPublisher(manager_nc.jetstream(), manager, mesh.topology).publish(grant)  # type: ignore[attr-defined]

        async def authorized() -> object:
            try:
                return await require_authorization(
                    await read_case(js, mesh.topology, "large"), keys, request_id=request_id
                )
            except NotAuthorized:
                return None

        proof = await eventually(authorized, what="the approved chain")
        assert proof.approval is not None  # type: ignore[attr-defined]
        assert proof.approval.actor == "maria"  # type: ignore[attr-defined]
    finally:
        await keys.close()


async def test_a_manager_decides_from_the_command_line(
    mesh: SecuredMesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await mesh.start_policy(REFERENCE)
    await start_agents(mesh)
    manager, _ = await human(mesh, "maria", ["approver", "claims_manager"])
    seed = tmp_path / "maria.nk"
    manager.save(seed)
    for name, value in {
        "MESH_NATS_URL": mesh.url,
        "MESH_SUBJECT_ROOT": mesh.topology.root,
        "MESH_NKEY_AUTH": "1",
        "MESH_APPROVER_ID": "maria",
        "MESH_APPROVER_SEED_FILE": str(seed),
    }.items():
        monkeypatch.setenv(name, value)
    await open_claim(mesh, "big-1", 300_000)
    await open_claim(mesh, "big-2", 400_000)
    first_required = await first(mesh, "big-1", ApprovalRequired)
    second_required = await first(mesh, "big-2", ApprovalRequired)

    listed = await asyncio.to_thread(cli.invoke, app, ["approvals", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    waiting = {row["request_id"]: row for row in json.loads(listed.stdout)}
    assert set(waiting) == {
        first_required.payload.request_id,  # type: ignore[attr-defined]
        second_required.payload.request_id,  # type: ignore[attr-defined]
    }

    approve = ["approvals", "approve", first_required.payload.request_id, "--comment", "ok"]  # type: ignore[attr-defined]
    result = await asyncio.to_thread(cli.invoke, app, approve)
    assert result.exit_code == 0, result.output
    reject = ["approvals", "reject", second_required.payload.request_id, "--reason", "no receipt"]  # type: ignore[attr-defined]
    result = await asyncio.to_thread(cli.invoke, app, reject)
    assert result.exit_code == 0, result.output

    approved = await first(mesh, "big-1", ActionApproved)
    assert approved.payload.approver == "maria"  # type: ignore[attr-defined]
    denied = await first(mesh, "big-2", ActionDenied)
    assert denied.payload.reasons == ["rejected by maria: no receipt"]  # type: ignore[attr-defined]
    again = await asyncio.to_thread(cli.invoke, app, approve)
    assert again.exit_code == 2
    assert "no approval is pending" in again.output


async def _grant(
    mesh: SecuredMesh,
    manager: Identity,
    nc: object,
    case_id: str,
    request_id: str,
    digest: str = "",
) -> ApprovalGranted:
    grant = ApprovalGranted(
        case_id=case_id,
        actor="maria",
        payload=ApprovalGrantedPayload(
            request_id=request_id, approver="maria", request_digest=digest
        ),
    )
    await EventPublisher(nc.jetstream(), manager, mesh.topology).publish(grant)  # type: ignore[attr-defined]
    return grant


async def _policy_letters(mesh: SecuredMesh) -> list[object]:
    assert mesh.harness_nc is not None
    letters = await read_dead_letters(mesh.harness_nc.jetstream(), mesh.topology)
    return [letter for letter in letters if letter.consumer == "policy"]


async def test_an_approval_filed_in_another_case_is_refused(mesh: SecuredMesh) -> None:
    service = await mesh.start_policy(REFERENCE)
    await start_agents(mesh)
    manager, manager_nc = await human(mesh, "maria", ["approver", "claims_manager"])
    await open_claim(mesh, "case-a", 250_000)
    required = await first(mesh, "case-a", ApprovalRequired)
    request_id = required.payload.request_id  # type: ignore[attr-defined]
    await _grant(mesh, manager, manager_nc, "case-b", request_id, required.payload.request_digest)  # type: ignore[attr-defined]
    [letter] = await eventually(lambda: _policy_letters(mesh), what="the misfiled grant refused")
    assert "belongs to case case-a, not case-b" in letter.reason  # type: ignore[attr-defined]
    assert [p.request_id for p in await service.approvals.waiting()] == [request_id]


def _hurried(directory: Path, sla: str) -> Path:
    """The reference bundle with the payout approval's SLA cut from 4h to `sla`."""
    bundle = directory / f"hurried-{sla}"
    shutil.copytree(REFERENCE, bundle)
    cedar = bundle / "payments.cedar"
    assert '@approval_sla("4h")' in cedar.read_text()
    cedar.write_text(cedar.read_text().replace('@approval_sla("4h")', f'@approval_sla("{sla}")'))
    return bundle


async def test_a_decided_request_is_never_reopened_or_decided_twice(
    mesh: SecuredMesh, tmp_path: Path
) -> None:
    service = await mesh.start_policy(_hurried(tmp_path, "2s"))
    await start_agents(mesh)
    manager, manager_nc = await human(mesh, "maria", ["approver", "claims_manager"])
    await open_claim(mesh, "once", 250_000)
    required = await first(mesh, "once", ApprovalRequired)
    request_id = required.payload.request_id  # type: ignore[attr-defined]
    digest = required.payload.request_digest  # type: ignore[attr-defined]
    await _grant(mesh, manager, manager_nc, "once", request_id, digest)
    await first(mesh, "once", ActionApproved)
    await eventually(lambda: _no_pending(service), what="the approval closed")

    # The decision cancelled the deadline's timer: its time passes, and nothing fires.
    assert mesh.harness_nc is not None
    history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "once")
    [timer] = [s.event for s in history if isinstance(s.event, TimerSet)]
    [cancelled] = [s.event for s in history if isinstance(s.event, TimerCancelled)]
    assert timer.payload.name == "approval_deadline"
    assert cancelled.payload.timer_id == timer.event_id
    assert "decided by maria" in cancelled.payload.reason
    await asyncio.sleep(max(0.0, (timer.payload.due_at - datetime.now(UTC)).total_seconds()) + 1.5)
    # A second grant is refused.
    await _grant(mesh, manager, manager_nc, "once", request_id, digest)
    [letter] = await eventually(lambda: _policy_letters(mesh), what="the second grant refused")
    assert "no approval is pending" in letter.reason  # type: ignore[attr-defined]

    # A redelivered request (as after a crash before its ack) does not reopen it.
    assert mesh.harness_nc is not None
    history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "once")
    [request] = [s for s in history if isinstance(s.event, ActionRequested)]
    replay = HandlerContext(
        agent=service.agent,
        event=request.event,
        delivery=2,
        stream_sequence=request.sequence,
        services=service.runner,
        written_at=request.stored_at,
        message=request,
    )
    await service.handlers.on_action_requested(request.event, replay)  # type: ignore[arg-type]
    assert await service.approvals.waiting() == []
    history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "once")
    names = [s.event.event_name() for s in history]
    assert names.count("action_approved") == 1
    assert "approval_escalated" not in names
    assert "approval_expired" not in names
    assert "timer_fired" not in names


async def _no_pending(service: object) -> bool:
    return await service.approvals.waiting() == []  # type: ignore[attr-defined]


async def test_a_grant_that_loses_the_race_with_the_deadline_is_refused(
    mesh: SecuredMesh, tmp_path: Path
) -> None:
    await mesh.start_policy(_hurried(tmp_path, "3s"))
    await start_agents(mesh)
    manager, manager_nc = await human(mesh, "maria", ["approver", "claims_manager"])
    await open_claim(mesh, "race", 250_000)
    required = await first(mesh, "race", ApprovalRequired)
    request_id = required.payload.request_id  # type: ignore[attr-defined]
    # The deadline wins: escalated to the head of claims before maria's grant lands.
    escalated = await first(mesh, "race", ApprovalEscalated)
    assert escalated.payload.escalated_to == "head_of_claims"  # type: ignore[attr-defined]
    await _grant(mesh, manager, manager_nc, "race", request_id, required.payload.request_digest)  # type: ignore[attr-defined]
    [letter] = await eventually(lambda: _policy_letters(mesh), what="the late grant refused")
    assert "needs the role 'head_of_claims'" in letter.reason  # type: ignore[attr-defined]
    assert mesh.harness_nc is not None
    history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "race")
    assert not any(isinstance(s.event, ActionApproved) for s in history)


async def test_a_grant_after_the_case_closed_approves_nothing(mesh: SecuredMesh) -> None:
    """The case closes while a large payout waits for a human; the manager's grant,
    valid in itself, then arrives. Nothing is done in a closed case: policy denies."""
    await mesh.start_policy(REFERENCE)
    await start_agents(mesh)
    manager, manager_nc = await human(mesh, "maria", ["approver", "claims_manager"])
    await open_claim(mesh, "closed-while-waiting", 250_000)
    required = await first(mesh, "closed-while-waiting", ApprovalRequired)
    assert isinstance(required, ApprovalRequired)
    closing = CaseClosed(
        case_id="closed-while-waiting",
        actor="harness",
        payload=CaseClosedPayload(outcome="withdrawn", summary="the claimant withdrew"),
    )
    assert mesh.harness_nc is not None
    await EventPublisher(mesh.harness_nc.jetstream(), mesh.harness, mesh.topology).publish(closing)
    grant = await approve(mesh, "closed-while-waiting", (manager, manager_nc))
    denied = await first(mesh, "closed-while-waiting", ActionDenied)
    assert isinstance(denied, ActionDenied)
    assert denied.payload.approval_id == grant.event_id
    assert "closed (withdrawn)" in denied.payload.reasons[-1]
    assert "while the request waited" in denied.payload.reasons[-1]
    history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "closed-while-waiting")
    assert not any(isinstance(s.event, ActionApproved) for s in history)
