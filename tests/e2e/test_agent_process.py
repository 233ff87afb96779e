"""An agent run as its own OS process with `mesh run`, killed with SIGKILL between
publishing its derived event and acking its input: nothing is lost or doubled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from contracts import CaseOpened, CaseOpenedPayload
from mesh._broker.pinned import consumer_info
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._broker.topology import Topology
from mesh._trust.identity import Identity
from mesh.testing import eventually

REPO = Path(__file__).resolve().parents[2]


class AgentProcess:
    def __init__(self, target: str, env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mesh", "run", target],
                cwd=REPO,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        self.process.terminate()
        return self.process.wait(20)


@pytest.fixture
def agent_env(nats_url: str, topology: Topology, tmp_path: Path) -> dict[str, str]:
    return {
        "MESH_NATS_URL": nats_url,
        "MESH_SUBJECT_ROOT": topology.root,
        "MESH_DATA_DIR": str(tmp_path / "agent"),
        "MESH_ACK_WAIT": "1",
        "MESH_FETCH_WAIT": "0.2",
        "MESH_TEST_MARKER": str(tmp_path / "handled-once"),
    }


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for process in started:
        if process.process.poll() is None:
            process.kill()


async def test_kill_9_between_publish_and_ack_loses_nothing_and_doubles_nothing(
    nc: Client,
    topology: Topology,
    agent_env: dict[str, str],
    tmp_path: Path,
    processes: list[AgentProcess],
) -> None:
    target = "tests.integration.agents:crash_once"
    log = tmp_path / "agent.log"
    processes.append(AgentProcess(target, agent_env, log))
    js = nc.jetstream()
    # The agent provisions the streams itself; wait for its consumers to exist.
    durables = topology.partition_durables("crash-once")
    await eventually(
        lambda: consumer_info(nc, topology.work_stream, durables[-1]),
        timeout=20,
        what="the agent's consumers",
    )
    opened = CaseOpened(
        case_id="claim-1", actor="crm", payload=CaseOpenedPayload(kind="claim", source="crm")
    )
    await EventPublisher(js, Identity.generate(), topology).publish(opened)

    marker = Path(agent_env["MESH_TEST_MARKER"])
    await eventually(marker.exists, timeout=20, what="the first handling")
    processes[0].kill()  # published its derived event, never acked the input

    history = [s.event.event_name() for s in await read_case(js, topology, "claim-1")]
    assert history == ["case_opened", "case_step_completed"]

    processes.append(AgentProcess(target, agent_env, log))

    copy = await js.get_msg(topology.work_stream, 1)  # filed under the case's partition
    durable = durables[int(copy.subject.split(".")[2])]

    async def settled() -> bool:
        info = await consumer_info(nc, topology.work_stream, durable)
        return info is not None and info["num_ack_pending"] == 0 and info["num_pending"] == 0

    await eventually(settled, timeout=30, what="the input to be redelivered and acked")
    info = await consumer_info(nc, topology.work_stream, durable)
    assert info is not None
    assert info["delivered"]["consumer_seq"] == 2  # delivered twice: before and after the kill
    assert info["ack_floor"]["stream_seq"] == 1
    events = await read_case(js, topology, "claim-1")
    derived = [s.event for s in events if s.event.event_name() == "case_step_completed"]
    assert len(derived) == 1, "the redelivered handling re-emitted a duplicate"
    assert derived[0].causation_id == opened.event_id
    assert processes[1].terminate() == 0  # SIGTERM stops it cleanly
