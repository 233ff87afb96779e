"""The consumer loop under the failures real agents meet: crashes on the last
delivery, drifted durables, hung handlers, retries inside a case, odd exceptions."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

from nats.aio.client import Client

from contracts import CaseOpened, CaseOpenedPayload, CaseStepCompleted, encode
from mesh import HandlerContext, TransientError
from mesh._broker.pinned import PIN_GROUP, consumer_info, ensure_pinned_consumer
from mesh._broker.provisioning import Outcome, ensure_stream
from mesh._broker.topology import Topology
from mesh._runtime.durables import partition_durables
from mesh.testing import MeshTestKit, eventually, unique_root
from tests.integration.agents import complete_step, stepper
from tests.integration.test_agent_runtime import FAST, _at_least


async def test_a_message_whose_last_delivery_crashed_is_dead_lettered(
    nc: Client, nats_url: str
) -> None:
    topology = Topology(unique_root())
    settings = FAST.model_copy(
        update={"ack_wait": 0.5, "pin_timeout": 1.0, "subject_root": topology.root}
    )
    js = nc.jetstream()
    for config in topology.streams():
        await ensure_stream(js, config)
    agent = stepper()
    consumers = partition_durables(agent.card, topology, settings)
    for consumer in consumers:
        await ensure_pinned_consumer(nc, consumer)
    opened = CaseOpened(
        case_id="c-crash", actor="crm", payload=CaseOpenedPayload(kind="k", source="s")
    )
    await js.publish(topology.subjects.for_event(opened), encode(opened))
    copy = await eventually(lambda: js.get_msg(topology.work_stream, 1), what="the work copy")
    durable = consumers[int(copy.subject.split(".")[2])].name
    # An agent that dies mid-handling on every delivery: fetched, never settled.
    inbox = nc.new_inbox()
    doomed = await nc.subscribe(inbox)
    for _ in range(settings.max_deliver):
        request = {"batch": 1, "expires": 5_000_000_000, "group": PIN_GROUP}
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{topology.work_stream}.{durable}",
            json.dumps(request).encode(),
            reply=inbox,
        )
        await doomed.next_msg(timeout=5)
        await asyncio.sleep(0.6)
    await doomed.unsubscribe()

    async with MeshTestKit(agent, nats_url=nats_url, root=topology.root, settings=settings) as kit:
        [letter] = await eventually(lambda: _at_least(kit, 1), what="a dead letter")
        assert letter.kind == "exhausted"
        assert "never settled" in letter.reason
        assert [s.event.event_name() for s in await kit.history("c-crash")] == ["case_opened"]


async def test_an_agent_brings_its_drifted_durable_in_line(nc: Client, nats_url: str) -> None:
    topology = Topology(unique_root())
    js = nc.jetstream()
    for config in topology.streams():
        await ensure_stream(js, config)
    agent = stepper()
    declared = partition_durables(agent.card, topology, FAST)[0]
    stale = dataclasses.replace(
        declared,
        config=dataclasses.replace(declared.config, max_deliver=3, ack_wait=99.0),
        pin_timeout=30.0,
    )
    await ensure_pinned_consumer(nc, stale)

    async with MeshTestKit(agent, nats_url=nats_url, root=topology.root, settings=FAST) as kit:
        [report] = [r for r in kit.runners[0].reports if r.resource.endswith("/stepper_p0")]
        assert report.outcome is Outcome.UPDATED
        live = await consumer_info(nc, topology.work_stream, "stepper_p0")
        assert live is not None
        assert live["config"]["max_deliver"] == -1
        assert live["config"]["ack_wait"] == FAST.ack_wait * 1e9
        assert live["config"]["priority_timeout"] == FAST.pin_timeout * 1e9


async def test_a_hung_handler_stalls_only_its_own_case(nats_url: str) -> None:
    finished: dict[str, float] = {}

    async def slow_first_time(event: CaseOpened, ctx: HandlerContext) -> None:
        assert event.case_id is not None
        if event.case_id == "stuck" and ctx.delivery == 1:
            await asyncio.sleep(3600)  # a gateway that never answers
        await complete_step(event, ctx)
        finished[event.case_id] = time.monotonic()

    settings = FAST.model_copy(update={"handler_timeout": 0.5})
    async with MeshTestKit(stepper(slow_first_time), nats_url=nats_url, settings=settings) as kit:
        started = time.monotonic()
        await kit.open_case("claim", case_id="stuck")
        await kit.open_case("claim", case_id="fine")
        await kit.wait_for(CaseStepCompleted, "fine")
        await kit.wait_for(CaseStepCompleted, "stuck")
    assert finished["fine"] - started < 0.5, "the healthy case waited for the hung one"
    assert finished["stuck"] - started >= 0.5  # timed out, retried, then succeeded


async def test_a_retry_does_not_let_later_events_of_the_case_overtake(nats_url: str) -> None:
    handled: list[tuple[int, int]] = []

    async def flaky_first(event: CaseOpened, ctx: HandlerContext) -> None:
        n = int(event.payload.data["n"])
        if n == 0 and ctx.delivery == 1:
            raise TransientError("first event hits a hiccup")
        handled.append((n, ctx.delivery))

    settings = FAST.model_copy(update={"retry_base_delay": 0.2, "retry_max_delay": 0.3})
    async with MeshTestKit(stepper(flaky_first), nats_url=nats_url, settings=settings) as kit:
        for n in range(4):
            await kit.open_case("claim", {"n": n}, case_id="ordered")
        await eventually(lambda: len(handled) == 4, what="four handled")
    assert [n for n, _ in handled] == [0, 1, 2, 3]
    assert handled[0] == (0, 2)


async def test_a_body_filed_under_another_case_is_refused(nats_url: str) -> None:
    async with MeshTestKit(stepper(), nats_url=nats_url, settings=FAST) as kit:
        victim = CaseOpened(
            case_id="victim", actor="crm", payload=CaseOpenedPayload(kind="k", source="s")
        )
        subject = kit.topology.subjects.case_event("innocent", "case_opened")
        body = encode(victim)
        await kit.js.publish(subject, body, headers=kit.identity.signature_headers(subject, body))
        [letter] = await eventually(lambda: _at_least(kit, 1), what="a dead letter")
        assert letter.kind == "malformed"
        assert "belongs to case 'victim'" in letter.reason
        assert await kit.history("victim") == []


async def test_a_handler_raising_cancelled_error_is_retried_not_fatal(nats_url: str) -> None:
    async def odd(event: CaseOpened, ctx: HandlerContext) -> None:
        if ctx.delivery == 1:
            raise asyncio.CancelledError  # e.g. leaked from a library's internal task
        await complete_step(event, ctx)

    async with MeshTestKit(stepper(odd), nats_url=nats_url, settings=FAST) as kit:
        first = await kit.open_case("claim")
        await kit.wait_for(CaseStepCompleted, first.case_id)
        second = await kit.open_case("claim")  # the loop is still alive
        await kit.wait_for(CaseStepCompleted, second.case_id)
