"""Two live event stores (`python -m services.eventstore`, each its own process, one
seed) on one stream and one PostgreSQL database: active/standby.

While signed events arrive, exactly one of them projects; the other does no projection
work. The active is killed with SIGKILL (or frozen with SIGSTOP past the lease timeout)
in the middle of the stream; the standby takes over within seconds from the committed
position, and at the end the views equal an uninterrupted rebuild of the same log,
every position move was made by one writer at a time (a trigger records which database
session made each), and the checkpoints of both terms verify under the one store key.

Needs PostgreSQL (MESH_TEST_POSTGRES_DSN): SQLite views are a local file, one
instance. Skips with the reason without it."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from contracts.codec import decode
from contracts.events.operations import LogCheckpointed
from mesh._trust.key_directory import KeyDirectory
from services.eventstore.audit import verify_bundle
from services.eventstore.export import build_bundle
from services.eventstore.projector import Projector
from services.eventstore.views import ViewStore
from tests.e2e.test_eventstore_process import (
    applied,
    children,
    publish_cases,
    start_store,
    wait_until,
)
from tests.integration.databases import Databases
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh

pytestmark = pytest.mark.e2e

ACTIVE = "active: projecting the views"
STANDING_BY = "standing by"

# Every move of the projection's position, with the database session that made it
# (the active writes on its lease's session) and when.
RECORD_MOVES = """
CREATE TABLE projection_moves (
    n bigserial PRIMARY KEY,
    last_sequence bigint NOT NULL,
    writer int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE FUNCTION record_move() RETURNS trigger AS $$
BEGIN
    INSERT INTO projection_moves (last_sequence, writer)
    VALUES (NEW.last_sequence, pg_backend_pid());
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER record_move AFTER UPDATE ON projection
    FOR EACH ROW EXECUTE FUNCTION record_move();
"""


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as secured:
        yield secured


def moves(dsn: str) -> list[tuple[int, int, float]]:
    """(last_sequence, writer session, epoch seconds), in commit order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT last_sequence, writer, extract(epoch FROM at)::float8"
            " FROM projection_moves ORDER BY n"
        ).fetchall()
    return [(int(s), int(w), float(t)) for s, w, t in rows]


async def logged(log: Path, text: str, timeout: float, after: int = 0) -> float:
    """Wait until `text` appears in the log (past byte `after`); when it did."""
    deadline = time.monotonic() + timeout
    while True:
        content = await asyncio.to_thread(log.read_bytes)
        if text.encode() in content[after:]:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {log.name} after {timeout}s:\n{content!r}")
        await asyncio.sleep(0.02)


def writers_in_turn(recorded: list[tuple[int, int, float]]) -> list[int]:
    """The writer sessions in the order they wrote, each run of one counted once."""
    turns: list[int] = []
    for _, writer, _ in recorded:
        if not turns or turns[-1] != writer:
            turns.append(writer)
    return turns


async def rebuild_equals(
    mesh: SecuredMesh, databases: Databases, view: ViewStore, total: int
) -> None:
    """The live views equal an uninterrupted projection of the same log."""
    fresh = ViewStore.open(databases.new("postgresql"))
    try:
        assert mesh.harness_nc is not None
        keys = KeyDirectory()
        keys.load(await mesh.client(mesh.harness_nc).keys())
        projector = Projector(mesh.harness_nc.jetstream(), mesh.topology, fresh, keys)
        await projector.run(stop_at=total)
        live, rebuilt = await asyncio.gather(
            asyncio.to_thread(view.snapshot), asyncio.to_thread(fresh.snapshot)
        )
    finally:
        fresh.close()
    # One row per message, each once, in order: none missing, none written twice.
    assert [row[0] for row in live["audit_events"]] == list(range(1, total + 1))
    for table in ("cases", "actions", "audit_events", "agent_activity", "projection"):
        assert live[table] == rebuilt[table], table


async def checkpoints_verify(mesh: SecuredMesh) -> list[tuple[int, float]]:
    """An export of the whole log verifies under the pinned store key; the signed
    checkpoints' sizes, in the order they were published, with when."""
    assert mesh.harness_nc is not None
    bundle = await build_bundle(mesh.harness_nc, mesh.topology, None)
    report = verify_bundle(bundle, store_key=mesh.store_identity.public_key)
    assert report.ok, report.violations
    published = []
    for message in bundle.checkpoints:
        event = decode(message.body)
        assert isinstance(event, LogCheckpointed)
        published.append((event.payload.tree_size, message.stored_at.timestamp()))
    sizes = [size for size, _ in published]
    # One signer at a time: each checkpoint covers more of the log than the last.
    assert sizes == sorted(set(sizes)), sizes
    return published


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    """Stop a store for sure: SIGTERM (SIGCONT first: it may be frozen), then SIGKILL if
    it does not go; a store that did not exit cleanly fails the test after it is gone."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        raise AssertionError(f"the store did not stop on SIGTERM\n{log.read_text()}") from None
    assert code == 0, log.read_text()


@dataclass
class Pair:
    """Two event stores on one stream and one database: the first active, the second
    standing by. Whatever the test does to them, both are gone after it."""

    dsn: str
    view: ViewStore
    logs: tuple[Path, Path]
    first: subprocess.Popen[bytes]
    second: subprocess.Popen[bytes]
    publishing: list[asyncio.Task[None]]


@asynccontextmanager
async def active_and_standby(
    mesh: SecuredMesh, databases: Databases, tmp_path: Path, **options: str
) -> AsyncIterator[Pair]:
    dsn = databases.new("postgresql")
    view = ViewStore.open(dsn)  # the tables exist before the processes start
    await asyncio.to_thread(_record_moves, dsn)
    logs = tmp_path / "first.log", tmp_path / "second.log"
    started: list[tuple[subprocess.Popen[bytes], Path]] = []
    publishing: list[asyncio.Task[None]] = []
    try:
        first = start_store(mesh, dsn, tmp_path, logs[0], **options)
        started.append((first, logs[0]))
        await logged(logs[0], ACTIVE, timeout=30)
        second = start_store(mesh, dsn, tmp_path, logs[1], **options)
        started.append((second, logs[1]))
        await logged(logs[1], STANDING_BY, timeout=30)
        yield Pair(dsn, view, logs, first, second, publishing)
    finally:
        for task in publishing:
            task.cancel()
        await asyncio.gather(*publishing, return_exceptions=True)
        problems = []
        for process, log in started:
            try:
                stop(process, log)
            except AssertionError as exc:
                problems.append(str(exc))
        view.close()
        assert not problems, "\n".join(problems)


async def test_the_standby_takes_over_from_a_killed_active_exactly_once(
    mesh: SecuredMesh, databases: Databases, tmp_path: Path
) -> None:
    options = {
        "MESH_EVENTSTORE_BATCH": "20",
        "MESH_EVENTSTORE_CHECKPOINT_EVERY": "100",
        "MESH_EVENTSTORE_STANDBY_POLL": "0.2",
    }
    async with active_and_standby(mesh, databases, tmp_path, **options) as pair:
        view, logs, first, second = pair.view, pair.logs, pair.first, pair.second
        # 400 cases, 1,200 signed events, arrive while both run.
        total = 1200
        publishing = asyncio.create_task(publish_cases(mesh, 0, 400))
        pair.publishing.append(publishing)
        await wait_until(view, 400, timeout=60, log=logs[0])
        # The standby did nothing of the projection's work meanwhile: no verifier.
        assert children(second.pid) == []
        assert children(first.pid), "the active verifies in worker processes"

        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at, killed_wall = time.monotonic(), time.time()
        at_kill = await applied(view)
        took_over = await logged(logs[1], ACTIVE, timeout=15)  # or the test fails
        await publishing
        await wait_until(view, total, timeout=60, log=logs[1])
        assert at_kill < total, "killed mid-stream"

        recorded = await asyncio.to_thread(moves, pair.dsn)
        turns = writers_in_turn(recorded)
        assert len(turns) == 2, turns  # the first, then the second, never interleaved
        sequences = [s for s, _, _ in recorded]
        assert sequences == sorted(set(sequences)), "every move goes forward, once"
        assert all(t > killed_wall - 0.01 for _, w, t in recorded if w == turns[1])
        assert sequences[-1] == total

        published = await checkpoints_verify(mesh)
        # Signed by both terms: before the kill by the first, after it by the second.
        assert any(t < killed_wall for _, t in published), published
        assert any(t > killed_wall for _, t in published), published

        await rebuild_equals(mesh, databases, view, total)
        takeover = took_over - killed_at
        print(f"\ntakeover {takeover:.2f}s after SIGKILL at sequence {at_kill} of {total}")


async def test_a_frozen_active_is_replaced_and_fenced_off(
    mesh: SecuredMesh, databases: Databases, tmp_path: Path
) -> None:
    """SIGSTOP the active for longer than the lease timeout: the database ends its
    session, the standby takes over; resumed, the old active writes nothing more and
    stands by."""
    options = {
        "MESH_EVENTSTORE_BATCH": "20",
        "MESH_EVENTSTORE_LEASE_TIMEOUT": "2",
        "MESH_EVENTSTORE_STANDBY_POLL": "0.2",
    }
    async with active_and_standby(mesh, databases, tmp_path, **options) as pair:
        view, logs, first = pair.view, pair.logs, pair.first
        total = 900
        publishing = asyncio.create_task(publish_cases(mesh, 0, 300))
        pair.publishing.append(publishing)
        await wait_until(view, 200, timeout=60, log=logs[0])
        first.send_signal(signal.SIGSTOP)
        frozen_at, frozen_wall = time.monotonic(), time.time()
        took_over = await logged(logs[1], ACTIVE, timeout=20)  # or the test fails
        await publishing
        await wait_until(view, total, timeout=60, log=logs[1])

        resumed_from = logs[0].stat().st_size
        first.send_signal(signal.SIGCONT)
        await logged(logs[0], STANDING_BY, timeout=20, after=resumed_from)
        await publish_cases(mesh, 300, 50)  # more, after the old active is back
        total += 150
        await wait_until(view, total, timeout=60, log=logs[1])

        recorded = await asyncio.to_thread(moves, pair.dsn)
        turns = writers_in_turn(recorded)
        assert len(turns) == 2, turns  # the frozen one never wrote again
        assert all(t < frozen_wall for _, w, t in recorded if w == turns[0])
        await checkpoints_verify(mesh)
        await rebuild_equals(mesh, databases, view, total)
        takeover = took_over - frozen_at
        print(f"\ntakeover {takeover:.2f}s after SIGSTOP (lease timeout 2s)")


def _record_moves(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RECORD_MOVES)
