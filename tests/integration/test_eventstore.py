"""The event store on a real, registry-enforcing nats-server and both databases:
projection, queries, rebuild, replay at a time, export and verification."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from contracts import ActionCompleted, ApprovalRequired, CaseClosed
from contracts.eventstore_api import CaseQuery, CaseRequest, StoreReply
from mesh._trust.key_directory import KeyDirectory
from services.eventstore.app import EventStoreService
from services.eventstore.audit import verify_bundle
from services.eventstore.export import build_bundle, store_request
from services.eventstore.projector import Projector
from services.eventstore.replay import replay_case
from services.eventstore.views import ViewStore
from tests.integration.claims_flow import (
    approve,
    claims_manager,
    open_claim,
    start_claims,
    wait_for,
)
from tests.integration.databases import Databases
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as secured:
        yield secured


async def caught_up(mesh: SecuredMesh, store: EventStoreService) -> None:
    assert mesh.harness_nc is not None
    info = await mesh.harness_nc.jetstream().stream_info(mesh.topology.cases_stream)
    assert store.projector is not None
    await store.projector.wait_for(info.state.last_seq, timeout=20)


async def run_claims(mesh: SecuredMesh) -> dict[str, str]:
    """Three claims: small (paid), large (a human approves, paid), fraudulent (denied)."""
    await start_claims(mesh)
    manager = await claims_manager(mesh)
    await open_claim(mesh, "small", 20_000)
    await open_claim(mesh, "large", 250_000)
    await open_claim(mesh, "fraud", 30_000, fraudulent=True)
    await approve(mesh, "large", manager)
    for case_id in ("small", "large", "fraud"):
        await wait_for(mesh, case_id, CaseClosed)
    return {"small": "paid", "large": "paid", "fraud": "denied"}


async def test_the_store_projects_cases_timelines_and_activity(
    mesh: SecuredMesh, databases: Databases, database_kind: str
) -> None:
    store = await mesh.start_eventstore(databases.new(database_kind))
    outcomes = await run_claims(mesh)
    await caught_up(mesh, store)
    assert mesh.harness_nc is not None
    nc = mesh.harness_nc

    cases = (await store_request(nc, mesh.topology, "cases", CaseQuery())).cases
    assert {c.case_id: c.outcome for c in cases} == outcomes
    assert all(c.status == "closed" and c.open_actions == 0 for c in cases)
    assert all(c.flagged_events == 0 for c in cases)
    closed = (await store_request(nc, mesh.topology, "cases", CaseQuery(status="open"))).cases
    assert closed == []

    detail = (await store_request(nc, mesh.topology, "case", CaseRequest(case_id="large"))).detail
    assert detail is not None
    [payment] = detail.actions
    assert payment.status == "completed"
    assert payment.approver == "maria"
    assert payment.requested_by == "claims-adjudication"
    assert payment.policy_bundle_hash

    timeline = (
        await store_request(nc, mesh.topology, "timeline", CaseRequest(case_id="large"))
    ).timeline
    # The approval's deadline is a durable timer of the policy: set with the question,
    # cancelled by the decision (its place beside the payment is a race).
    timers = [e.event_type for e in timeline if (e.event_type or "").startswith("timer_")]
    assert timers == ["timer_set", "timer_cancelled"]
    timeline = [e for e in timeline if not (e.event_type or "").startswith("timer_")]
    kinds = [entry.event_type for entry in timeline]
    assert kinds == [
        "case_opened",  # the claim: its facts, stated by the ingress
        "case_step_completed",  # intake
        "case_step_completed",  # the fraud screening, which policy reads
        "case_step_completed",  # adjudication
        "action_requested",
        "approval_required",
        "approval_granted",
        "action_approved",
        "action_completed",
        "case_closed",
    ]
    assert [entry.actor for entry in timeline[1:5]] == [
        "claims-intake",
        "claims-fraud",
        "claims-adjudication",
        "claims-adjudication",
    ]
    required = timeline[5]
    assert required.decision == "approval_required"
    assert required.determining_policies == ["large-payouts-need-approval"]
    assert "claims manager" in (required.rationale or "")
    assert timeline[6].approver == "maria"
    assert timeline[7].decision == "approved"
    assert timeline[7].approver == "maria"
    assert [entry.actor for entry in timeline[8:]] == ["claims-payment", "claims-payment"]
    assert all(entry.verified and entry.signer for entry in timeline)

    denied = (
        await store_request(nc, mesh.topology, "timeline", CaseRequest(case_id="fraud"))
    ).timeline
    decision = next(e for e in denied if e.event_type == "action_denied")
    assert "high-fraud-score" in decision.determining_policies

    activity = (await store_request(nc, mesh.topology, "activity")).activity
    counts = {(a.actor, a.event_type): a.events for a in activity}
    assert counts[("claims-intake", "case_step_completed")] == 3
    assert counts[("claims-fraud", "case_step_completed")] == 3
    assert counts[("claims-adjudication", "action_requested")] == 3
    assert counts[("claims-payment", "action_completed")] == 2
    assert counts[("maria", "approval_granted")] == 1

    with pytest.raises(Exception, match="no case 'nope'"):
        await store_request(nc, mesh.topology, "case", CaseRequest(case_id="nope"))
    bad = await nc.request(mesh.topology.subjects.service("eventstore", "cases"), b"{", timeout=5)
    reply = msgspec.json.decode(bad.data, type=StoreReply)
    assert not reply.ok
    assert reply.error


async def test_a_rebuild_from_the_stream_equals_the_live_views(
    mesh: SecuredMesh, databases: Databases, database_kind: str
) -> None:
    store = await mesh.start_eventstore(databases.new(database_kind), batch=7)
    await run_claims(mesh)
    await caught_up(mesh, store)
    assert store.store is not None
    live = await asyncio.to_thread(store.store.snapshot)

    rebuilt = ViewStore.open(databases.new(database_kind))
    try:
        keys = KeyDirectory()
        keys.load(await mesh.client(mesh.harness_nc).keys())  # type: ignore[arg-type]
        assert mesh.harness_nc is not None
        js = mesh.harness_nc.jetstream()
        info = await js.stream_info(mesh.topology.cases_stream)
        projector = Projector(js, mesh.topology, rebuilt, keys, batch=1000)
        await projector.run(stop_at=info.state.last_seq)
        assert await asyncio.to_thread(rebuilt.snapshot) == live
    finally:
        rebuilt.close()


async def test_replay_at_a_time_equals_the_live_state_then(
    mesh: SecuredMesh, databases: Databases
) -> None:
    store = await mesh.start_eventstore(databases.new("sqlite"))
    await start_claims(mesh)
    manager = await claims_manager(mesh)
    await open_claim(mesh, "large", 250_000)
    await wait_for(mesh, "large", ApprovalRequired)
    await caught_up(mesh, store)
    assert mesh.harness_nc is not None
    nc = mesh.harness_nc
    then = datetime.now(UTC)
    live_then = (
        await store_request(nc, mesh.topology, "case", CaseRequest(case_id="large"))
    ).detail
    assert live_then is not None
    assert live_then.case.pending_approvals == 1

    await asyncio.sleep(0.05)
    await approve(mesh, "large", manager)
    await wait_for(mesh, "large", ActionCompleted)
    await wait_for(mesh, "large", CaseClosed)
    await caught_up(mesh, store)
    live_now = (await store_request(nc, mesh.topology, "case", CaseRequest(case_id="large"))).detail

    keys = KeyDirectory()
    keys.load(await mesh.client(nc).keys())
    js = nc.jetstream()
    assert await replay_case(js, mesh.topology, keys, "large", then) == live_then
    assert await replay_case(js, mesh.topology, keys, "large") == live_now
    assert live_now is not None
    assert live_now.case.status == "closed"
    before_anything = datetime(2000, 1, 1, tzinfo=UTC)
    assert await replay_case(js, mesh.topology, keys, "large", before_anything) is None


async def test_an_exported_case_and_the_whole_log_verify(
    mesh: SecuredMesh, databases: Databases
) -> None:
    store = await mesh.start_eventstore(databases.new("sqlite"), checkpoint_every=5)
    await run_claims(mesh)
    # Two checkpoints at least, whatever the batches: how many the store makes on its
    # own depends on how the log arrives (all of it in one batch: one).
    await store.checkpoint_now()
    await open_claim(mesh, "later", 20_000)
    await wait_for(mesh, "later", CaseClosed)
    await store.checkpoint_now()
    assert mesh.harness_nc is not None
    for scope in ("large", None):
        bundle = await build_bundle(mesh.harness_nc, mesh.topology, scope)
        report = verify_bundle(bundle, store_key=mesh.store_identity.public_key)
        assert report.ok, report.violations
        assert report.checkpoints >= 2  # the one that first covered it, and the newest
    assert report.cases == 4
