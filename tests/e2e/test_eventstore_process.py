"""`python -m services.eventstore` as its own process, killed with SIGKILL while it
projects, three times: once restarted it ends with views exactly equal to an
uninterrupted rebuild of the same log — no event lost, none applied twice — on SQLite
and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts import (
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.envelope import Event
from mesh._broker.publisher import EventPublisher
from mesh._trust.key_directory import KeyDirectory
from mesh.testing import eventually
from services.eventstore.projector import Projector
from services.eventstore.views import ViewStore
from tests.integration.databases import Databases
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as secured:
        yield secured


def claim_events(case_id: str) -> list[Event]:
    opened = CaseOpened(
        case_id=case_id,
        actor="harness",
        payload=CaseOpenedPayload(kind="claim", source="crm", data={"amount": 100}),
    )
    step = CaseStepCompleted(
        case_id=case_id,
        actor="harness",
        causation_id=opened.event_id,
        payload=CaseStepCompletedPayload(step="intake", outcome="complete"),
    )
    closed = CaseClosed(
        case_id=case_id,
        actor="harness",
        causation_id=step.event_id,
        payload=CaseClosedPayload(outcome="paid"),
    )
    return [opened, step, closed]


async def publish_cases(mesh: SecuredMesh, first: int, count: int) -> None:
    assert mesh.harness_nc is not None
    publisher = EventPublisher(mesh.harness_nc.jetstream(), mesh.harness, mesh.topology)
    for start in range(first, first + count, 50):
        cases = [claim_events(f"c{n}") for n in range(start, min(start + 50, first + count))]
        for step in range(3):  # a case's events in order; cases concurrently
            await asyncio.gather(*(publisher.publish(events[step]) for events in cases))


def start_store(
    mesh: SecuredMesh, dsn: str, tmp_path: Path, log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    """The event store as its own process (`extra`: more of its environment). Every
    process started here shares one seed: replicas of one service, one signer."""
    seed = tmp_path / "eventstore.nk"
    if not seed.exists():
        mesh.store_identity.save(seed)
    env = {
        **os.environ,
        "MESH_NATS_URL": mesh.url,
        "MESH_SUBJECT_ROOT": mesh.topology.root,
        "MESH_DATA_DIR": str(tmp_path / "data"),
        "MESH_NKEY_AUTH": "1",
        "MESH_EVENTSTORE_SEED_FILE": str(seed),
        "MESH_EVENTSTORE_DSN": dsn,
        "MESH_EVENTSTORE_BATCH": "25",
        "MESH_EVENTSTORE_FETCH_WAIT": "0.1",
        **extra,
    }
    with log.open("ab") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "services.eventstore"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def applied(store: ViewStore) -> int:
    return (await asyncio.to_thread(store.position)).last_sequence


async def wait_until(store: ViewStore, done: int, timeout: float, log: Path) -> int:
    deadline = time.monotonic() + timeout
    while (position := await applied(store)) < done:
        if time.monotonic() > deadline:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"projection stuck at {position} of {done}:\n{output}")
        await asyncio.sleep(0.005)
    return position


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_kill_9_mid_batch_loses_nothing_and_doubles_nothing(
    mesh: SecuredMesh, databases: Databases, tmp_path: Path, kind: str
) -> None:
    dsn = databases.new(kind)
    view = ViewStore.open(dsn)  # the tables exist before the process starts
    log = tmp_path / "eventstore.log"
    await publish_cases(mesh, 0, 600)  # 1,800 events waiting
    total = 1800
    kills = []
    try:
        for round_ in range(3):
            process = start_store(mesh, dsn, tmp_path, log)
            # Kill it while it works through the backlog, at varying depths into it.
            before = await applied(view)
            await wait_until(view, before + (1, 137, 411)[round_], timeout=30, log=log)
            workers = children(process.pid)  # its signature verifiers
            assert workers, "the store verifies signatures in worker processes"
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            kills.append(await applied(view))
            # Nothing of it stays behind, orphaned.
            await eventually(
                lambda: not any(alive(pid) for pid in workers),  # noqa: B023
                what="the killed store's workers to exit",
            )
            # More of the log arrives while the store is down.
            await publish_cases(mesh, 600 + round_ * 100, 100)
            total += 300
        # Each kill left work behind: the restart had a backlog to finish.
        assert kills == sorted(kills), kills
        assert all(k < total - 300 for k in kills), kills

        process = start_store(mesh, dsn, tmp_path, log)
        try:
            await wait_until(view, total, timeout=60, log=log)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0, log.read_text()

        # An uninterrupted projection of the same log, into a fresh database.
        uninterrupted = ViewStore.open(databases.new(kind))
        try:
            assert mesh.harness_nc is not None
            keys = KeyDirectory()
            keys.load(await mesh.client(mesh.harness_nc).keys())
            projector = Projector(mesh.harness_nc.jetstream(), mesh.topology, uninterrupted, keys)
            await projector.run(stop_at=total)
            live, fresh = await asyncio.gather(
                asyncio.to_thread(view.snapshot), asyncio.to_thread(uninterrupted.snapshot)
            )
        finally:
            uninterrupted.close()
        assert len(live["audit_events"]) == total
        assert [row[0] for row in live["audit_events"]] == list(range(1, total + 1))
        assert len(live["cases"]) == 900
        assert live == fresh
    finally:
        view.close()
