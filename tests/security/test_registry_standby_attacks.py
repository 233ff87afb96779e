"""Attacks on the registry's active/standby (b5bc3f1) and on consumers that ack again what
they settled (2b90bfa), with real credentials against a real nats-server enforcing the
registry's generated authorization (`secured_mesh`: one server, its own root, per test).

The writer lease is the key `writer` in the KV bucket `<ROOT>_REGISTRY_WRITER` (stream
`KV_<ROOT>_REGISTRY_WRITER`); every append to the registry history is conditional on the
newest sequence of `<root>.registry.>`.

Refused (who refuses): any direct touch of the lease, its stream or the registry's other
buckets by an agent, an outside system, the anonymous onboarding user, the reader or the
ingress (the broker); a request whose reply subject names the lease, a bucket or the
history (the registry answers only `_INBOX.`); a registry event replayed into the history
through a direct get (the stream: its stored expected-sequence header no longer holds); a
fork of the history while two registries serve at once (the stream's condition); an ack,
nak or term on another agent's consumer, a publish into or a subscription on its inbox
(the broker); an ack for a sequence not yet delivered (the server ignores it).

Got through, and mended (now passing tests):
- nats-server does not check a request's reply subject against the requester's publish
  permissions, and JetStream answers into the account. An enrolled agent's `$JS.API.INFO`
  with `reply=$KV.<ROOT>_REGISTRY_WRITER.writer` overwrote the lease and the writer stood
  down: a lease is now a value signed by a registry key, and the writer renews over one
  that is not (a standby takes it). With `reply=$KV.<ROOT>_LIVENESS.<any>` it left a
  heartbeat no registry could parse, and every take-over failed: it is now passed over.
- A registry woken from a freeze after its term ended answered the requests it had
  buffered from its stale state: reads are now fenced by the lease too.
- An agent that reads the server's monitoring endpoint learns another agent's pull inbox
  and has its own consumer deliver into it: the victim took a foreign consumer's delivery,
  dead-lettered it and acked its own delivery of that event unhandled. A consumer now
  takes only what its own consumer delivered (the ack subject names it).

Got through, kept as strict xfails that assert the secure behaviour (the fix is account
isolation: the streams and buckets in an account of their own, JetStream reached through
service imports, whose answers stay in the asker's account):
- With `reply=<root>.registry.<any>.<any>` junk lands in the append-only history:
  consumers that check signers stall (the live registry's answers lag the stream's
  newest), and a flood denies every registration.
- Compromised services (the lesser threat): policy (`$KV.>`) deletes the lease key and the
  reader (a direct get of an agent's event carrying `KV-Operation: DEL`) tombstones it, so
  two registries serve at once; the event store (`$JS.API.>`) makes the lease immortal
  and deletes the registry's history stream; policy (`$JS.ACK.>`) acks an agent's
  in-flight message, so its retry never comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from contracts import (
    CaseEscalated,
    CaseEscalatedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
)
from contracts.cards import AgentCard
from contracts.registry_api import RegistryQuery, RegistryReply
from mesh import HandlerContext
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._sdk.agent import Agent
from mesh._trust.identity import Identity
from mesh._trust.principals import StaticPrincipal, load_principals, write_principals
from mesh.testing import eventually
from services.registry.app import RegistryService
from services.registry.lease import WRITER_KEY, lease_bucket
from services.registry.store import liveness_bucket, view_bucket
from tests.integration.agents import complete_step
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh, secured_mesh
from tests.security.kit import Connection, open_connection, signed, store
from tests.security.kit import pull as raw_pull

pytestmark = [pytest.mark.integration, pytest.mark.security]

REPO = Path(__file__).resolve().parents[2]
PIN_GROUP = "mesh"
EXPECTED = "Nats-Expected-Last-Subject-Sequence"


# ---------------------------------------------------------------------------- harness


def claims_card(
    agent_id: str,
    consumes: tuple[str, ...] = ("case_opened",),
    produces: tuple[str, ...] = ("case_step_completed",),
) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=f"{agent_id} (enrolled by an operator, later compromised)",
        version="1",
        owner=KNOWN_OWNER,
        purpose="an agent of the mesh like any other",
        consumes=list(consumes),
        produces=list(produces),
    )


def claims_agent(agent_id: str = "intake") -> Agent:
    agent = Agent(claims_card(agent_id))
    agent.on(CaseOpened)(complete_step)
    return agent


async def open_case(mesh: SecuredMesh, case_id: str) -> CaseOpened:
    """A case opened by the harness (a service principal), as the ingress would."""
    assert mesh.harness_nc is not None
    opened = CaseOpened(
        case_id=case_id, actor="harness", payload=CaseOpenedPayload(kind="claim", source="crm")
    )
    await EventPublisher(mesh.harness_nc.jetstream(), mesh.harness, mesh.topology).publish(opened)
    return opened


@dataclass
class Attack:
    """One secured mesh (its registry active), and the attacker's connections."""

    mesh: SecuredMesh
    connections: list[Connection] = field(default_factory=list)

    @property
    def root(self) -> str:
        return self.mesh.topology.root

    @property
    def lease_bucket(self) -> str:
        return lease_bucket(self.mesh.topology)

    @property
    def active(self) -> RegistryService:
        assert self.mesh.service is not None
        return self.mesh.service

    async def connect(self, name: str, identity: Identity | None) -> Connection:
        """As `name` with `identity` (None: no credentials, the onboarding user)."""
        connection = await open_connection(self.mesh.url, name, identity)
        self.connections.append(connection)
        return connection

    async def agent(self, agent_id: str, **changes: Any) -> Connection:
        """An agent an operator enrolled (later compromised), on its own key."""
        identity = Identity.generate()
        await self.mesh.enrol(claims_card(agent_id, **changes), identity)
        return await self.connect(agent_id, identity)

    async def external(self, name: str = "crm") -> Connection:
        """An outside system, added as `mesh principals add` does (file, then SIGHUP)."""
        principals_file = self.mesh.registry_settings.principals_file
        assert principals_file is not None
        identity = Identity.generate()
        principals = load_principals(principals_file)
        principals.append(StaticPrincipal(name, identity.public_key, "external"))
        write_principals(principals_file, principals)
        await self.active.reload_principals()
        return await self.connect(name, identity)

    async def lease(self) -> KeyValue.Entry:
        assert self.mesh.harness_nc is not None
        kv = await self.mesh.harness_nc.jetstream().key_value(self.lease_bucket)
        return await kv.get(WRITER_KEY)

    async def registry_last(self) -> int:
        assert self.mesh.harness_nc is not None
        info = await self.mesh.harness_nc.jetstream().stream_info(
            self.mesh.topology.registry_stream
        )
        return int(info.state.last_seq)

    async def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(Exception):
                await connection.nc.close()


@pytest.fixture
async def attack(tmp_path: Path) -> AsyncIterator[Attack]:
    async with secured_mesh(tmp_path) as mesh:
        attacked = Attack(mesh)
        try:
            yield attacked
        finally:
            await attacked.close()


async def until(
    check: Callable[[], Awaitable[bool | None]],
    what: str,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> None:
    """`eventually` for an async check."""
    done: bool = await eventually(check, timeout=timeout, interval=interval, what=what)
    assert done


async def settled_in(check: Callable[[], Awaitable[bool]], seconds: float = 2.0) -> None:
    """Give what an attack sent time to land (a JetStream answer is queued by the
    server), without failing when it does not: a mended mesh stores nothing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.02)


async def refused_subscription(who: Connection, subject: str) -> None:
    await who.nc.subscribe(subject)
    await who.nc.flush()
    await eventually(
        lambda: who.refused(subject, "subscription"),
        timeout=10,
        what=f"the broker refusing a subscription to {subject}",
    )


async def held_for(attack: Attack, seconds: float) -> bool:
    """Whether the registry that was active stays active, holding an unchanged lease
    value, for `seconds`."""
    holder = attack.active.lease.holder
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not attack.active.active or (await attack.lease()).value != holder:
            return False
        await asyncio.sleep(0.05)
    return True


async def both_serving(first: RegistryService, second: RegistryService, seconds: float) -> bool:
    """Whether the two registries are ever active at the same moment within `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if first.active and second.active:
            return True
        await asyncio.sleep(0.005)
    return False


async def overlap_after(
    attack: Attack,
    standby: RegistryService,
    strike: Callable[[], Awaitable[object]],
    attempts: int = 3,
) -> bool:
    """Strike right after a renewal (the writer then notices last), up to `attempts`
    times, until the two registries serve at the same moment; whether they did."""
    registries = (attack.active, standby)
    for _ in range(attempts):
        await eventually(
            lambda: registries[0].active or registries[1].active, timeout=10, what="a writer"
        )
        await just_renewed(attack)
        await strike()
        if await both_serving(*registries, 1.0):
            return True
    return False


async def just_renewed(attack: Attack) -> None:
    """Until the writer has just renewed its lease: its next renewal is a quarter of the
    lease timeout away, the longest it can take to notice what happens now."""
    revision = (await attack.lease()).revision

    async def renewed() -> bool | None:
        return (await attack.lease()).revision != revision or None

    await until(renewed, "a renewal of the lease", timeout=5, interval=0.005)


def partition_of(case_id: str, partitions: int) -> int:
    """The server's `partition(n, 1)`: FNV-1a (32 bit) of the case id, modulo n."""
    digest = 0x811C9DC5
    for byte in case_id.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % partitions


def case_in_partition(partition: int, partitions: int) -> str:
    while True:
        case_id = f"c-{uuid.uuid4().hex[:10]}"
        if partition_of(case_id, partitions) == partition:
            return case_id


async def pull(
    who: Connection, stream: str, durable: str, request: dict[str, Any], wait: float = 2.0
) -> list[Msg]:
    """One pull in the pin group, waiting up to `wait`: the messages it delivered."""
    messages, _ = await raw_pull(
        who,
        stream,
        durable,
        {"group": PIN_GROUP, "expires": int(wait * 1e9), **request},
        wait=wait + 0.5,
    )
    return messages


async def stepped(attack: Attack, case_id: str) -> bool | None:
    assert attack.mesh.harness_nc is not None
    history = await read_case(attack.mesh.harness_nc.jetstream(), attack.mesh.topology, case_id)
    return any(isinstance(s.event, CaseStepCompleted) for s in history) or None


# ---------------------------------------------------------------------------- refused


async def test_only_the_registry_touches_its_writer_lease_and_buckets(attack: Attack) -> None:
    """An enrolled agent, an outside system, the anonymous onboarding user, the reader and
    the ingress each: put the lease key, a heartbeat and a view entry; inspect, read
    (message get, direct get), watch (consumer create), update, purge, delete a message of
    and delete the lease's stream; purge and delete the registry's history stream; and
    subscribe to the lease's subjects. The broker refuses every one; the writer keeps its
    lease and serves."""
    mesh = attack.mesh
    bucket = attack.lease_bucket
    kv_stream = f"KV_{bucket}"
    history = mesh.topology.registry_stream
    before = await attack.lease()
    attempts: list[tuple[str, dict[str, Any]]] = [
        (f"$KV.{bucket}.{WRITER_KEY}", {}),
        (f"$KV.{liveness_bucket(mesh.topology)}.spy", {}),
        (f"$KV.{view_bucket(mesh.topology)}.spy", {}),
        (f"$JS.API.STREAM.INFO.{kv_stream}", {}),
        (f"$JS.API.STREAM.MSG.GET.{kv_stream}", {"last_by_subj": f"$KV.{bucket}.{WRITER_KEY}"}),
        (f"$JS.API.DIRECT.GET.{kv_stream}", {"last_by_subj": f"$KV.{bucket}.{WRITER_KEY}"}),
        (
            f"$JS.API.CONSUMER.CREATE.{kv_stream}",
            {"stream_name": kv_stream, "config": {"ack_policy": "none"}},
        ),
        (f"$JS.API.STREAM.UPDATE.{kv_stream}", {"name": kv_stream, "max_age": 0}),
        (f"$JS.API.STREAM.PURGE.{kv_stream}", {}),
        (f"$JS.API.STREAM.MSG.DELETE.{kv_stream}", {"seq": before.revision}),
        (f"$JS.API.STREAM.DELETE.{kv_stream}", {}),
        (f"$JS.API.STREAM.PURGE.{history}", {}),
        (f"$JS.API.STREAM.DELETE.{history}", {}),
    ]
    attackers = [
        await attack.agent("spy"),
        await attack.external("crm"),
        await attack.connect("onboarding", None),
        await attack.connect("reader", mesh.reader_identity),
        await attack.connect("ingress", mesh.ingress_identity),
    ]
    for attacker in attackers:
        for subject, request in attempts:
            await attacker.refused_publish(subject, json.dumps(request).encode())
        await refused_subscription(attacker, f"$KV.{bucket}.>")

    after = await attack.lease()
    assert after.value == before.value == attack.active.lease.holder
    assert attack.active.active
    assert mesh.harness_nc is not None
    await mesh.harness_nc.jetstream().stream_info(kv_stream)  # still there


async def test_no_request_gets_the_registry_to_write_its_lease_or_history(
    attack: Attack,
) -> None:
    """The registry itself may write `$KV.>` and the history. The anonymous user asks it
    to register, an agent asks it (under its own name) for its record and sends a
    heartbeat, each with the reply subject set to the lease key, a liveness key, a view
    key and a subject of the history. The registry answers only on `_INBOX.`: nothing
    lands, and the writer keeps its lease."""
    mesh = attack.mesh
    s = mesh.topology.subjects
    targets = [
        f"$KV.{attack.lease_bucket}.{WRITER_KEY}",
        f"$KV.{liveness_bucket(mesh.topology)}.spy",
        f"$KV.{view_bucket(mesh.topology)}.ghost",
        f"{attack.root}.registry.ghost.agent_registered",
    ]
    anonymous = await attack.connect("onboarding", None)
    spy = await attack.agent("spy")
    assert spy.identity is not None
    before, history = await attack.lease(), await attack.registry_last()
    for target in targets:
        await anonymous.send(s.service("registry", "register"), b"{}", reply=target)
        query = msgspec.json.encode(RegistryQuery(agent_id="spy"))
        await spy.send(s.service_as("registry", "get", "spy"), query, reply=target)
        await spy.send(s.service("registry", "heartbeat"), b"{}", reply=target)
    # Served in order on each subscription: these answered, those were handled.
    for subject in (s.service_as("registry", "get", "spy"), s.service("registry", "register")):
        who = spy if subject.endswith(".spy") else anonymous
        await who.nc.request(subject, msgspec.json.encode(RegistryQuery(agent_id="spy")), timeout=5)
    await asyncio.sleep(0.3)

    assert await attack.registry_last() == history
    assert (await attack.lease()).value == before.value
    assert attack.active.active
    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await (await js.key_value(liveness_bucket(mesh.topology))).get("spy")
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await (await js.key_value(view_bucket(mesh.topology))).get("ghost")


async def test_a_registry_event_replayed_by_a_direct_get_is_refused_by_the_stream(
    attack: Attack,
) -> None:
    """Agents may direct-get the registry history (to see how far it goes). One asks for
    each registry event with the reply subject set to the event's own subject: the server
    would store the exact signed bytes again, a registration or activation replayed. The
    stream refuses each: the copy carries the expected-sequence condition it was stored
    under, which no longer holds (and its message id is a duplicate)."""
    mesh = attack.mesh
    spy = await attack.agent("spy")
    await mesh.ensure_screener()
    last = await attack.registry_last()
    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()
    stored = [await js.get_msg(mesh.topology.registry_stream, seq) for seq in range(1, last + 1)]
    assert all(EXPECTED in (m.headers or {}) for m in stored)
    for message in stored:
        await spy.send(
            f"$JS.API.DIRECT.GET.{mesh.topology.registry_stream}",
            json.dumps({"seq": message.seq}).encode(),
            reply=str(message.subject),
        )
    await asyncio.sleep(0.5)
    assert await attack.registry_last() == last
    # And the history still rebuilds to the same registrations.
    state = await attack.active.store.rebuild()
    assert {"spy", "screener"} <= set(state.records)


async def test_two_registries_serving_at_once_keep_one_history(attack: Attack) -> None:
    """A compromised policy service deletes the lease key right after a renewal (see the
    xfail below): a standby takes the lease while the writer still serves. While both
    serve, registrations arrive (every request reaches both). The history stays one
    chain: each event was stored on the condition that the one before it was the
    family's newest, and no registration is stored twice."""
    mesh = attack.mesh
    standby, _ = await mesh.start_standby_registry()
    policy = await attack.connect("policy", mesh.policy_identity)
    kv = await policy.nc.jetstream().key_value(attack.lease_bucket)
    first = await attack.registry_last()
    assert await overlap_after(attack, standby, lambda: kv.delete(WRITER_KEY))
    cards = [claims_card(f"overlap-{k}") for k in range(3)]
    await asyncio.gather(
        *(mesh.enrol(card, Identity.generate()) for card in cards), return_exceptions=True
    )
    await eventually(
        lambda: attack.active.active != standby.active, timeout=5, what="one writer again"
    )

    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()
    last = await attack.registry_last()
    previous = first
    seen: set[tuple[str, str]] = set()
    for seq in range(first + 1, last + 1):
        message = await js.get_msg(mesh.topology.registry_stream, seq)
        headers = message.headers or {}
        assert int(headers[EXPECTED]) == previous, (seq, headers)
        previous = seq
        event = msgspec.json.decode(message.data or b"{}")
        what = (str(event["event_type"]), json.dumps(event["payload"], sort_keys=True))
        assert what not in seen, f"stored twice: {what}"
        seen.add(what)


async def test_no_agent_settles_another_agent_s_messages(attack: Attack) -> None:
    """An agent acks, terms, naks and skips (+NXT) on another agent's consumer, publishes
    into its inbox and listens there: the broker refuses each. It acks, on its own
    consumer, a sequence not yet delivered, and the policy service (which may ack
    anything) does so on the victim's: the server ignores an ack of what it has not
    delivered, and both consumers still deliver every message."""
    mesh = attack.mesh
    work = mesh.topology.work_stream
    victim = await attack.agent("victim")
    spy = await attack.agent("spy")
    policy = await attack.connect("policy", mesh.policy_identity)
    partitions = mesh.topology.partitions
    cases = [case_in_partition(1, partitions) for _ in range(3)]
    for case_id in cases:
        await open_case(mesh, case_id)
    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()
    await until(lambda: _pending(js, work, "victim_p1", 3), "three waiting for victim", 5)
    ts = time.time_ns()
    for operation in (b"+ACK", b"+TERM", b"-NAK", b"+NXT"):
        subject = f"$JS.ACK.{work}.victim_p1.1.1.1.{ts}.0"
        await spy.send(subject, operation)
        await eventually(lambda s=subject: spy.refused(s), timeout=10, what="refused ack")
    await spy.refused_publish("_INBOX.victim.anything", b"{}")
    await refused_subscription(spy, "_INBOX.victim.>")
    for seq in (1, 2, 3):
        await spy.send(f"$JS.ACK.{work}.spy_p1.1.{seq}.1.{ts}.0", b"+ACK")
        await policy.send(f"$JS.ACK.{work}.victim_p1.1.{seq}.1.{ts}.0", b"+ACK")
    await policy.nc.flush()

    for who, durable in ((victim, "victim_p1"), (spy, "spy_p1")):
        delivered = await pull(who, work, durable, {"batch": 3})
        assert sorted(m.metadata.sequence.stream for m in delivered) == [1, 2, 3], durable


async def _pending(js: Any, stream: str, durable: str, count: int) -> bool | None:
    info = await js.consumer_info(stream, durable)
    return int(info.num_pending) == count or None


# ---------------------------------------------------------------------------- got through

REPLY_INTO_ACCOUNT = (
    "nats-server does not check a request's reply subject against the requester's "
    "publish permissions and JetStream answers into the account: an agent's $JS.API.INFO "
    "(or a direct get of the registry stream) with reply={} is stored there. "
)


async def test_an_agent_cannot_take_the_writer_lease_with_a_jetstream_reply(
    attack: Attack,
) -> None:
    spy = await attack.agent("spy")
    await spy.send("$JS.API.INFO", b"", reply=f"$KV.{attack.lease_bucket}.{WRITER_KEY}")
    # The answer lands on the key (the server lets it), but it is no signed lease: the
    # writer renews over it and never stops serving.
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        assert attack.active.active, "the writer stood down"
        await asyncio.sleep(0.05)
    value = (await attack.lease()).value
    assert attack.active.lease.is_lease(value), f"lease now {value!r:.80}"
    assert value == attack.active.lease.holder


async def test_junk_an_agent_leaves_among_heartbeats_does_not_stop_a_take_over(
    attack: Attack,
) -> None:
    spy = await attack.agent("spy")
    standby, _ = await attack.mesh.start_standby_registry()
    assert attack.mesh.harness_nc is not None
    liveness = await attack.mesh.harness_nc.jetstream().key_value(
        liveness_bucket(attack.mesh.topology)
    )
    await spy.send("$JS.API.INFO", b"", reply=f"$KV.{liveness_bucket(attack.mesh.topology)}.x")

    async def stored() -> bool:
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            return bool(await liveness.get("x"))
        return False

    await settled_in(stored)
    await attack.mesh.stop_registry()  # a clean hand-over: released at once
    await eventually(lambda: standby.active, timeout=3, what="the standby taking over")


@pytest.mark.xfail(
    strict=True,
    reason=REPLY_INTO_ACCOUNT.format("<root>.registry.<any>.<any>")
    + "The running registry does not read it (it rebuilds only on a conflict or a "
    "take-over), so its `keys` answers lag the stream's newest sequence; every consumer "
    "that checks signers (policy, event store, reader, agents with check_signers) waits "
    "for a registry sequence that never comes and dead-letters what follows. Fix: account "
    "isolation; and the registry should follow its own stream (count every stored "
    "sequence as read), or KeyDirectory pass over an entry that is not a registry-signed "
    "event when comparing sequences",
)
async def test_junk_in_the_registry_history_does_not_stall_consumers_that_check_signers(
    attack: Attack,
) -> None:
    mesh = attack.mesh
    spy = await attack.agent("spy")
    await mesh.run_agent(claims_agent(), check_signers=True)
    await open_case(mesh, "warm")
    await until(lambda: stepped(attack, "warm"), "the first case")
    before = await attack.registry_last()
    await spy.send("$JS.API.INFO", b"", reply=f"{attack.root}.registry.junk.agent_registered")

    async def stored() -> bool:
        return await attack.registry_last() > before

    await settled_in(stored)
    await open_case(mesh, "after-junk")
    try:
        await until(lambda: stepped(attack, "after-junk"), "the next case", timeout=3)
    finally:
        # A registration makes the registry re-read its history (its append conflicts):
        # the stalled agent gets its answer and stops at once.
        with contextlib.suppress(Exception):
            await mesh.enrol(claims_card("repair"), Identity.generate())


@pytest.mark.xfail(
    strict=True,
    reason=REPLY_INTO_ACCOUNT.format("<root>.registry.<any>.<any>")
    + "at a few thousand a second, unbounded: each registration's append conflicts, the "
    "registry rebuilds (reading all the junk, kept for ever: the stream is deny_purge) "
    "and conflicts again; no registration succeeds. Fix: account isolation",
)
async def test_a_flood_of_junk_in_the_history_does_not_deny_registrations(
    attack: Attack,
) -> None:
    spy = await attack.agent("spy")
    flooding = asyncio.Event()
    junk = f"{attack.root}.registry.junk.agent_registered"

    async def flood() -> None:
        while not flooding.is_set():
            for _ in range(20):
                await spy.nc.publish("$JS.API.INFO", b"", reply=junk)
            await spy.nc.flush()
            await asyncio.sleep(0.005)

    task = asyncio.create_task(flood())
    try:
        await asyncio.sleep(0.5)
        await asyncio.wait_for(attack.mesh.enrol(claims_card("newcomer"), Identity.generate()), 3)
    finally:
        flooding.set()
        await task


async def test_a_registry_whose_term_ended_answers_nothing_from_its_stale_state(
    attack: Attack,
) -> None:
    mesh = attack.mesh
    directory = mesh.directory
    seed = directory / "registry-b.nk"
    mesh.registry_identity.save(seed)
    settings = mesh.registry_settings
    env = {
        **os.environ,
        "MESH_NATS_URL": mesh.url,
        "MESH_SUBJECT_ROOT": attack.root,
        "MESH_NKEY_AUTH": "1",
        "MESH_DATA_DIR": str(directory / "registry-b"),
        "MESH_REQUEST_TIMEOUT": "2",
        "MESH_REGISTRY_SEED_FILE": str(seed),
        "MESH_REGISTRY_PRINCIPALS_FILE": str(settings.principals_file),
        "MESH_REGISTRY_AUTH_FILE": str(settings.auth_file),
        "MESH_REGISTRY_SERVER_PID_FILE": str(settings.server_pid_file),
        "MESH_REGISTRY_SERVER_MONITOR_URL": str(settings.server_monitor_url),
        "MESH_REGISTRY_KNOWN_OWNERS": json.dumps(settings.known_owners),
        "MESH_REGISTRY_LEASE_TIMEOUT": str(settings.lease_timeout),
        "MESH_REGISTRY_STANDBY_POLL": "0.1",
    }
    frozen = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.registry",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await mesh.stop_registry()  # released: the process takes the lease once it is up
        await until(lambda: _held_by(attack, frozen.pid), "the process as writer", 15)
        await mesh.enrol(claims_card("target"), Identity.generate())
        successor, _ = await mesh.start_standby_registry()
        os.kill(frozen.pid, signal.SIGSTOP)
        assert mesh.harness_nc is not None
        nc = mesh.harness_nc
        answers: list[tuple[int, str, float]] = []  # request, what it said, when

        async def keep(msg: Msg) -> None:
            reply = msgspec.json.decode(msg.data, type=RegistryReply)
            status = reply.records[0].status if reply.records else f"refused: {reply.error}"
            answers.append((int(msg.subject.rsplit(".", 1)[1]), status, time.monotonic()))

        inbox = nc.new_inbox()
        await nc.subscribe(f"{inbox}.>", cb=keep)
        query = msgspec.json.encode(RegistryQuery(agent_id="target"))
        get = mesh.topology.subjects.service("registry", "get")
        asked = 0
        while not successor.active:
            await nc.publish(get, query, reply=f"{inbox}.{asked}")
            asked += 1
            await asyncio.sleep(0.2)
        operator = await mesh.operator_client()
        await operator.change_status("suspend", "target", "compromised", mesh.operator)
        suspended_at = time.monotonic()
        for _ in range(3):
            await nc.publish(get, query, reply=f"{inbox}.{asked}")
            asked += 1
        await nc.flush()
        await asyncio.sleep(0.3)
        os.kill(frozen.pid, signal.SIGCONT)
        await asyncio.sleep(1.0)
        # Once the suspension is stored, nobody answers from a state before it: the
        # registry whose term ended refuses what it had buffered (it may not write, nor
        # answer), and the writer says "suspended".
        stale = [
            (n, status) for n, status, at in answers if at > suspended_at and status == "active"
        ]
        assert not stale, f"answered 'active' after the suspension: {stale}"
        assert any(status == "suspended" for _, status, _ in answers), answers
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(frozen.pid, signal.SIGCONT)
            frozen.terminate()
        try:
            await asyncio.wait_for(frozen.wait(), 10)
        except TimeoutError:
            frozen.kill()
            await frozen.wait()


async def _held_by(attack: Attack, pid: int) -> bool | None:
    value = (await attack.lease()).value or b"{}"
    return f":{pid}:" in str(json.loads(value).get("holder", "")) or None


async def test_another_agent_cannot_make_a_consumer_skip_an_event(attack: Attack) -> None:
    mesh = attack.mesh
    work = mesh.topology.work_stream
    spy = await attack.agent("spy")  # consumes case_opened too, like the victim
    release = asyncio.Event()
    handled: list[str] = []
    agent = Agent(claims_card("victim"))

    @agent.on(CaseOpened)
    async def opened(event: CaseOpened, ctx: HandlerContext) -> None:
        handled.append(event.event_id)
        if len(handled) == 1:  # the case's first event takes long: the next one waits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 10)

    await mesh.run_agent(agent)
    case_id = case_in_partition(2, mesh.topology.partitions)
    first = await open_case(mesh, case_id)
    await eventually(lambda: first.event_id in handled, timeout=5, what="the first handled")
    second = await open_case(mesh, case_id)

    # The victim's pull inbox, as anyone who reaches the monitoring port reads it.
    url = f"http://127.0.0.1:{mesh.server.monitor_port}/connz?subs=detail"
    async with httpx.AsyncClient(timeout=5) as http:
        connz = (await http.get(url)).json()
    inboxes = {
        sub["subject"].removesuffix(".2.>")
        for connection in connz["connections"]
        for sub in connection.get("subscriptions_list_detail", [])
        if sub["subject"].startswith("_INBOX.victim.") and sub["subject"].endswith(".2.>")
    }
    [inbox] = inboxes

    # Its own delivery of the same event, past the victim's max_deliver.
    pin: str | None = None
    delivery = 0
    for _ in range(40):
        if delivery >= mesh.settings.max_deliver:
            break
        request: dict[str, Any] = {"batch": 1, **({"id": pin} if pin else {})}
        for msg in await pull(spy, work, "spy_p2", request, wait=0.3):
            pin = (msg.headers or {}).get("Nats-Pin-Id")
            if msg.metadata.sequence.stream != 2:
                await msg.ack()
                continue
            delivery = msg.metadata.num_delivered
            await msg.nak()
    assert delivery >= mesh.settings.max_deliver, "the spy's own deliveries did not come"
    await spy.send(
        f"$JS.API.CONSUMER.MSG.NEXT.{work}.spy_p2",
        json.dumps({"batch": 1, "group": PIN_GROUP, "expires": 1_000_000_000, "id": pin}).encode(),
        reply=f"{inbox}.2.attack",
    )
    await asyncio.sleep(1.0)
    release.set()
    await eventually(lambda: second.event_id in handled, timeout=5, what="the second handled")


@pytest.mark.xfail(
    strict=True,
    reason="a compromised service removes the writer's lease under it: policy holds "
    "$KV.> (kv.delete), the reader may direct-get the case log with any reply subject "
    "(an agent's event carrying `KV-Operation: DEL`, replied into the lease key). A "
    "standby's create() then succeeds while the writer serves until its next renewal: "
    "two registries serve at once (the stream's condition keeps the history whole; see "
    "test_two_registries_serving_at_once_keep_one_history). Fix: policy's $KV.> narrowed "
    "to its own buckets; account isolation for the reader's direct gets; in lease.py the "
    "writer watches the key (a KV watch) and stands down at once on any change, and a "
    "standby takes over after a delete only once the lease timeout has passed since it "
    "last saw the holder's revision",
)
@pytest.mark.parametrize("service", ["policy", "reader"])
async def test_a_compromised_service_cannot_make_two_registries_serve(
    attack: Attack, service: str
) -> None:
    mesh = attack.mesh
    standby, _ = await mesh.start_standby_registry()
    if service == "policy":
        policy = await attack.connect("policy", mesh.policy_identity)
        kv = await policy.nc.jetstream().key_value(attack.lease_bucket)
        assert not await overlap_after(attack, standby, lambda: kv.delete(WRITER_KEY))
        return
    spy = await attack.agent("spy", consumes=(), produces=("case_escalated",))
    reader = await attack.connect("reader", mesh.reader_identity)
    assert spy.identity is not None
    identity = spy.identity

    async def tombstone() -> None:
        """An event of the spy's own type carrying `KV-Operation: DEL` (a fresh one each
        time: the bucket drops a repeated message id), replied into the lease key."""
        case_id = case_in_partition(0, mesh.topology.partitions)
        subject = mesh.topology.subjects.case_event(case_id, "case_escalated")
        event = CaseEscalated(
            case_id=case_id, actor="spy", payload=CaseEscalatedPayload(step="x", reason="y")
        )
        body, headers = signed(event, identity, subject)
        sequence = await store(spy, subject, body, {**headers, "KV-Operation": "DEL"})
        await reader.send(
            f"$JS.API.DIRECT.GET.{mesh.topology.cases_stream}",
            json.dumps({"seq": sequence}).encode(),
            reply=f"$KV.{attack.lease_bucket}.{WRITER_KEY}",
        )

    assert not await overlap_after(attack, standby, tombstone)


@pytest.mark.xfail(
    strict=True,
    reason="the event store (and policy) hold $JS.API.>: it updates the lease's stream to "
    "max_age 0 (the lease never expires: a dead writer is never replaced) and deletes the "
    "registry's history stream outright (deny_delete/deny_purge guard messages, not the "
    "stream). Fix: permissions.py — the event store and policy get only the JetStream "
    "API subjects of their own consumers and reads ($JS.API.CONSUMER.*.<stream>.<own "
    "durable>, DIRECT.GET), never $JS.API.>; stream admin stays with the registry",
)
async def test_a_compromised_event_store_cannot_pin_the_lease_or_delete_the_history(
    attack: Attack,
) -> None:
    mesh = attack.mesh
    eventstore = await attack.connect("eventstore", mesh.store_identity)
    kv_stream = f"KV_{attack.lease_bucket}"
    config = (await eventstore.nc.jetstream().stream_info(kv_stream)).config.as_dict()
    config["max_age"] = 0
    updated = await eventstore.nc.request(
        f"$JS.API.STREAM.UPDATE.{kv_stream}", json.dumps(config).encode(), timeout=5
    )
    deleted = await eventstore.nc.request(
        f"$JS.API.STREAM.DELETE.{mesh.topology.registry_stream}", b"", timeout=5
    )
    assert b'"error"' in updated.data, updated.data[:120]
    assert b'"error"' in deleted.data, deleted.data[:120]


@pytest.mark.xfail(
    strict=True,
    reason="policy holds $JS.ACK.>: it acks an agent's in-flight message (only the stream "
    "sequence of the ack subject must be right, and policy reads consumer state through "
    "$JS.API.>); the agent's NAK for a retry then finds nothing pending and the event is "
    "never redelivered. Fix: permissions.py — policy's acks only on its own durables "
    "($JS.ACK.<stream>.policy*.>), as agents have",
)
async def test_a_compromised_policy_service_cannot_settle_an_agent_s_message(
    attack: Attack,
) -> None:
    mesh = attack.mesh
    work = mesh.topology.work_stream
    victim = await attack.agent("victim")
    policy = await attack.connect("policy", mesh.policy_identity)
    await open_case(mesh, case_in_partition(1, mesh.topology.partitions))
    [msg] = await pull(victim, work, "victim_p1", {"batch": 1})
    sequence = msg.metadata.sequence.stream
    await policy.send(f"$JS.ACK.{work}.victim_p1.9.{sequence}.77.123.0", b"+ACK")
    await policy.nc.flush()
    await asyncio.sleep(0.2)
    await msg.nak()  # the victim's handler failed: it asks for a retry
    pin = (msg.headers or {})["Nats-Pin-Id"]
    again = await pull(victim, work, "victim_p1", {"batch": 1, "id": pin})
    assert [m.metadata.sequence.stream for m in again] == [sequence]
