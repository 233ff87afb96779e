"""The mesh on a real 3-node JetStream cluster, and the production cluster configs.

- The committed `deploy/cluster/nats-*.conf` are exactly what the code renders (the
  loopback cluster and the single embedded server come from the same function), and
  the real nats-server accepts each (`nats-server -t`).
- R3 streams keep every acknowledged event, once, through a SIGKILLed follower and
  then a SIGKILLed stream leader, while a client given every URL keeps publishing and
  reading; each killed member comes back and catches up, and every member then holds
  the same log.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext

from contracts import CaseClosed, CaseClosedPayload, CaseOpened, CaseOpenedPayload
from contracts.cards import AgentCard
from contracts.envelope import Event
from mesh._broker.cluster import NatsCluster, production_config
from mesh._broker.connection import client_of, close, connect
from mesh._broker.embedded import EmbeddedNats, find_binary
from mesh._broker.pinned import consumer_info, ensure_pinned_consumer
from mesh._broker.provisioning import Outcome, ensure_key_value, ensure_stream
from mesh._broker.publisher import EventPublisher, Receipt
from mesh._broker.reading import read_case, read_subject
from mesh._broker.topology import Topology
from mesh._runtime.durables import partition_durables
from mesh._trust.identity import Identity
from mesh.errors import EmbeddedServerError, PublishFailed
from mesh.settings import MeshSettings
from mesh.testing import eventually, unique_root
from tests.integration.cluster_fixtures import cluster

DEPLOY_CLUSTER = Path(__file__).resolve().parents[2] / "deploy" / "cluster"
COUNTER = AgentCard(
    agent_id="counter",
    name="Counter",
    version="1",
    owner="claims-team",
    purpose="counts opened cases",
    consumes=["case_opened"],
)


def test_deploy_holds_one_config_per_member() -> None:
    assert sorted(path.name for path in DEPLOY_CLUSTER.glob("*.conf")) == [
        "nats-1.conf",
        "nats-2.conf",
        "nats-3.conf",
    ]


@pytest.mark.parametrize("node", [1, 2, 3])
def test_the_committed_cluster_configs_are_what_the_code_renders(node: int, tmp_path: Path) -> None:
    rendered = production_config(node)
    assert (DEPLOY_CLUSTER / f"nats-{node}.conf").read_text() == rendered, (
        "deploy/cluster drifted from the code: run `python -m mesh._broker.cluster deploy/cluster`"
    )
    assert "sync_interval: always" in rendered
    # nats-server -t parses the config (with an authorization block to include) and
    # exits; the container paths are moved into the temp dir.
    (tmp_path / "auth.conf").write_text("authorization { users: [{user: a, password: b}] }\n")
    local = rendered.replace('"/data"', f'"{tmp_path / "data"}"').replace(
        '"/config/', f'"{tmp_path}/'
    )
    (tmp_path / "nats.conf").write_text(local)
    checked = subprocess.run(
        [str(find_binary(None)), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_member_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    broken = NatsCluster(tmp_path, size=3, extra_config='include "missing.conf"')
    with pytest.raises(EmbeddedServerError, match="exited") as caught:
        broken.start()
    assert "missing.conf" in caught.value.log_tail
    assert not any(node.running for node in broken.nodes)


class Writer:
    """Opens and closes cases, one event at a time, retrying each event (same event id:
    the stream de-duplicates) until it is acknowledged, as a real publisher would."""

    def __init__(self, publisher: EventPublisher) -> None:
        self.publisher = publisher
        self.acknowledged: dict[str, Receipt] = {}  # event id -> its ack
        self.cases: dict[str, list[str]] = {}  # case id -> its event ids, in order
        self.retries = 0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        number = 0
        while not self._stopping.is_set():
            case_id = f"case-{number}"
            self.cases[case_id] = []
            opened = CaseOpened(
                case_id=case_id,
                actor="ingress",
                payload=CaseOpenedPayload(kind="claim", source="crm"),
            )
            closed = CaseClosed(
                case_id=case_id, actor="adjudicator", payload=CaseClosedPayload(outcome="paid")
            )
            for event in (opened, closed):
                self.acknowledged[event.event_id] = await self._until_acknowledged(event)
                self.cases[case_id].append(event.event_id)
            number += 1

    async def _until_acknowledged(self, event: Event) -> Receipt:
        deadline = time.monotonic() + 30.0
        while True:
            try:
                return await self.publisher.publish(event)
            except PublishFailed:
                # No leader yet, or the client is moving to another member.
                if time.monotonic() > deadline:
                    raise
                self.retries += 1
                await asyncio.sleep(0.05)

    async def more(self, count: int) -> None:
        """Until `count` more events than now are acknowledged."""
        target = len(self.acknowledged) + count
        await eventually(lambda: len(self.acknowledged) >= target, timeout=30, what="publishing")

    def stop(self) -> None:
        self._stopping.set()


async def stream_leader(js: JetStreamContext, stream: str) -> str:
    async def leader() -> str | None:
        info = await js.stream_info(stream)
        return info.cluster.leader if info.cluster else None

    return await eventually(leader, timeout=30, what=f"a leader for {stream}")


async def replicas_current(js: JetStreamContext, stream: str) -> None:
    async def current() -> bool:
        info = await js.stream_info(stream)
        replicas = (info.cluster.replicas or []) if info.cluster else []
        return len(replicas) == 2 and all(r.current and not r.offline for r in replicas)

    await eventually(current, timeout=30, what=f"every replica of {stream} current")


def stored_on(member: EmbeddedNats, stream: str) -> dict[str, Any]:
    """The stream's state in this member's own store (its monitor, not the leader)."""
    url = f"http://127.0.0.1:{member.monitor_port}/jsz?accounts=true&streams=true"
    with urllib.request.urlopen(url, timeout=5) as response:
        jsz = json.load(response)
    for account in jsz.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                state: dict[str, Any] = detail["state"]
                return state
    raise AssertionError(f"{member.name} holds no stream {stream}")


def member_of(cluster: NatsCluster, nc: Client) -> int:
    assert nc.connected_url is not None
    return next(i for i, n in enumerate(cluster.nodes) if n.port == nc.connected_url.port)


async def provision_r3(js: JetStreamContext, topology: Topology) -> None:
    """Streams, a durable and a KV bucket at R3; provisioning them again finds no drift
    (the server keeps the declared replicas), and the durable follows its stream's."""
    for config in topology.streams():
        assert (await ensure_stream(js, config)).outcome is Outcome.CREATED
    for config in topology.streams():
        assert (await ensure_stream(js, config, strict=True)).outcome is Outcome.UNCHANGED
    info = await js.stream_info(topology.cases_stream)
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert len(info.cluster.replicas or []) == 2

    # An agent's partition consumer is replicated with its stream, and provisioning it
    # again finds it as declared.
    durable = partition_durables(COUNTER, topology, MeshSettings())[0]
    nc = client_of(js)
    await ensure_pinned_consumer(nc, durable)
    report = await ensure_pinned_consumer(nc, durable)
    assert report.outcome is Outcome.UNCHANGED
    consumer = await consumer_info(nc, topology.work_stream, durable.name)
    assert consumer is not None
    assert len(consumer["cluster"].get("replicas") or []) == 2

    bucket = KeyValueConfig(
        bucket=f"{topology.root}_cards",
        history=1,
        storage=StorageType.FILE,
        replicas=topology.replicas,
    )
    assert (await ensure_key_value(js, bucket)).outcome is Outcome.CREATED
    assert (await ensure_key_value(js, bucket, strict=True)).outcome is Outcome.UNCHANGED
    assert (await js.stream_info(f"KV_{bucket.bucket}")).config.num_replicas == 3


async def test_r3_streams_keep_every_acknowledged_event_through_member_crashes(
    cluster: NatsCluster,
) -> None:
    topology = Topology(unique_root(), replicas=3)
    stream = topology.cases_stream
    nc = await connect(cluster.urls, name="pytest-cluster")
    writing: asyncio.Task[None] | None = None
    try:
        js = nc.jetstream()
        await provision_r3(js, topology)
        writer = Writer(EventPublisher(js, Identity.generate(), topology, timeout=2.0, nc=nc))
        writing = asyncio.create_task(writer.run())
        await writer.more(20)

        # A follower dies: the member this client is on if it is one, so the client
        # must move. Publishing goes on, and so does reading.
        leader = cluster.index_of(await stream_leader(js, stream))
        on = member_of(cluster, nc)
        follower = on if on != leader else (leader + 1) % 3
        cluster.kill(follower)
        await writer.more(30)
        case_id, event_ids = next(iter(writer.cases.items()))
        assert [s.event.event_id for s in await read_case(js, topology, case_id)] == event_ids
        await asyncio.to_thread(cluster.restart, follower)
        await replicas_current(js, stream)

        # The stream's leader dies: another is elected and takes the writes.
        old_leader = await stream_leader(js, stream)
        cluster.kill(cluster.index_of(old_leader))

        async def new_leader() -> bool:
            return await stream_leader(js, stream) != old_leader

        await eventually(new_leader, timeout=30, what="a new stream leader")
        await writer.more(30)
        await asyncio.to_thread(cluster.restart, cluster.index_of(old_leader))
        await writer.more(10)
        writer.stop()
        await writing
        await replicas_current(js, stream)
        assert nc.stats["reconnects"] >= 1  # the client failed over at least once
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            await asyncio.gather(writing, return_exceptions=True)
        await close(nc)

    # Every acknowledged event is in the log once, at the sequence it was acknowledged
    # with, and every member holds and serves the same log.
    wanted = {event_id: receipt.sequence for event_id, receipt in writer.acknowledged.items()}
    assert len(set(wanted.values())) == len(wanted)
    for member in cluster.nodes:
        state = await asyncio.to_thread(stored_on, member, stream)
        assert (state["messages"], state["last_seq"]) == (len(wanted), max(wanted.values()))
        only = await connect(member.url, name=f"pytest-{member.name}", reconnect=False)
        try:
            assert member_of(cluster, only) == cluster.nodes.index(member)
            mjs = only.jetstream()
            stored = await read_subject(mjs, stream, topology.subjects.family_all("case"))
            assert {s.event.event_id: s.sequence for s in stored} == wanted
            assert len(stored) == len(wanted)
            for case_id, event_ids in writer.cases.items():
                history = await read_case(mjs, topology, case_id)
                assert [s.event.event_id for s in history] == event_ids
        finally:
            await close(only)


__all__ = ["cluster"]
