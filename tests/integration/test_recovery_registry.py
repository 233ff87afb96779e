"""Recovery is prompt: the event store keeps projecting while the registry is down. Its
signer checks need the registry only when the registry's history has moved past what
its key directory holds (one direct get on the registry stream says so), and they stay
checks: a revoked agent's key and a key nobody registered are flagged, never accepted,
with the registry away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts import (
    AgentCard,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.envelope import Event
from contracts.eventstore_api import TimelineEntry
from mesh._broker.publisher import EventPublisher
from mesh._trust.identity import Identity
from mesh._trust.key_directory import KeyDirectory
from services.eventstore.app import EventStoreService
from services.eventstore.projector import Projector
from services.eventstore.views import ViewStore
from tests.integration.databases import Databases
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh, secured_mesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as secured:
        yield secured


def closer_card(agent_id: str) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=agent_id,
        version="1",
        owner=KNOWN_OWNER,
        purpose="closes cases",
        produces=["case_closed"],
    )


async def publish(mesh: SecuredMesh, signer: Identity, event: Event) -> int:
    """`event` signed with `signer`'s key, published on the harness's connection (the
    broker lets the harness publish case events; the signature says who wrote it)."""
    assert mesh.harness_nc is not None
    publisher = EventPublisher(mesh.harness_nc.jetstream(), signer, mesh.topology)
    return (await publisher.publish(event)).sequence


def opened(case_id: str) -> CaseOpened:
    return CaseOpened(
        case_id=case_id,
        actor="ingress",
        payload=CaseOpenedPayload(kind="claim", source="crm", data={"amount_cents": 1}),
    )


async def timeline(store: EventStoreService, case_id: str) -> list[TimelineEntry]:
    assert store.store is not None
    return await asyncio.to_thread(store.store.timeline, case_id)


async def test_the_store_projects_and_still_refuses_bad_signers_with_the_registry_down(
    mesh: SecuredMesh, databases: Databases
) -> None:
    store = await mesh.start_eventstore(databases.new("sqlite"))
    assert store.projector is not None
    # An agent whose key then leaks, and is revoked while the registry is up.
    leaked = Identity.generate()
    await mesh.enrol(closer_card("closer"), leaked)
    operators = await mesh.operator_client()
    await operators.change_status("revoke", "closer", "key leaked", mesh.operator)
    await store.projector.wait_for(await publish(mesh, mesh.ingress_identity, opened("a")), 20)

    await mesh.stop_registry()

    started = time.monotonic()
    sequences = [
        await publish(mesh, mesh.ingress_identity, opened("b")),
        # The revoked agent's stolen key closes a case.
        await publish(
            mesh,
            leaked,
            CaseClosed(case_id="a", actor="closer", payload=CaseClosedPayload(outcome="forged")),
        ),
        # A key nobody registered, in the name of one that is.
        await publish(
            mesh,
            Identity.generate(),
            CaseStepCompleted(
                case_id="b",
                actor="ingress",
                payload=CaseStepCompletedPayload(step="intake", outcome="forged"),
            ),
        ),
        await publish(mesh, mesh.ingress_identity, opened("c")),
    ]
    await store.projector.wait_for(sequences[-1], timeout=20)
    took = time.monotonic() - started
    print(f"\nregistry down: {len(sequences)} events published and projected in {took:.3f} s")
    # Without the registry a refused request is retried for seconds: this is not that.
    assert took < 2.0

    a, b, c = [await timeline(store, case_id) for case_id in "abc"]
    assert [(e.event_type, e.verified) for e in a] == [
        ("case_opened", True),
        ("case_closed", False),
    ]
    assert "revoked" in (a[1].problem or "")
    assert [(e.event_type, e.verified) for e in b] == [
        ("case_opened", True),
        ("case_step_completed", False),
    ]
    assert "not registered" in (b[1].problem or "")
    assert [(e.event_type, e.verified) for e in c] == [("case_opened", True)]
    assert store.store is not None
    detail = await asyncio.to_thread(store.store.case_detail, "a")
    assert detail is not None
    assert detail.case.status == "open"  # the forged close closed nothing


async def test_a_directory_behind_the_registry_projects_up_to_the_change_it_lacks(
    mesh: SecuredMesh, databases: Databases
) -> None:
    """A revocation is in the registry stream, the directory has not applied it, and
    the registry goes down: what was stored before the revocation is projected (and
    checked) at once; what was stored after it waits for the registry — it is never
    judged by the directory's older state — and is refused once the registry is back."""
    assert mesh.harness_nc is not None
    leaked = Identity.generate()
    await mesh.enrol(closer_card("closer"), leaked)
    keys = KeyDirectory()
    await keys.follow(mesh.harness_nc, mesh.topology, mesh.client(mesh.harness_nc))
    await keys.close()  # it stops hearing of changes; its look-ups still tell it its age

    before = [
        await publish(mesh, mesh.ingress_identity, opened("a")),
        await publish(
            mesh,
            leaked,
            CaseClosed(case_id="a", actor="closer", payload=CaseClosedPayload(outcome="ok")),
        ),
    ]
    operators = await mesh.operator_client()
    await operators.change_status("revoke", "closer", "key leaked", mesh.operator)
    after = await publish(
        mesh,
        leaked,
        CaseClosed(case_id="b", actor="closer", payload=CaseClosedPayload(outcome="forged")),
    )
    await mesh.stop_registry()

    views = ViewStore.open(databases.new("sqlite"))
    projector = Projector(mesh.harness_nc.jetstream(), mesh.topology, views, keys, batch=1)
    running = asyncio.create_task(projector.run())
    try:
        await projector.wait_for(before[-1], timeout=10)
        projected_a = await asyncio.to_thread(views.timeline, "a")
        assert [(e.event_type, e.verified) for e in projected_a] == [
            ("case_opened", True),
            ("case_closed", True),  # signed before the revocation: valid
        ]
        await asyncio.sleep(1.0)
        assert projector.position is not None
        assert projector.position.last_sequence == before[-1]  # waits, accepts nothing

        await mesh.start_registry()
        await projector.wait_for(after, timeout=20)
        [forged] = await asyncio.to_thread(views.timeline, "b")
        assert not forged.verified
        assert "revoked" in (forged.problem or "")
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        views.close()
