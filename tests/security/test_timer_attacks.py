"""Attacks on durable timers (47f2d70) with real credentials against a real nats-server
enforcing the registry's generated authorization (`secured_mesh`: one server, its own
root, per test). The victim is the mesh's own runtime (`mesh run` in-process, under
enforcement: signatures and signers checked) running an agent that sets a timer on
every opened case; every attacker is an agent an operator enrolled, later compromised,
on its own nkey: `spy` (no timers on its card) and `peer` (a card like the victim's,
so it may write timer_set / timer_fired / timer_cancelled and holds a timers stream).

Refused (who refuses): a publish into another agent's `timers.set|due` subjects, into
its own `due` subjects, into its own `set` subjects without timers on the card; any JS
API on another agent's timers stream or durable, any management of its own (the
broker); a schedule whose target is another agent's subject or the case log, a forged
`Nats-Scheduler`, a `Nats-Rollup: all` inside a schedule (the server). A `Nats-Rollup`
on its own stream wipes only its own timers. A peer's timer_fired / timer_cancelled
naming the victim's timer, under its own name or forged under the victim's, neither
wakes the victim nor suppresses its firing (the SDK and `timer_record` count only the
setter's verified events); `mesh audit verify` names each, and names an owner's own
early, repeated and after-cancel firings. A timer_set replayed into another case fires
nothing there. Hostile names and data do not stop the event store or the verifier.

Closed after this review (each test asserts the safe outcome):
- A JetStream API answer aimed at a schedule's subject (`$JS.API.INFO` or a pull with
  that reply subject: nats-server does not check reply subjects) disarms the schedule;
  the owner's sweep re-arms it from the log, and it fires once. A firing waiting for
  its agent survives such an answer on its subject (the stream keeps every message).
- A replay of the victim's own signed timer_fired wakes nothing: only the log's first
  firing of a timer of its own, at or after its due time, runs the handler.
- Timer data nested 300 deep is stored by the event store as it can (the SDK refuses
  more than 16 levels); a naive due time is malformed; a backdated due time, a clock
  rate below 1 and, on a real mesh, a compressed clock are named by the verifier.

- A peer stuffing the case with events the victim reads no longer silences it: the
  case log refuses events over 256 KiB, and the reader answers in pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats.js.errors
import pytest

from contracts import (
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
    TimerCancelled,
    TimerCancelledPayload,
    TimerFired,
    TimerFiredPayload,
    TimerSet,
    TimerSetPayload,
)
from contracts.cards import AgentCard
from contracts.envelope import Event
from contracts.errors import InvalidSubject
from contracts.eventstore_api import CaseRequest
from mesh import HandlerContext
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_subject
from mesh._broker.stored_messages import StoredEvent
from mesh._sdk.agent import Agent
from mesh._sdk.timers import schedule_header, timer_payload
from mesh._trust.identity import Identity
from mesh.errors import PermanentError
from mesh.testing import eventually
from services.eventstore.audit import Report, verify_bundle
from services.eventstore.export import build_bundle, store_request
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh, secured_mesh
from tests.security.kit import Connection, open_connection, signed, store

pytestmark = [pytest.mark.integration, pytest.mark.security]

DEADLINE = "deadline"  # the victim's one timer handler
TIMER_TYPES = ["timer_set", "timer_fired", "timer_cancelled"]
SCHEDULE, TARGET = "Nats-Schedule", "Nats-Schedule-Target"


# ---------------------------------------------------------------------------- harness


def card(agent_id: str, *, timers: bool) -> AgentCard:
    """A card like the victim's (`timers`), or a plain one that sets no timers."""
    return AgentCard(
        agent_id=agent_id,
        name=f"{agent_id} (enrolled by an operator)",
        version="1",
        owner=KNOWN_OWNER,
        purpose="follows up on every opened case after a while",
        consumes=["case_opened", "timer_fired"] if timers else ["case_opened"],
        produces=[*TIMER_TYPES, "case_step_completed"] if timers else ["case_step_completed"],
    )


class Victim:
    """The mesh's runtime with an honest agent: on every opened case it sets the timer
    `deadline` (`delay` seconds, from the case's data) and records each wake-up."""

    def __init__(self, agent_id: str = "victim") -> None:
        self.agent_id = agent_id
        self.identity = Identity.generate()
        self.woken: list[TimerFired] = []
        self.agent = Agent(card(agent_id, timers=True))
        self.agent.on(CaseOpened)(self.opened)
        self.agent.on_timer(DEADLINE)(self.deadline)

    async def opened(self, event: CaseOpened, ctx: HandlerContext) -> None:
        delay = float(event.payload.data.get("delay", 3))
        await ctx.schedule(DEADLINE, after=timedelta(seconds=delay), data={"case": "data"})

    async def deadline(self, fired: TimerFired, ctx: HandlerContext) -> None:
        self.woken.append(fired)
        await ctx.emit(
            CaseStepCompleted,
            CaseStepCompletedPayload(
                step=DEADLINE, outcome="passed", evidence={"timer": fired.payload.timer_id}
            ),
        )


@dataclass
class Attack:
    mesh: SecuredMesh
    directory: Path
    connections: list[Connection] = field(default_factory=list)
    _store_started: bool = False

    @property
    def root(self) -> str:
        return self.mesh.topology.root

    def timer(self, kind: str, agent_id: str, case_id: str, timer_id: str) -> str:
        return self.mesh.topology.subjects.timer(kind, agent_id, case_id, timer_id)

    @property
    def harness(self) -> Any:
        assert self.mesh.harness_nc is not None
        return self.mesh.harness_nc

    async def agent(self, agent_id: str, *, timers: bool) -> Connection:
        """An agent an operator enrolled (the registry provisions its durables and, with
        timers on its card, its timers stream), later compromised: its own key."""
        identity = Identity.generate()
        await self.mesh.enrol(card(agent_id, timers=timers), identity)
        connection = await open_connection(self.mesh.url, agent_id, identity)
        self.connections.append(connection)
        return connection

    async def victim(self, victim: Victim | None = None) -> Victim:
        victim = victim or Victim()
        await self.mesh.run_agent(victim.agent, victim.identity)
        return victim

    async def open(self, delay: float = 3.0, case_id: str | None = None) -> str:
        """A case opened by the harness (as the ingress would), with the victim's delay."""
        case_id = case_id or f"c-{uuid.uuid4().hex[:10]}"
        opened = CaseOpened(
            case_id=case_id,
            actor="harness",
            payload=CaseOpenedPayload(kind="claim", source="crm", data={"delay": delay}),
        )
        await EventPublisher(
            self.harness.jetstream(), self.mesh.harness, self.mesh.topology
        ).publish(opened)
        return case_id

    async def history(self, case_id: str) -> list[StoredEvent]:
        """The case's events as stored (read as the operator; unreadable ones left out)."""
        topology = self.mesh.topology
        return await read_subject(
            self.harness.jetstream(),
            topology.cases_stream,
            topology.subjects.case_history(case_id),
            on_unreadable=lambda *_: None,
        )

    async def wait_for(
        self, case_id: str, event_type: type[Any], actor: str = "victim", timeout: float = 15
    ) -> tuple[StoredEvent, Any]:
        async def found() -> tuple[StoredEvent, Any] | None:
            for stored in await self.history(case_id):
                if isinstance(stored.event, event_type) and stored.event.actor == actor:
                    return stored, stored.event
            return None

        result: tuple[StoredEvent, Any] = await eventually(
            found, timeout=timeout, interval=0.1, what=f"{event_type.__name__} in {case_id}"
        )
        return result

    async def fired(self, case_id: str, victim: Victim) -> list[tuple[StoredEvent, TimerFired]]:
        """The victim's timer_fired events in the case, signed with its key."""
        return [
            (s, s.event)
            for s in await self.history(case_id)
            if isinstance(s.event, TimerFired)
            and s.event.actor == victim.agent_id
            and s.headers.get("Mesh-Signer") == victim.identity.public_key
        ]

    async def publish(
        self, who: Connection, event: Event, signer: Identity | None = None, **options: Any
    ) -> int:
        """`event` signed by `signer` (the publisher's own key by default), stored."""
        subject = self.mesh.topology.subjects.for_event(event)
        identity = signer or who.identity
        assert identity is not None
        return await store(who, subject, *signed(event, identity, subject, **options))

    async def held(self, kind: str, agent_id: str, case_id: str, timer_id: str) -> Any:
        """What an agent's timers stream holds on a timer's subject (read as the operator;
        None if nothing)."""
        try:
            return await self.harness.jetstream().get_msg(
                self.mesh.topology.timers_stream(agent_id),
                subject=self.timer(kind, agent_id, case_id, timer_id),
            )
        except nats.js.errors.NotFoundError:
            return None

    async def verify(self, case_id: str | None) -> Report:
        """`mesh audit verify` over an exported bundle, the store's key pinned."""
        if not self._store_started:
            await self.mesh.start_eventstore(f"sqlite:///{self.directory / 'views.db'}")
            self._store_started = True
        bundle = await build_bundle(self.harness, self.mesh.topology, case_id)
        return verify_bundle(bundle, store_key=self.mesh.store_identity.public_key)

    async def close(self) -> None:
        for connection in self.connections:
            with contextlib.suppress(Exception):
                await connection.nc.close()


@pytest.fixture
async def attack(tmp_path: Path) -> AsyncIterator[Attack]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as mesh:
        attacked = Attack(mesh, tmp_path)
        try:
            yield attacked
        finally:
            await attacked.close()


def signature_of(stored: StoredEvent) -> dict[str, str]:
    """The signature headers a message was stored with: what a replay copies."""
    return {k: v for k, v in stored.headers.items() if k.startswith("Mesh-")}


def named(report: Report, sequence: int) -> list[str]:
    return [str(v) for v in report.violations if f"sequence {sequence} " in v.where]


async def refused_subscription(who: Connection, subject: str) -> None:
    await who.nc.subscribe(subject)
    await who.nc.flush()
    await eventually(
        lambda: who.refused(subject, "subscription"),
        timeout=10,
        what=f"the broker refusing a subscription to {subject}",
    )


async def quiet(seconds: float) -> None:
    """Give what an attack set in motion time to land (or not)."""
    await asyncio.sleep(seconds)


async def woken_once(attack: Attack, victim: Victim, case_id: str, timer: TimerSet) -> None:
    """The victim's timer fired once, on time, from its own timer_set, and woke its
    handler once."""
    await attack.wait_for(case_id, CaseStepCompleted)
    await quiet(1.0)
    [(stored, fired)] = await attack.fired(case_id, victim)
    assert fired.payload.timer_id == timer.event_id == fired.causation_id
    assert stored.stored_at >= timer.payload.due_at
    assert fired.payload.data == {"case": "data"}
    assert [w.event_id for w in victim.woken] == [fired.event_id]


# ---------------------------------------------------------------------------- refused


async def test_the_broker_keeps_every_agent_out_of_others_timers(attack: Attack) -> None:
    """A spy (no timers on its card) and a peer (timers on its card) each: schedule on
    the victim's `set` subject, fire on its `due` subject and on their own `due`
    subjects; inspect, read (message get, direct get, by subject), list, purge, update,
    delete the victim's timers stream and a message of it; create consumers on it
    (ephemeral, durable, filtered); inspect, pull from, ack on, delete the victim's
    timer durable; manage their own timers stream and durable (info, update its
    subjects to every timer, purge, delete, new consumers, rewrite the durable's
    filter); create a stream of their own over the victim's timers; and subscribe to
    timer subjects. The spy may not schedule at all. The broker refuses each; the
    victim's schedule stays and its timer fires once, on time."""
    victim = await attack.victim()
    spy = await attack.agent("spy", timers=False)
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open(delay=10)
    _, timer = await attack.wait_for(case_id, TimerSet)
    topology = attack.mesh.topology
    vs, vd = topology.timers_stream("victim"), topology.timer_durable("victim")
    set_subject = attack.timer("set", "victim", case_id, timer.event_id)
    due_subject = attack.timer("due", "victim", case_id, timer.event_id)
    now = {SCHEDULE: schedule_header(datetime.now(UTC)), TARGET: due_subject}
    on_victim: list[tuple[str, dict[str, Any]]] = [
        (f"$JS.API.STREAM.INFO.{vs}", {}),
        (f"$JS.API.STREAM.MSG.GET.{vs}", {"last_by_subj": set_subject}),
        (f"$JS.API.DIRECT.GET.{vs}", {"last_by_subj": set_subject}),
        (f"$JS.API.DIRECT.GET.{vs}.{set_subject}", {}),
        ("$JS.API.STREAM.NAMES", {}),
        ("$JS.API.STREAM.LIST", {}),
        (f"$JS.API.STREAM.PURGE.{vs}", {}),
        (f"$JS.API.STREAM.UPDATE.{vs}", {"name": vs, "subjects": [f"{attack.root}.x.>"]}),
        (f"$JS.API.STREAM.DELETE.{vs}", {}),
        (f"$JS.API.STREAM.MSG.DELETE.{vs}", {"seq": 1}),
        (f"$JS.API.CONSUMER.LIST.{vs}", {}),
        (f"$JS.API.CONSUMER.CREATE.{vs}", {"stream_name": vs, "config": {"ack_policy": "none"}}),
        (f"$JS.API.CONSUMER.CREATE.{vs}.spy.{due_subject}", {"stream_name": vs}),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{vs}.spy", {"stream_name": vs}),
        (f"$JS.API.CONSUMER.INFO.{vs}.{vd}", {}),
        (f"$JS.API.CONSUMER.MSG.NEXT.{vs}.{vd}", {"batch": 10}),
        (f"$JS.ACK.{vs}.{vd}.1.1.1.1.0", {}),
        (f"$JS.API.CONSUMER.DELETE.{vs}.{vd}", {}),
        (
            f"$JS.API.STREAM.CREATE.{attack.root.upper()}_SPY",
            {"name": f"{attack.root.upper()}_SPY", "subjects": [f"{attack.root}.timers.>"]},
        ),
    ]
    for who in (spy, peer):
        me = who.name
        own, durable = topology.timers_stream(me), topology.timer_durable(me)
        on_own: list[tuple[str, dict[str, Any]]] = [
            (f"$JS.API.STREAM.INFO.{own}", {}),
            (
                f"$JS.API.STREAM.UPDATE.{own}",
                {"name": own, "subjects": [f"{attack.root}.timers.>"]},
            ),
            (f"$JS.API.STREAM.PURGE.{own}", {}),
            (f"$JS.API.STREAM.DELETE.{own}", {}),
            (f"$JS.API.CONSUMER.CREATE.{own}", {"stream_name": own, "config": {}}),
            (
                f"$JS.API.CONSUMER.CREATE.{own}.{durable}.{attack.root}.timers.>",
                {"stream_name": own, "config": {"durable_name": durable}},
            ),
            (f"$JS.API.CONSUMER.DELETE.{own}.{durable}", {}),
        ]
        for subject, request in [*on_victim, *on_own]:
            await who.refused_publish(subject, json.dumps(request).encode())
        await who.refused_publish(set_subject, headers=now)
        await who.refused_publish(due_subject)
        await who.refused_publish(attack.timer("due", me, case_id, timer.event_id))
        for subject in (f"{attack.root}.timers.>", f"{attack.root}.timers.due.victim.>"):
            await refused_subscription(who, subject)
    await spy.refused_publish(
        attack.timer("set", "spy", case_id, "t1"),
        headers={SCHEDULE: now[SCHEDULE], TARGET: attack.timer("due", "spy", case_id, "t1")},
    )

    held = await attack.held("set", "victim", case_id, timer.event_id)
    assert (held.headers or {}).get(TARGET) == due_subject
    await woken_once(attack, victim, case_id, timer)


async def test_no_schedule_reaches_beyond_its_own_stream(attack: Attack) -> None:
    """The peer schedules, on its own `set` subjects (which it may write), firings into
    the victim's `due` and `set` subjects, the case log and the work stream; forges
    `Nats-Scheduler`; puts `Nats-Rollup: all` in a schedule; then empties its own stream
    with `Nats-Rollup: all` and `sub`, and leaves a schedule firing every second. The
    server refuses the first ones; the rollups and the repeating schedule touch only
    the peer's stream. The victim's schedule stays and fires once, on time."""
    victim = await attack.victim()
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open(delay=4)
    _, timer = await attack.wait_for(case_id, TimerSet)
    at = schedule_header(datetime.now(UTC))
    own = attack.timer("set", "peer", case_id, "own")
    targets = {
        attack.timer("due", "victim", case_id, timer.event_id): "target is invalid",
        attack.timer("set", "victim", case_id, timer.event_id): "target is invalid",
        f"{attack.root}.case.{case_id}.timer_fired": "target is invalid",
        f"{attack.root}.work.0.{case_id}.timer_fired": "target is invalid",
        f"{attack.root}.timers.due.peer.{case_id}.*": "target is invalid",
    }
    for target, refusal in targets.items():
        with pytest.raises(nats.js.errors.BadRequestError) as refused:
            await peer.js.publish(own, b"", headers={SCHEDULE: at, TARGET: target})
        assert refusal in str(refused.value.description), refused.value
    own_due = attack.timer("due", "peer", case_id, "own")
    for extra, refusal in (
        ({"Nats-Scheduler": attack.timer("set", "victim", case_id, timer.event_id)}, "scheduler"),
        ({"Nats-Rollup": "all"}, ""),
    ):
        with pytest.raises(nats.js.errors.BadRequestError) as refused:
            await peer.js.publish(own, b"", headers={SCHEDULE: at, TARGET: own_due, **extra})
        assert refusal in str(refused.value.description), refused.value

    victim_stream = attack.mesh.topology.timers_stream("victim")
    before = (await attack.harness.jetstream().stream_info(victim_stream)).state.messages
    for rollup in ("all", "sub"):
        await peer.js.publish(own, b"", headers={"Nats-Rollup": rollup})
    await peer.js.publish(
        attack.timer("set", "peer", case_id, "every"),
        b"",
        headers={SCHEDULE: "@every 1s", TARGET: attack.timer("due", "peer", case_id, "every")},
    )
    after = (await attack.harness.jetstream().stream_info(victim_stream)).state.messages
    assert after == before >= 1
    held = await attack.held("set", "victim", case_id, timer.event_id)
    assert (held.headers or {}).get(SCHEDULE) == schedule_header(timer.payload.due_at)
    await woken_once(attack, victim, case_id, timer)


async def test_a_peers_timer_events_neither_wake_nor_silence_the_victim(attack: Attack) -> None:
    """Before the victim's timer is due, the peer writes into its case: a timer_fired of
    the victim's timer (its handler's name, under the peer's own name), a
    timer_cancelled of it, and both again forged in the victim's name (signed with the
    peer's key). The victim's handler runs once, for its own firing, after the due time;
    `mesh audit verify` names all four."""
    victim = await attack.victim()
    peer = await attack.agent("peer", timers=True)
    assert peer.identity is not None
    case_id = await attack.open(delay=5)
    stored_set, timer = await attack.wait_for(case_id, TimerSet)

    def fired(actor: str) -> TimerFired:
        return TimerFired(
            case_id=case_id,
            correlation_id=timer.correlation_id,
            causation_id=timer.event_id,
            actor=actor,
            payload=TimerFiredPayload(
                timer_id=timer.event_id,
                name=DEADLINE,
                due_at=timer.payload.due_at,
                data={"case": "forged"},
            ),
        )

    def cancelled(actor: str) -> TimerCancelled:
        return TimerCancelled(
            case_id=case_id,
            correlation_id=timer.correlation_id,
            causation_id=timer.event_id,
            actor=actor,
            payload=TimerCancelledPayload(timer_id=timer.event_id, reason="peer says so"),
        )

    forged = [
        await attack.publish(peer, cancelled("peer")),
        await attack.publish(peer, cancelled("victim")),
        await attack.publish(peer, fired("peer")),
        await attack.publish(peer, fired("victim")),
    ]
    await quiet(1.0)
    assert victim.woken == []  # nothing woke it before its time

    await woken_once(attack, victim, case_id, timer)
    assert victim.woken[0].payload.data == {"case": "data"}

    report = await attack.verify(case_id)
    peer_cancel, victim_cancel, peer_fire, victim_fire = (named(report, s) for s in forged)
    own_only = f"names timer {timer.event_id}, which peer did not set in this case"
    assert any(own_only in v for v in peer_cancel), report.violations
    assert any(own_only in v for v in peer_fire), report.violations
    assert victim_cancel, report.violations  # signed by the peer, not the victim
    assert victim_fire, report.violations
    assert not named(report, stored_set.sequence)


async def test_the_verifier_names_an_owners_early_repeated_and_cancelled_firings(
    attack: Attack,
) -> None:
    """A compromised owner (the peer, on its own key, in its own name) sets a timer due
    in an hour and fires it at once, and again; sets another, cancels it and fires it;
    and sets a third on a clock compressed 86,400 times. `mesh audit verify` names each
    firing (early, again, after the cancellation) and notes the compressed clock."""
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open()
    now = datetime.now(UTC)

    def timer_set(clock_rate: float = 1.0) -> TimerSet:
        payload = timer_payload(
            DEADLINE,
            now=now,
            after=timedelta(hours=1),
            at=None,
            clock_rate=clock_rate,
            data={},
        )
        return TimerSet(case_id=case_id, actor="peer", payload=payload)

    def firing(timer: TimerSet) -> TimerFired:
        return TimerFired(
            case_id=case_id,
            correlation_id=timer.correlation_id,
            causation_id=timer.event_id,
            actor="peer",
            payload=TimerFiredPayload(
                timer_id=timer.event_id, name=DEADLINE, due_at=timer.payload.due_at
            ),
        )

    early, withdrawn, compressed = timer_set(), timer_set(), timer_set(86_400)
    await attack.publish(peer, early)
    first = await attack.publish(peer, firing(early))
    again = await attack.publish(peer, firing(early))
    await attack.publish(peer, withdrawn)
    await attack.publish(
        peer,
        TimerCancelled(
            case_id=case_id,
            actor="peer",
            payload=TimerCancelledPayload(timer_id=withdrawn.event_id),
        ),
    )
    after_cancel = await attack.publish(peer, firing(withdrawn))
    at_compressed = await attack.publish(peer, compressed)

    report = await attack.verify(case_id)
    assert any(f"fires timer {early.event_id} at" in v for v in named(report, first))
    assert any("before its due time" in v for v in named(report, first))
    assert any(f"fires timer {early.event_id} again" in v for v in named(report, again))
    assert any("cancelled at sequence" in v for v in named(report, after_cancel))
    # A compressed clock on a real mesh: a violation (a demo's log is verified with
    # --allow-compressed-clock, and there it is only noted).
    assert any("on a real mesh, time is real" in v for v in named(report, at_compressed))


async def test_a_timer_set_replayed_into_another_case_fires_nothing_there(
    attack: Attack,
) -> None:
    """The peer takes the victim's stored timer_set (its bytes and signature) and
    publishes it into another case the victim works on, under a fresh Nats-Msg-Id; then
    re-signs a copy for that case under its own key in the victim's name. The victim
    fires its timer once, in its own case, and nothing in the other; the verifier names
    both copies."""
    victim = await attack.victim()
    peer = await attack.agent("peer", timers=True)
    assert peer.identity is not None
    case_id = await attack.open(delay=3)
    stored_set, timer = await attack.wait_for(case_id, TimerSet)
    other = await attack.open(delay=3600)
    await attack.wait_for(other, TimerSet)

    subject = attack.mesh.topology.subjects.case_event(other, "timer_set")
    headers = {**signature_of(stored_set), "Nats-Msg-Id": str(uuid.uuid4())}
    replayed = await store(peer, subject, stored_set.body, headers)
    moved = msgspec.structs.replace(timer, case_id=other)
    resigned = await attack.publish(peer, moved, msg_id=str(uuid.uuid4()))

    await woken_once(attack, victim, case_id, timer)
    await quiet(2.0)
    assert await attack.fired(other, victim) == []
    report = await attack.verify(other)
    assert named(report, replayed), report.violations
    assert named(report, resigned), report.violations


async def test_hostile_timer_names_and_data_stop_nobody(attack: Attack) -> None:
    """The SDK refuses a timer name that is no subject token and data over 4 kB. The
    compromised peer writes them into the victim's case anyway: a timer_set named with
    60,000 characters of markup, bidi controls, NULs, newlines and astral unicode,
    carrying data nested 200 deep and 50 kB of combining marks, due in ten years on a
    clock rate of 1e-308; a cancellation of it with the same name as its reason; and a
    body nested 5,000 deep. The victim's timer fires once, on time; the event store
    projects the case and draws its timeline; the verifier completes and names the
    unreadable body."""
    hostile = ("[/b]<script>\u202e\n\U0001f4a5\x00." * 3_000)[:60_000]
    nested: dict[str, Any] = {"leaf": "\u202e" * 10}
    for _ in range(200):
        nested = {"n": nested}
    with pytest.raises(InvalidSubject):
        timer_payload(
            hostile, now=datetime.now(UTC), after=timedelta(1), at=None, clock_rate=1, data={}
        )
    with pytest.raises(PermanentError, match="more than 4096"):
        timer_payload(
            DEADLINE,
            now=datetime.now(UTC),
            after=timedelta(1),
            at=None,
            clock_rate=1,
            data={"x": "y" * 5000},
        )

    victim = await attack.victim()
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open(delay=5)
    _, timer = await attack.wait_for(case_id, TimerSet)
    huge = TimerSet(
        case_id=case_id,
        actor="peer",
        payload=TimerSetPayload(
            name=hostile,
            due_at=datetime.now(UTC) + timedelta(days=3650),
            business_due_at=datetime.now(UTC) + timedelta(days=3650),
            delay_seconds=1e308,
            clock_rate=1e-308,
            data={"nested": nested, "text": "\u0301" * 25_000},
        ),
    )
    await attack.publish(peer, huge)
    await attack.publish(
        peer,
        TimerCancelled(
            case_id=case_id,
            actor="peer",
            payload=TimerCancelledPayload(timer_id=huge.event_id, reason=hostile),
        ),
    )
    deep = b'{"event_type":"timer_set","actor":"peer","payload":' + b"[" * 5000 + b"]" * 5000
    unreadable = await store(
        peer,
        attack.mesh.topology.subjects.case_event(case_id, "timer_set"),
        deep + b"}",
        {"Nats-Msg-Id": str(uuid.uuid4())},
    )

    await woken_once(attack, victim, case_id, timer)
    report = await attack.verify(case_id)
    assert any("unreadable" in v for v in named(report, unreadable)), report.violations
    events = len(await attack.history(case_id))  # the deep one is no event
    request = CaseRequest(case_id=case_id)
    reply = await store_request(attack.harness, attack.mesh.topology, "case", request)
    assert reply.detail is not None
    assert reply.detail.case.event_count >= events
    timeline = await store_request(attack.harness, attack.mesh.topology, "timeline", request)
    drawn = [e for e in timeline.timeline if e.actor == "peer" and e.event_type == "timer_set"]
    assert drawn
    assert drawn[0].summary.startswith("set timer ")


async def test_a_flood_of_schedules_in_its_own_stream_leaves_others_on_time(
    attack: Attack,
) -> None:
    """The peer fills its own timers stream: 2,000 schedules due at once, 200 firing
    every second. The victim's timer, set meanwhile, fires once, on time."""
    victim = await attack.victim()
    peer = await attack.agent("peer", timers=True)
    at = schedule_header(datetime.now(UTC))
    for n in range(2_000):
        every = n < 200
        await peer.js.publish(
            attack.timer("set", "peer", "flood", f"t{n}"),
            b"x" * 512,
            headers={
                SCHEDULE: "@every 1s" if every else at,
                TARGET: attack.timer("due", "peer", "flood", f"t{n}"),
            },
        )
    case_id = await attack.open(delay=3)
    _, timer = await attack.wait_for(case_id, TimerSet)
    await woken_once(attack, victim, case_id, timer)
    fired_at = (await attack.fired(case_id, victim))[0][0].stored_at
    assert (fired_at - timer.payload.due_at).total_seconds() < 5


# ---------------------------------------------------------------------------- got through


@pytest.mark.parametrize("how", ["info", "pull"])
async def test_another_agent_cannot_cancel_a_timer_by_a_reply_subject(
    attack: Attack, how: str
) -> None:
    victim = await attack.victim()
    case_id = await attack.open(delay=4)
    _, timer = await attack.wait_for(case_id, TimerSet)
    set_subject = attack.timer("set", "victim", case_id, timer.event_id)
    if how == "info":
        spy = await attack.agent("spy", timers=False)  # no timers on its card at all
        await spy.send("$JS.API.INFO", b"", reply=set_subject)
    else:
        peer = await attack.agent("peer", timers=True)
        topology = attack.mesh.topology
        stream, durable = topology.timers_stream("peer"), topology.timer_durable("peer")
        await peer.send(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            json.dumps({"batch": 1, "expires": 200_000_000}).encode(),
            reply=set_subject,
        )

    # The answer disarms the schedule; the victim's sweep sees a foreign message on its
    # schedule's subject and re-arms the timer from the log, so it still fires once.
    async def rearmed() -> bool:
        held = await attack.held("set", "victim", case_id, timer.event_id)
        return held is not None and bool((held.headers or {}).get(TARGET))

    await eventually(rearmed, timeout=15, interval=0.2, what="the schedule re-armed")
    await woken_once(attack, victim, case_id, timer)


async def test_another_agent_cannot_destroy_a_firing_while_its_agent_is_down(
    attack: Attack,
) -> None:
    victim = await attack.victim()
    spy = await attack.agent("spy", timers=False)
    case_id = await attack.open(delay=3)
    _, timer = await attack.wait_for(case_id, TimerSet)
    [started] = [s for s in attack.mesh.started if s.runner.agent is victim.agent]
    attack.mesh.started.remove(started)
    await started.stop()
    due_subject = attack.timer("due", "victim", case_id, timer.event_id)

    async def firing() -> Any:
        return await attack.held("due", "victim", case_id, timer.event_id)

    await eventually(firing, timeout=15, interval=0.2, what="the firing, waiting")
    await spy.send("$JS.API.INFO", b"", reply=due_subject)
    await quiet(1.0)
    await attack.victim(victim)  # the agent is back
    await woken_once(attack, victim, case_id, timer)


async def test_a_replayed_firing_does_not_wake_the_victim_twice(attack: Attack) -> None:
    victim = await attack.victim()
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open(delay=2)
    await attack.wait_for(case_id, CaseStepCompleted)
    [(stored, _)] = await attack.fired(case_id, victim)
    headers = {**signature_of(stored), "Nats-Msg-Id": str(uuid.uuid4())}
    await store(peer, stored.subject, stored.body, headers)
    await quiet(3.0)
    assert len(victim.woken) == 1, f"woken {len(victim.woken)} times"


async def test_a_stuffed_case_does_not_silence_the_victims_timer(attack: Attack) -> None:
    victim = await attack.victim()
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open(delay=4)
    _, timer = await attack.wait_for(case_id, TimerSet)

    def stuffing(size: int) -> TimerSet:
        return TimerSet(
            case_id=case_id,
            actor="peer",
            payload=TimerSetPayload(
                name="stuffing",
                due_at=datetime.now(UTC) + timedelta(days=1),
                business_due_at=datetime.now(UTC) + timedelta(days=1),
                delay_seconds=86_400,
                data={"x": "y" * size},
            ),
        )

    # The log takes no event over 256 KiB (every reader must pass one on whole) ...
    with pytest.raises(nats.js.errors.BadRequestError, match="message size exceeds"):
        await attack.publish(peer, stuffing(600_000))
    # ... and the reader answers a case of many large ones in pages.
    for _ in range(6):
        await attack.publish(peer, stuffing(200_000))
    await woken_once(attack, victim, case_id, timer)


async def test_deep_timer_data_does_not_stop_the_event_store(attack: Attack) -> None:
    peer = await attack.agent("peer", timers=True)
    nested: dict[str, Any] = {}
    for _ in range(300):
        nested = {"n": nested}
    case_id = await attack.open()
    # Past the SDK (which refuses data nested deeper than 16): written by hand.
    payload = TimerSetPayload(
        name=DEADLINE,
        due_at=datetime.now(UTC).replace(microsecond=0) + timedelta(days=1),
        business_due_at=datetime.now(UTC).replace(microsecond=0) + timedelta(days=1),
        delay_seconds=86_400,
        data=nested,
    )
    with pytest.raises(PermanentError, match="nests deeper"):
        timer_payload(
            DEADLINE, now=datetime.now(UTC), after=timedelta(1), at=None, clock_rate=1, data=nested
        )
    await attack.publish(peer, TimerSet(case_id=case_id, actor="peer", payload=payload))
    after = await attack.open()
    await attack.verify(after)


async def test_a_naive_due_time_does_not_crash_the_verifier(attack: Attack) -> None:
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open()
    naive = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(hours=1)
    timer = TimerSet(
        case_id=case_id,
        actor="peer",
        payload=TimerSetPayload(
            name=DEADLINE, due_at=naive, business_due_at=naive, delay_seconds=1
        ),
    )
    await attack.publish(peer, timer)
    fired = await attack.publish(
        peer,
        TimerFired(
            case_id=case_id,
            causation_id=timer.event_id,
            actor="peer",
            payload=TimerFiredPayload(timer_id=timer.event_id, name=DEADLINE, due_at=naive),
        ),
    )
    report = await attack.verify(case_id)
    assert named(report, fired), report.violations


async def test_a_backdated_due_time_is_named(attack: Attack) -> None:
    peer = await attack.agent("peer", timers=True)
    case_id = await attack.open()
    timer = TimerSet(
        case_id=case_id,
        actor="peer",
        payload=TimerSetPayload(
            name="police_report_deadline",
            due_at=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1),
            business_due_at=datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1),
            delay_seconds=14 * 86_400,
        ),
    )
    at_set = await attack.publish(peer, timer)
    fired = await attack.publish(
        peer,
        TimerFired(
            case_id=case_id,
            causation_id=timer.event_id,
            actor="peer",
            payload=TimerFiredPayload(
                timer_id=timer.event_id, name=timer.payload.name, due_at=timer.payload.due_at
            ),
        ),
    )
    report = await attack.verify(case_id)
    assert named(report, at_set) or named(report, fired), report.violations
