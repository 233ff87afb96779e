"""The registry runs active/standby: one writer at a time, chosen by a lease on the
broker, a standby that takes over when the writer dies or freezes, and a history that
stays whole whatever the lease does — a writer whose term ended writes nothing, and a
write that was already in flight is refused by the stream, not interleaved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts.events.registry import AgentStatusChangePayload, AgentSuspended
from mesh import Identity
from mesh.errors import ConcurrencyConflict
from mesh.service import stop_task
from mesh.testing import eventually
from services.registry.app import RegistryService
from services.registry.lease import NotTheWriter
from tests.integration.registry_fixtures import SCREENER_CARD, SecuredMesh, secured_mesh
from tests.integration.test_registry import claims_card

pytestmark = pytest.mark.integration


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    async with secured_mesh(tmp_path) as secured:
        yield secured


async def _freeze(service: RegistryService) -> None:
    """What SIGSTOP does to a registry: it renews no more and answers nothing (its
    connection stays up)."""
    await stop_task(service._leading)
    assert service.server is not None
    await service.server.stop()


async def _kill(mesh: SecuredMesh) -> RegistryService:
    """The writer dies without a word: no renewals, no replies, its lease left to
    expire on the broker."""
    dead = mesh.service
    assert dead is not None
    assert mesh.registry_nc is not None
    await stop_task(dead._leading)
    await mesh.registry_nc.close()
    mesh.service, mesh.registry_nc = None, None  # gone: nothing of it to stop
    return dead


async def test_a_standby_serves_nothing_and_takes_over_from_a_dead_writer(
    mesh: SecuredMesh,
) -> None:
    standby, _ = await mesh.start_standby_registry()
    assert mesh.service is not None
    assert mesh.service.active
    assert not standby.active
    assert standby.handlers is None
    await mesh.ensure_screener()  # written by the first writer
    assert mesh.harness_nc is not None
    client = mesh.client(mesh.harness_nc)

    await _kill(mesh)
    await eventually(lambda: standby.active, what="the standby taking over", timeout=10)
    # It rebuilt the state from the history after the lease became its own: what the
    # dead writer registered is there, and it answers for it.
    record = await client.get(SCREENER_CARD.agent_id)
    assert record.card.agent_id == SCREENER_CARD.agent_id
    assert record.status == "active"
    # The new writer writes: a registration, into the authorization it regenerates
    # from the whole state (the dead writer's agent keeps its permissions).
    await mesh.enrol(claims_card("fraud"), Identity.generate())
    auth = mesh.registry_settings.auth_file
    assert auth is not None
    text = auth.read_text()
    assert "fraud" in text
    assert SCREENER_CARD.agent_id in text


async def test_a_writer_whose_term_ended_while_frozen_writes_nothing_when_it_wakes(
    mesh: SecuredMesh,
) -> None:
    frozen = mesh.service
    assert frozen is not None
    assert frozen.handlers is not None
    await mesh.ensure_screener()
    standby, _ = await mesh.start_standby_registry()
    await _freeze(frozen)
    await eventually(lambda: standby.active, what="the standby taking over", timeout=10)
    suspended = AgentSuspended(
        actor="registry",
        payload=AgentStatusChangePayload(agent_id="ghost", reason="woke up", by="operator"),
    )
    with pytest.raises(NotTheWriter):
        await frozen.store.append(suspended)
    assert standby.handlers is not None
    record = standby.handlers.state.records[SCREENER_CARD.agent_id]
    with pytest.raises(NotTheWriter):
        await frozen.store.write_view(record)


async def test_a_write_in_flight_across_a_hand_over_is_refused_by_the_stream(
    mesh: SecuredMesh,
) -> None:
    """Two writers at once (the old one's request sent just before its term ended):
    the stream takes the first and refuses the other, even about another agent — the
    second decision was taken on a state that lacks the first."""
    old = mesh.service
    assert old is not None
    standby, _ = await mesh.start_standby_registry()
    await _freeze(old)
    await eventually(lambda: standby.active, what="the standby taking over", timeout=10)
    await mesh.ensure_screener()  # the new writer writes about the screener
    old.store.fence = lambda: None  # its lease check already passed, before the freeze
    in_flight = AgentSuspended(
        actor="registry",
        payload=AgentStatusChangePayload(agent_id="ghost", reason="in flight", by="operator"),
    )
    with pytest.raises(ConcurrencyConflict):
        await old.store.append(in_flight)


async def test_a_clean_stop_hands_over_at_once(mesh: SecuredMesh) -> None:
    standby, _ = await mesh.start_standby_registry()
    await mesh.stop_registry()  # releases its lease: no timeout to wait for
    await eventually(lambda: standby.active, what="the standby taking over", timeout=1.5)
