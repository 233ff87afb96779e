"""Attacks on the partitioned work stream (commit 4feb3f8): agents consume the case log
through `<ROOT>_WORK`, a server-made copy of `<ROOT>_CASES` filed under a partition of
the case id, one pinned consumer per agent and partition (`<agent>_p<k>`).

Refused (who refuses): another agent's partition consumers, any consumer management or
direct read of the work stream (the broker); a pull outside the pin group or with a
forged pin (the server); a publish into the work stream (no stream takes it) or a forged
`Nats-Stream-Source` (the server); a copy signed over another subject or carrying
another case (the consumers, on the case subject the copy maps back to).

Got through and mended (now asserted): a `Status` header on an event hid it from every
reader and stalled a consumer's partition (statuses are now told by subject); one case's
retry held every case of its partition (work copies are now ordered by case).

Got through, kept as strict xfails naming the mechanism: JetStream answers to requests
an agent may make land in the case log under any subject the agent names as reply (a
decision type, a case not yet opened). The server does not check a reply subject
against the requester's permissions; the fix is account isolation (the streams in an
account of their own, agents reaching JetStream through service imports).

This module runs its own mesh: some attacks leave the append-only log poisoned for good.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import nats.js.errors
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from contracts import (
    CaseClosed,
    CaseEscalated,
    CaseEscalatedPayload,
    CaseOpened,
    CaseStepCompleted,
)
from contracts.cards import AgentCard
from contracts.envelope import Event
from mesh import HandlerContext
from mesh._broker.pinned import consumer_info
from mesh._broker.stored_messages import original_of_work
from mesh._runtime.runtime import AgentRunner
from mesh._sdk.agent import Agent
from mesh.settings import MeshSettings
from mesh.testing import eventually
from services.stack.stack import running_stack
from tests.security.kit import (
    Connection,
    Mesh,
    claim,
    lapsed,
    new_ref,
    pull,
    screening,
    signed,
    store,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]

PIN_GROUP = "mesh"


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A mesh of this module's own (the package's is left clean): some attacks below
    write into the case log what no one can take out again."""
    async with running_stack(tmp_path_factory.mktemp("partitions") / "mesh") as stack:
        attacked = Mesh(stack)
        try:
            yield attacked
        finally:
            await attacked.close()


# ---------------------------------------------------------------------------- helpers


def partition_of(case_id: str, partitions: int) -> int:
    """The server's `partition(n, 1)`: FNV-1a (32 bit) of the case id, modulo n. Anyone
    can compute it, so an attacker chooses case ids in a victim's partition at will
    (checked against the server's copies in `test_nothing_enters_the_work_stream_…`)."""
    digest = 0x811C9DC5
    for byte in case_id.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFFFFFF
    return digest % partitions


def case_in_partition(partition: int, partitions: int, prefix: str) -> str:
    while True:
        case_id = f"{prefix}-{new_ref('p')}"
        if partition_of(case_id, partitions) == partition:
            return case_id


def ref_in_partition(partition: int, partitions: int, prefix: str) -> str:
    """An external reference whose case (`crm-<ref>`) falls in `partition`."""
    while True:
        ref = new_ref(prefix)
        if partition_of(f"crm-{ref}", partitions) == partition:
            return ref


async def enrol_agent(
    mesh: Mesh, name: str, *, consumes: list[str], produces: list[str]
) -> tuple[AgentCard, Connection]:
    card = AgentCard(
        agent_id=f"{name}-{new_ref('a')[-6:]}",
        name=f"{name} (enrolled by an operator, later compromised)",
        version="1",
        owner="claims-team",
        purpose="an agent of the mesh like any other",
        consumes=consumes,
        produces=produces,
    )
    return card, await mesh.enrol(card)


def escalation(case_id: str, actor: str, cause: Event, reason: str = "x") -> CaseEscalated:
    return CaseEscalated(
        case_id=case_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        actor=actor,
        payload=CaseEscalatedPayload(step="review", reason=reason),
    )


async def work_copy(mesh: Mesh, work_subject: str) -> Msg:
    """The work stream's latest copy on `work_subject`, read as the operator."""
    msg = await mesh.operator.request(
        f"$JS.API.DIRECT.GET.{mesh.topology.work_stream}",
        json.dumps({"last_by_subj": work_subject}).encode(),
        timeout=5,
    )
    assert not (msg.headers or {}).get("Status"), (work_subject, msg.headers)
    return msg


def work_subject(mesh: Mesh, case_id: str, event_type: str) -> str:
    p = partition_of(case_id, mesh.topology.partitions)
    return f"{mesh.topology.root}.work.{p}.{case_id}.{event_type}"


async def start_runner(agent: Agent, who: Connection, mesh: Mesh, **settings: Any) -> AgentRunner:
    """The mesh's own agent runtime, in this process, with the agent's enrolled key and
    connection: it binds to the partition consumers the registry made."""
    assert who.identity is not None
    runner = AgentRunner(
        agent,
        nc=who.nc,
        identity=who.identity,
        settings=MeshSettings(subject_root=mesh.topology.root, **settings),
        topology=mesh.topology,
        provision=False,
        read_through_reader=True,
    )
    await runner.start()
    return runner


# ---------------------------------------------------------------------------- refused


async def test_an_agent_touches_no_partition_consumer_but_its_own_and_manages_none(
    mesh: Mesh,
) -> None:
    """An enrolled agent (a compromised one) inspects, pulls from, acks on, unpins,
    pauses and deletes the payment agent's partition consumers; unpins, pauses,
    deletes and rewrites its own (no filter: the whole log; a push into its inbox);
    creates consumers on the work stream; lists, inspects, reads (by sequence, by
    subject, direct), purges, updates and deletes the work stream. An outside system and
    an anonymous connection pull from payment's consumer and read the stream. The broker
    refuses each; every consumer keeps its filters and its pin group."""
    work = mesh.topology.work_stream
    root = mesh.topology.root
    card, spy = await enrol_agent(
        mesh, "spy", consumes=["case_opened"], produces=["case_step_completed"]
    )
    own = f"{card.agent_id}_p0"
    victim = "claims-payment_p0"
    js = mesh.operator.jetstream()
    before = {c.name: c.config for c in await js.consumers_info(work)}
    state = (await js.stream_info(work)).state
    everything = {
        "durable_name": own,
        "ack_policy": "none",
        "deliver_policy": "all",
        "deliver_subject": f"_INBOX.{card.agent_id}.spy",
    }
    attempts: list[tuple[str, dict[str, Any]]] = [
        (f"$JS.API.CONSUMER.INFO.{work}.{victim}", {}),
        (f"$JS.API.CONSUMER.MSG.NEXT.{work}.{victim}", {"batch": 10, "group": PIN_GROUP}),
        (f"$JS.ACK.{work}.{victim}.1.1.1.1.0", {}),
        (f"$JS.API.CONSUMER.UNPIN.{work}.{victim}", {"group": PIN_GROUP}),
        (f"$JS.API.CONSUMER.PAUSE.{work}.{victim}", {"pause_until": "2099-01-01T00:00:00Z"}),
        (f"$JS.API.CONSUMER.DELETE.{work}.{victim}", {}),
        (f"$JS.API.CONSUMER.UNPIN.{work}.{own}", {"group": PIN_GROUP}),
        (f"$JS.API.CONSUMER.PAUSE.{work}.{own}", {"pause_until": "2099-01-01T00:00:00Z"}),
        (f"$JS.API.CONSUMER.DELETE.{work}.{own}", {}),
        (f"$JS.API.CONSUMER.CREATE.{work}.{own}", {"stream_name": work, "config": everything}),
        (
            f"$JS.API.CONSUMER.CREATE.{work}.{own}.{root}.work.>",
            {"stream_name": work, "config": {**everything, "filter_subject": f"{root}.work.>"}},
        ),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{work}.{own}", {"stream_name": work}),
        (f"$JS.API.CONSUMER.CREATE.{work}", {"stream_name": work, "config": everything}),
        (f"$JS.API.CONSUMER.LIST.{work}", {}),
        (f"$JS.API.CONSUMER.NAMES.{work}", {}),
        (f"$JS.API.STREAM.INFO.{work}", {}),
        (f"$JS.API.STREAM.MSG.GET.{work}", {"seq": 1}),
        (f"$JS.API.DIRECT.GET.{work}", {"seq": 1}),
        (f"$JS.API.DIRECT.GET.{work}.{root}.work.0.x.case_opened", {}),
        (f"$JS.API.STREAM.PURGE.{work}", {}),
        (f"$JS.API.STREAM.UPDATE.{work}", {"name": work, "subjects": [f"{root}.work.>"]}),
        (f"$JS.API.STREAM.MSG.DELETE.{work}", {"seq": 1}),
        (f"$JS.API.STREAM.DELETE.{work}", {}),
    ]
    for subject, request in attempts:
        await spy.refused_publish(subject, json.dumps(request).encode())
    crm, anonymous = await mesh.connect("crm"), await mesh.anonymous()
    for outsider in (crm, anonymous):
        for subject in (
            f"$JS.API.CONSUMER.MSG.NEXT.{work}.{victim}",
            f"$JS.API.DIRECT.GET.{work}",
            f"$JS.API.STREAM.PURGE.{work}",
        ):
            await outsider.refused_publish(subject, json.dumps({"batch": 1, "seq": 1}).encode())

    after = {c.name: c.config for c in await js.consumers_info(work)}
    assert after.keys() == before.keys()
    for name in (own, victim):
        assert after[name].filter_subjects == before[name].filter_subjects
        assert after[name].deliver_subject is None
        raw = await consumer_info(mesh.operator, work, name)
        assert raw is not None
        assert raw["config"]["priority_groups"] == [PIN_GROUP]
        assert raw["config"]["priority_policy"] == "pinned_client"
        assert not raw.get("paused")
    assert (await js.stream_info(work)).state.messages >= state.messages


async def test_a_partition_consumer_serves_only_through_its_pin_group(mesh: Mesh) -> None:
    """The agent's own consumer, with a message waiting: a second connection with the
    same key pulls it without the group, with another group, and with a forged pin id
    while the first holds the pin; none gets the message (400, 400, 423)."""
    work = mesh.topology.work_stream
    card, holder = await enrol_agent(
        mesh, "pinned", consumes=["case_opened"], produces=["case_step_completed"]
    )
    case_id = await mesh.open(lapsed(new_ref("pin")))
    p = partition_of(case_id, mesh.topology.partitions)
    durable = f"{card.agent_id}_p{p}"
    taken, _ = await pull(holder, work, durable, {"batch": 1, "group": PIN_GROUP}, wait=5)
    assert [m.subject for m in taken] == [work_subject(mesh, case_id, "case_opened")]
    pin = (taken[0].headers or {})["Nats-Pin-Id"]

    other = await mesh.connect(card.agent_id, holder.identity)
    await taken[0].nak()  # back in the consumer: there to be stolen
    answers = {}
    for label, request in (
        ("no group", {"batch": 1, "expires": 500_000_000}),
        ("another group", {"batch": 1, "expires": 500_000_000, "group": "other"}),
        ("forged pin", {"batch": 1, "expires": 500_000_000, "group": PIN_GROUP, "id": "x"}),
    ):
        got, statuses = await pull(other, work, durable, request)
        assert got == [], label
        answers[label] = statuses
    assert answers["no group"] == ["400 Bad Request - Priority Group missing"]
    assert answers["another group"] == ["400 Bad Request - Invalid Priority Group"]
    assert [s.split(" ")[0] for s in answers["forged pin"]] == ["423"]
    # It was there to take all along: once the pin lapses, a pull in the group gets it.
    again, _ = await pull(holder, work, durable, {"batch": 1, "group": PIN_GROUP}, wait=10)
    assert [m.data for m in again] == [taken[0].data]
    assert (again[0].headers or {})["Nats-Pin-Id"] != pin
    await again[0].ack()


async def test_nothing_enters_the_work_stream_but_the_servers_copy(mesh: Mesh) -> None:
    """An agent publishes straight into a work subject (broker: no); an operator, who
    may publish anywhere, does too (no stream takes it: the work stream has no subjects).
    The agent publishes an event of its own type with a forged `Nats-Stream-Source` (also
    with a trailing space in the name): the server refuses it. With look-alike headers
    (other case, other name) it is stored, and the copy still maps back to the case
    subject and case-log sequence the server wrote, not to the forged ones."""
    work = mesh.topology.work_stream
    cases = mesh.topology.cases_stream
    card, spy = await enrol_agent(
        mesh, "forger", consumes=["case_opened"], produces=["case_escalated"]
    )
    assert spy.identity is not None
    case_id = await mesh.open(lapsed(new_ref("forge")))
    opened, _ = await mesh.wait_for_event(case_id, CaseOpened)
    await mesh.wait_for_event(case_id, CaseClosed)
    js = mesh.operator.jetstream()
    before = (await js.stream_info(work)).state.last_seq

    direct = work_subject(mesh, case_id, "case_escalated")
    await spy.refused_publish(direct, b"{}")
    with pytest.raises(nats.js.errors.NoStreamResponseError):
        await js.publish(direct, b"{}")

    subject = mesh.subjects.case_event(case_id, "case_escalated")
    forged = f"{cases} {opened.sequence} {subject} x {subject}"
    for name in ("Nats-Stream-Source", "Nats-Stream-Source "):
        body, headers = signed(
            escalation(case_id, card.agent_id, opened.event), spy.identity, subject
        )
        with pytest.raises(nats.js.errors.BadRequestError) as refused:
            await spy.js.publish(subject, body, headers={**headers, name: forged})
        assert refused.value.err_code == 10227, refused.value  # stream source not allowed
    assert (await js.stream_info(work)).state.last_seq == before

    for name in ("nats-stream-source", "X-Nats-Stream-Source", "Nats-Stream-Source-Forged"):
        event = escalation(case_id, card.agent_id, opened.event, reason=name)
        body, headers = signed(event, spy.identity, subject)
        sequence = await store(spy, subject, body, {**headers, name: forged})
        copy = await eventually(
            lambda b=body: _copy_of(mesh, direct, b), timeout=10, what="the work copy"
        )
        assert copy.headers is not None
        assert copy.headers[name] == forged
        assert copy.headers["Nats-Subject"] == direct  # the partition computed here
        original = original_of_work(
            copy.headers["Nats-Subject"], copy.data, copy.headers, opened.stored_at, cases
        )
        assert (original.subject, original.sequence) == (subject, sequence)
        assert original.sequence != opened.sequence


async def _copy_of(mesh: Mesh, work_subject: str, body: bytes) -> Msg | None:
    copy = await work_copy(mesh, work_subject)
    return copy if copy.data == body else None


async def test_a_work_copy_is_judged_under_the_case_subject_it_was_signed_on(
    mesh: Mesh,
) -> None:
    """An agent that may write fraud screenings publishes one under case B's subject
    signed over case A's subject, and one about case A under case B's subject (signed
    over B). Both consumers of screenings (fraud, adjudication) get them as work copies,
    map them back to the case subject and refuse them: a signature failure, a case
    mismatch; the dead letters name the case-log subject and sequence, not the copy's."""
    card, spy = await enrol_agent(
        mesh, "screener", consumes=["case_opened"], produces=["case_step_completed"]
    )
    assert spy.identity is not None
    case_b = await mesh.open(lapsed(new_ref("judged")))
    opened, _ = await mesh.wait_for_event(case_b, CaseOpened)
    await mesh.wait_for_event(case_b, CaseClosed)
    case_a = f"crm-{new_ref('other')}"
    subject_a = mesh.subjects.case_event(case_a, "case_step_completed")
    subject_b = mesh.subjects.case_event(case_b, "case_step_completed")
    mark = await mesh.dead_letter_mark()

    elsewhere = screening(case_b, opened.event, card.agent_id)
    body_1, headers_1 = signed(elsewhere, spy.identity, subject_a)
    seq_1 = await store(spy, subject_b, body_1, headers_1)
    other_case = screening(case_a, opened.event, card.agent_id)
    body_2, headers_2 = signed(other_case, spy.identity, subject_b)
    seq_2 = await store(spy, subject_b, body_2, headers_2)

    expected = {body_1: ("signature", seq_1), body_2: ("malformed", seq_2)}
    letters = await mesh.wait_for_dead_letters(mark, lambda d: d.body in expected, count=4)
    filed = {(d.consumer, expected[d.body]) for d in letters}
    assert filed == {
        (consumer, outcome)
        for consumer in ("claims-fraud", "claims-adjudication")
        for outcome in expected.values()
    }
    for letter in letters:
        assert letter.original_subject == subject_b
        assert letter.original_stream == mesh.topology.cases_stream
        assert letter.original_sequence == expected[letter.body][1]
    assert "belongs to case" in next(d.reason for d in letters if d.body == body_2)


async def test_a_forged_pin_header_moves_no_partition(mesh: Mesh) -> None:
    """An agent publishes events another agent consumes with a `Nats-Pin-Id` header of
    its own (a pin id the server never gave). The consumer (the mesh's runtime) handles
    them once each, under the pin the server stamps, and gains no partition by it."""
    card, victim = await enrol_agent(
        mesh, "pinheld", consumes=["case_escalated"], produces=["case_closed"]
    )
    _, spy = await enrol_agent(
        mesh, "pinner", consumes=["case_opened"], produces=["case_escalated"]
    )
    assert spy.identity is not None
    handled: list[str] = []
    agent = Agent(card)

    @agent.on(CaseEscalated)
    async def escalated(event: CaseEscalated, ctx: HandlerContext) -> None:
        handled.append(event.case_id)

    runner = await start_runner(agent, victim, mesh)
    try:
        cause = (await mesh.history(await mesh.open(lapsed(new_ref("cause")))))[0]
        first = case_in_partition(2, mesh.topology.partitions, "crm-pin")
        subject = mesh.subjects.case_event(first, "case_escalated")
        event = escalation(first, spy.name, cause.event)
        await store(spy, subject, *signed(event, spy.identity, subject))
        await eventually(lambda: first in handled, timeout=15, what="the first handled")
        assert runner.partitions is not None
        handovers = runner.partitions.handovers
        forged = [case_in_partition(2, mesh.topology.partitions, "crm-pin") for _ in range(3)]
        for case_id in forged:
            subject = mesh.subjects.case_event(case_id, "case_escalated")
            body, headers = signed(
                escalation(case_id, spy.name, cause.event), spy.identity, subject
            )
            await store(spy, subject, body, {**headers, "Nats-Pin-Id": f"forged-{case_id}"})
        await eventually(
            lambda: set(forged) <= set(handled), timeout=15, what="the forged-pin events handled"
        )
        await asyncio.sleep(1.0)
        mine = [case_id for case_id in handled if case_id in {first, *forged}]
        assert sorted(mine) == sorted([first, *forged])  # once each
        assert runner.partitions.handovers == handovers
    finally:
        await runner.stop()


# ---------------------------------------------------------------------------- got through


@pytest.mark.xfail(
    strict=True,
    reason="nats-server does not check a request's reply subject against the "
    "requester's publish permissions, and JetStream answers into the account: an agent's "
    "$JS.API.INFO, CONSUMER.INFO and MSG.NEXT on its own partition consumers, asked with "
    "reply=<root>.case.<any>.<any type>, are stored in the case log (a decision type "
    "only policy may write), copied to WORK and delivered to that type's consumers. Fix: "
    "mesh/_broker/permissions.py — the case streams must not share an account with "
    "agents (JetStream via service imports, whose replies stay in the requester's "
    "account), or agents get no direct JetStream API at all",
)
async def test_jetstream_answers_to_an_agent_do_not_land_in_the_case_log(mesh: Mesh) -> None:
    """Intake (its own key, as `mesh run` keeps it) asks JetStream about itself with a
    reply subject in a case it never saw — an `action_approved`, which only the policy
    service may write; an enrolled agent pulls its own partition consumer the same way."""
    work, cases = mesh.topology.work_stream, mesh.topology.cases_stream
    target = mesh.subjects.case_event(f"crm-{new_ref('victim')}", "action_approved")
    intake = await mesh.connect("claims-intake")
    await intake.send("$JS.API.INFO", b"", reply=target)
    await intake.send(f"$JS.API.CONSUMER.INFO.{work}.claims-intake_p0", b"", reply=target)
    card, spy = await enrol_agent(
        mesh, "replier", consumes=["case_opened"], produces=["case_step_completed"]
    )
    request = {"batch": 1, "no_wait": True, "group": PIN_GROUP}
    await spy.send(
        f"$JS.API.CONSUMER.MSG.NEXT.{work}.{card.agent_id}_p0",
        json.dumps(request).encode(),
        reply=target,
    )
    await asyncio.sleep(1.0)
    try:
        stored = await mesh.operator.jetstream().get_last_msg(cases, target)
    except nats.js.errors.NotFoundError:
        return
    pytest.fail(f"stored in {cases} as #{stored.seq} on {target}: {(stored.data or b'')[:60]!r}")


@pytest.mark.xfail(
    strict=True,
    reason="same mechanism as the test above: the reply lands on "
    "<root>.case.crm-<ref>.case_opened before the crm system opens the case; the "
    "ingress's conditional publish then fails (Expected-Last-Subject-Sequence 0) and it "
    "cannot read the squatter as a CaseOpened ('malformed event'), so that case id can "
    "never be opened (the log is deny_delete). Fix as above (permissions.py/accounts)",
)
async def test_no_agent_squats_a_case_id_through_a_jetstream_answer(mesh: Mesh) -> None:
    """Case ids are `crm-<external ref>`, predictable. Intake writes `$JS.API.INFO`'s
    answer onto the opening subject of a claim before the crm system sends it."""
    ref = new_ref("squat")
    intake = await mesh.connect("claims-intake")
    await intake.send(
        "$JS.API.INFO", b"", reply=mesh.subjects.case_event(f"crm-{ref}", "case_opened")
    )
    await asyncio.sleep(0.5)
    reply = await mesh.ingress(lapsed(ref))
    assert reply.ok, reply.errors
    await mesh.wait_for_event(f"crm-{ref}", CaseOpened)


async def test_an_event_with_a_status_header_is_in_its_case_history(mesh: Mesh) -> None:
    """An agent escalates a case (a type on its card), adding `Status: 404`."""
    card, spy = await enrol_agent(
        mesh, "hider", consumes=["case_opened"], produces=["case_escalated"]
    )
    assert spy.identity is not None
    case_id = await mesh.open(lapsed(new_ref("hidden")))
    opened, _ = await mesh.wait_for_event(case_id, CaseOpened)
    await mesh.wait_for_event(case_id, CaseClosed)
    subject = mesh.subjects.case_event(case_id, "case_escalated")
    body, headers = signed(escalation(case_id, card.agent_id, opened.event), spy.identity, subject)
    sequence = await store(spy, subject, body, {**headers, "Status": "404"})
    assert sequence in [s.sequence for s in await mesh.history(case_id)]


async def test_one_case_s_retry_does_not_hold_other_cases_of_its_partition(
    mesh: Mesh,
) -> None:
    """An agent whose dependency fails for one case (an outside system can open such
    a case; a compromised agent can write the event) keeps handling the other cases: the
    mesh's own runtime, as `mesh run` runs it, on two cases in one partition."""
    card, victim = await enrol_agent(
        mesh, "retrier", consumes=["case_escalated"], produces=["case_closed"]
    )
    _, spy = await enrol_agent(
        mesh, "writer", consumes=["case_opened"], produces=["case_escalated"]
    )
    assert spy.identity is not None
    handled: list[str] = []
    failing = case_in_partition(3, mesh.topology.partitions, "crm-failing")
    neighbour = case_in_partition(3, mesh.topology.partitions, "crm-neighbour")
    agent = Agent(card)

    @agent.on(CaseEscalated)
    async def escalated(event: CaseEscalated, ctx: HandlerContext) -> None:
        if event.case_id == failing:
            raise ConnectionError("the dependency is down for this case")
        handled.append(event.case_id)

    runner = await start_runner(agent, victim, mesh, retry_base_delay=10.0, retry_max_delay=10.0)
    try:
        cause = (await mesh.history(await mesh.open(lapsed(new_ref("cause")))))[0]
        for case_id in (failing, neighbour):
            subject = mesh.subjects.case_event(case_id, "case_escalated")
            event = escalation(case_id, spy.name, cause.event)
            await store(spy, subject, *signed(event, spy.identity, subject))
        await eventually(
            lambda: neighbour in handled or None,
            timeout=8,
            what=f"{neighbour} handled while {failing} is retried",
        )
    finally:
        await runner.stop()


async def test_a_status_header_does_not_stall_a_partition_of_fraud_screening(
    mesh: Mesh,
) -> None:
    """An agent allowed to write screenings publishes, in one partition, as many as the
    fraud agent's consumer lets be unacknowledged, each with a `Status: 100` header.
    Then the crm system opens a claim whose case lies in that partition: intake accepts
    it, and fraud screening must follow."""
    card, spy = await enrol_agent(
        mesh, "staller", consumes=["case_opened"], produces=["case_step_completed"]
    )
    assert spy.identity is not None
    partitions = mesh.topology.partitions
    p = 5
    durable = f"claims-fraud_p{p}"
    raw = await consumer_info(mesh.operator, mesh.topology.work_stream, durable)
    assert raw is not None
    limit = int(raw["config"]["max_ack_pending"])
    junk = case_in_partition(p, partitions, "crm-junk")
    subject = mesh.subjects.case_event(junk, "case_step_completed")
    cause = (await mesh.history(await mesh.open(lapsed(new_ref("cause")))))[0]
    for _ in range(limit):
        event = screening(junk, cause.event, card.agent_id)
        body, headers = signed(event, spy.identity, subject)
        await store(spy, subject, body, {**headers, "Status": "100"})

    case_id = await mesh.open(claim(ref_in_partition(p, partitions, "stalled")))
    assert partition_of(case_id, partitions) == p

    def step_by(actor: str) -> Any:
        return lambda history: [
            s for s in history if isinstance(s.event, CaseStepCompleted) and s.event.actor == actor
        ]

    await mesh.wait_for(case_id, step_by("claims-intake"), "intake accepting the claim")
    await mesh.wait_for(case_id, step_by("claims-fraud"), "fraud screening the claim", timeout=30)
