"""Replicas of one agent as OS processes (`mesh run`), one killed with SIGKILL while
cases flow: its partitions move to the others, nothing is lost, and no case is ever
handled by two replicas at once or out of stream order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from mesh._broker.connection import client_of
from mesh._broker.pinned import consumer_info
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_subject
from mesh._broker.topology import Topology
from mesh._trust.identity import Identity
from mesh.testing import eventually
from tests.e2e.test_agent_process import AgentProcess
from tests.integration.order_journal import publish_steps, read_journal

CASES = [f"case-{n:02d}" for n in range(12)]
STEPS = 40


@pytest.fixture
def replicas() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for process in started:
        if process.process.poll() is None:
            process.kill()


def _env(
    nats_url: str, topology: Topology, tmp_path: Path, name: str, replica: str
) -> dict[str, str]:
    return {
        "MESH_NATS_URL": nats_url,
        "MESH_SUBJECT_ROOT": topology.root,
        # One data dir for all: the replicas share the agent's key, made by the first.
        "MESH_DATA_DIR": str(tmp_path / "agent"),
        "MESH_ACK_WAIT": "2",
        "MESH_FETCH_WAIT": "0.2",
        "MESH_PIN_TIMEOUT": "1",
        "MESH_REPLICA": replica,
        "MESH_ORDER_JOURNAL": str(tmp_path / "journal"),
        "MESH_ORDER_NAME": name,
    }


async def test_kill_9_of_a_replica_moves_its_partitions_and_keeps_every_case_in_order(
    nc: Client, topology: Topology, tmp_path: Path, replicas: list[AgentProcess], nats_url: str
) -> None:
    journal = tmp_path / "journal"
    for index in range(2):
        name = f"r{index}"
        env = _env(nats_url, topology, tmp_path, name, f"{index}/2")
        replicas.append(AgentProcess("tests.e2e.orderly_agent", env, tmp_path / f"{name}.log"))
    js = nc.jetstream()
    publisher = EventPublisher(js, Identity.generate(), topology)

    await eventually(lambda: js.stream_info(topology.work_stream), timeout=30, what="the agents up")
    publishing = asyncio.create_task(publish_steps(publisher, CASES, STEPS, pace=0.2))
    try:
        await eventually(
            lambda: journal.exists() and len(read_journal(journal).by_replica) == 2,
            timeout=40,
            what="both replicas at work",
        )
        replicas[0].kill()  # whatever it was handling, it never finishes
        replacement = _env(nats_url, topology, tmp_path, "r2", "0/2")
        replicas.append(AgentProcess("tests.e2e.orderly_agent", replacement, tmp_path / "r2.log"))
        await publishing
    finally:
        publishing.cancel()

    def all_handled() -> bool:
        verdict = read_journal(journal, dead={"r0"})
        return all(len(verdict.handled.get(case, [])) == STEPS for case in CASES)

    await eventually(all_handled, timeout=60, what="every step handled after the kill")
    verdict = read_journal(journal, dead={"r0"})
    assert verdict.violations == []
    assert {"r0", "r1", "r2"} <= set(verdict.by_replica)  # the replacement took work too
    nc_ = client_of(js)
    for durable in topology.partition_durables("orderly"):
        info = await eventually(
            lambda d=durable: consumer_info(nc_, topology.work_stream, d), what=durable
        )
        assert info["num_ack_pending"] == 0
    assert (
        await read_subject(js, topology.dead_letter_stream, topology.subjects.dead_letter_all())
        == []
    )
