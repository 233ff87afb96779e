"""Recovery is prompt: the event store's views follow the log again within about a second
of a restarted broker's return. The broker is killed (SIGKILL) under a running
projector and started again on the same port and data dir; a case opened after it is
back must be in the views at once. The measured times are printed (`-s` shows them):
the assertion is generous so that a loaded machine does not fail it, the figures are
what counts."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import StreamConfig

from contracts import CaseOpened, CaseOpenedPayload
from contracts.eventstore_api import CaseQuery
from mesh._broker.connection import close, connect
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.publisher import EventPublisher
from mesh._broker.stream_reader import StreamReader
from services.eventstore.app import EventStoreService
from tests.integration.databases import Databases
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh

RESTARTS = 3
# What the issue asks is one second; a loaded two-core machine gets some slack here,
# and the printed figures say how far under it the store really is.
GENEROUS = 3.0


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    running: list[SecuredMesh] = []
    try:
        async with secured_mesh(tmp_path / "mesh") as secured:
            running.append(secured)
            yield secured
    finally:
        for secured in running:  # whichever broker runs now, even if closing failed
            await asyncio.to_thread(secured.server.stop)


async def restart_broker(mesh: SecuredMesh, down: float) -> float:
    """Kill the broker, keep it down for `down` s, start it again on the same port with
    the same store; return the monotonic time it answered its health check again."""
    old = mesh.server
    assert old.pid is not None
    os.kill(old.pid, signal.SIGKILL)
    await asyncio.to_thread(old.stop)  # reaps the killed process
    await asyncio.sleep(down)
    new = EmbeddedNats(old.data_dir, port=old.port, name=old.name, extra_config=old.extra_config)
    mesh.server = new  # the one to stop at the end, even if starting it fails
    await asyncio.to_thread(new.start)
    return time.monotonic()


async def open_case(mesh: SecuredMesh, case_id: str) -> int:
    assert mesh.harness_nc is not None
    opened = CaseOpened(
        case_id=case_id,
        actor="ingress",
        payload=CaseOpenedPayload(kind="claim", source="crm", data={"amount_cents": 1}),
    )
    publisher = EventPublisher(mesh.harness_nc.jetstream(), mesh.ingress_identity, mesh.topology)
    return (await publisher.publish(opened)).sequence


async def projected(store: EventStoreService, sequence: int, timeout: float) -> None:
    assert store.projector is not None
    await store.projector.wait_for(sequence, timeout)


async def test_the_views_follow_a_restarted_broker_within_a_second(
    mesh: SecuredMesh, databases: Databases
) -> None:
    store = await mesh.start_eventstore(databases.new("sqlite"))
    await projected(store, await open_case(mesh, "before"), timeout=20)

    published: list[float] = []
    recovered: list[float] = []
    for restart in range(RESTARTS):
        await asyncio.sleep(0.3)  # the projector is idle, in a long poll, when it goes
        back = await restart_broker(mesh, down=0.5 + 0.5 * restart)
        sequence = await open_case(mesh, f"after-{restart}")
        published.append(time.monotonic() - back)
        await projected(store, sequence, timeout=20)
        recovered.append(time.monotonic() - back)

    print(
        f"\nbroker back -> new case acknowledged: {[f'{t:.3f}' for t in published]} s; "
        f"-> in the views: {[f'{t:.3f}' for t in recovered]} s "
        f"(median {statistics.median(recovered):.3f} s)"
    )
    assert max(recovered) < GENEROUS, recovered

    assert store.store is not None
    cases = {
        summary.case_id for summary in await asyncio.to_thread(store.store.list_cases, CaseQuery())
    }
    assert {"before", *(f"after-{n}" for n in range(RESTARTS))} <= cases


async def test_the_views_follow_a_broker_that_was_down_longer_than_a_pull_waits(
    mesh: SecuredMesh, databases: Databases
) -> None:
    """Down for longer than a pull waits (fetch_wait + 5 s), the projector stops
    reading and waits with backoff: it must still take up the log the moment the
    broker is back, not when its backoff says."""
    store = await mesh.start_eventstore(databases.new("sqlite"))
    await projected(store, await open_case(mesh, "before"), timeout=20)

    back = await restart_broker(mesh, down=7.0)
    sequence = await open_case(mesh, "after")
    await projected(store, sequence, timeout=20)
    recovered = time.monotonic() - back
    print(f"\nbroker back after 7 s down -> new case in the views: {recovered:.3f} s")
    assert recovered < GENEROUS


async def test_a_stream_reader_reads_on_across_a_restart_without_gap_or_repeat(
    tmp_path: Path,
) -> None:
    """The reader underneath the projector, alone: it is in a long poll when the broker
    is killed, and after the restart it reads on from where it was, on a new consumer."""
    server = EmbeddedNats(tmp_path / "nats")
    await asyncio.to_thread(server.start)
    try:
        nc = await connect(server.url, name="reader")
    except BaseException:
        await asyncio.to_thread(server.stop)
        raise
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name="RECOVERY", subjects=["recovery.>"]))
        for n in range(5):
            await js.publish("recovery.event", str(n).encode())
        async with StreamReader(nc, "RECOVERY", "recovery.>") as reader:
            read = await reader.next_batch(100, wait=0.5)
            waiting = asyncio.create_task(reader.next_batch(100, wait=5.0))
            await asyncio.sleep(0.2)  # the pull for the next message is in flight
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            await asyncio.to_thread(server.stop)
            server = EmbeddedNats(server.data_dir, port=server.port)
            await asyncio.to_thread(server.start)
            for n in range(5, 10):
                await js.publish("recovery.event", str(n).encode())
            read += await asyncio.wait_for(waiting, 10)
            while len(read) < 10:
                read += await asyncio.wait_for(reader.next_batch(100, wait=1.0), 10)
            assert reader.recreated == 1
        assert [m.metadata.sequence.stream for m in read] == list(range(1, 11))
        assert [m.data for m in read] == [str(n).encode() for n in range(10)]
    finally:
        await close(nc)
        await asyncio.to_thread(server.stop)
