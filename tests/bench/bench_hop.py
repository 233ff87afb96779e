"""Benchmark: one agent hop through the SDK against the same hop in raw nats-py.

A hop: fetch an event, decode it, decide, publish a signed derived event and await its
JetStream ack, ack the input. Both paths run on the same embedded nats-server
(sync_interval: always) in the same run, on identical pre-loaded streams and identical
consumer configs, interleaved round by round. Two regimes:

- one in flight (fetch 1, handle, repeat): the latency floor;
- under load: a fetched window of W messages handled concurrently (the SDK keeps
  per-case order inside the window; the inputs here are all different cases).

Hop latency is per message, from the start of its handling to its ack being sent.
Run: `make bench` (or `python -m tests.bench.bench_hop --rounds 5`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from contracts import (
    AgentCard,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
    EventDecoder,
    derived_event_id,
    encode,
)
from mesh import Agent, AgentRunner, HandlerContext, Identity, MeshSettings, Topology
from mesh._broker.connection import connect
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.provisioning import ensure_consumer, ensure_stream
from mesh._broker.publisher import MSG_ID_HEADER, EventPublisher
from mesh._runtime.durables import _durable
from mesh.testing import unique_root


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def card() -> AgentCard:
    return AgentCard(
        agent_id="hop",
        name="Hop",
        version="1",
        owner="bench",
        purpose="one hop",
        consumes=["case_opened"],
        produces=["case_step_completed"],
    )


def decide(event: CaseOpened) -> CaseStepCompletedPayload:
    amount = int(event.payload.data.get("amount", 0))
    return CaseStepCompletedPayload(
        step="screen", outcome="accepted" if amount < 1000 else "review", evidence={"a": amount}
    )


async def preload(js: JetStreamContext, topology: Topology, count: int) -> None:
    publisher = EventPublisher(js, Identity.generate(), topology)
    pending = []
    for n in range(count):
        event = CaseOpened(
            case_id=f"case-{n}",
            actor="bench",
            payload=CaseOpenedPayload(kind="claim", source="bench", data={"amount": n % 2000}),
        )
        pending.append(publisher.publish(event))
        if len(pending) == 256:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)


async def fresh_topology(js: JetStreamContext, count: int) -> Topology:
    topology = Topology(unique_root("b"))
    for config in topology.streams():
        await ensure_stream(js, config)
    await preload(js, topology, count)
    return topology


def timed(process: Callable[[Msg], Awaitable[None]], latencies: list[float]):  # type: ignore[no-untyped-def]
    async def wrapper(msg: Msg) -> None:
        started = time.perf_counter()
        await process(msg)
        latencies.append(time.perf_counter() - started)

    return wrapper


async def run_sdk(url: str, count: int, window: int) -> Result:
    nc = await connect(url, name="bench-sdk")
    js = nc.jetstream()
    topology = await fresh_topology(js, count)
    agent = Agent(card())
    done = asyncio.Event()
    handled = 0

    @agent.on(CaseOpened)
    async def on_case_opened(event: CaseOpened, ctx: HandlerContext) -> None:
        nonlocal handled
        await ctx.emit(CaseStepCompleted, decide(event))
        handled += 1
        if handled == count:
            done.set()

    settings = MeshSettings(fetch_batch=window, fetch_wait=0.5, subject_root=topology.root)
    runner = AgentRunner(
        agent, nc=nc, identity=Identity.generate(), settings=settings, topology=topology
    )
    latencies: list[float] = []
    started = time.perf_counter()
    await runner.start()
    assert runner.loop is not None
    runner.loop.process = timed(runner.loop.process, latencies)
    await done.wait()
    seconds = time.perf_counter() - started
    await runner.stop()
    await nc.close()
    return Result("sdk", count, seconds, latencies)


async def run_raw(url: str, count: int, window: int) -> Result:
    nc = await connect(url, name="bench-raw")
    js = nc.jetstream()
    topology = await fresh_topology(js, count)
    identity = Identity.generate()
    id_key = identity.id_key
    decoder = EventDecoder()
    settings = MeshSettings(fetch_batch=window, subject_root=topology.root)
    agent = Agent(card())
    agent.on(CaseOpened)(lambda e, c: asyncio.sleep(0))  # only to derive the same config
    # One plain durable on the case log: what an agent consumer was before partitions,
    # and what raw nats-py does with no replicas to keep in order.
    config = _durable(
        "raw_hop",
        "raw baseline",
        [topology.subjects.case_events_of_type(t) for t in agent.card.consumes],
        settings,
    )
    await ensure_consumer(js, topology.cases_stream, config)
    assert config.durable_name is not None
    subscription = await js.pull_subscribe_bind(config.durable_name, stream=topology.cases_stream)
    latencies: list[float] = []

    async def hop(msg: Msg) -> None:
        began = time.perf_counter()
        event = decoder.decode(msg.data)
        assert isinstance(event, CaseOpened)
        derived = CaseStepCompleted(
            event_id=derived_event_id(event.case_id, event.event_id, "hop", 0, id_key),
            case_id=event.case_id,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
            actor="hop",
            payload=decide(event),
        )
        subject = topology.subjects.for_event(derived)
        body = encode(derived)
        headers = identity.signature_headers(subject, body)
        headers[MSG_ID_HEADER] = derived.event_id
        await js.publish(subject, body, headers=headers)
        await msg.ack()
        latencies.append(time.perf_counter() - began)

    handled = 0
    started = time.perf_counter()
    while handled < count:
        try:
            messages = await subscription.fetch(window, timeout=0.5)
        except TimeoutError:
            continue
        if len(messages) == 1:
            await hop(messages[0])
        else:
            await asyncio.gather(*(hop(m) for m in messages))
        handled += len(messages)
    seconds = time.perf_counter() - started
    await nc.close()
    return Result("raw", count, seconds, latencies)


def report(label: str, results: dict[str, list[Result]]) -> None:
    print(f"\n== {label} ==")
    medians = {}
    for name in ("raw", "sdk"):
        rounds = results[name]
        for number, r in enumerate(rounds, 1):
            print(
                f"  {name} round {number}: {r.rate:8.0f} msgs/s  "
                f"p50 {r.percentile(0.5):6.2f} ms  p99 {r.percentile(0.99):6.2f} ms"
            )
        medians[name] = (
            statistics.median(r.rate for r in rounds),
            statistics.median(r.percentile(0.5) for r in rounds),
            statistics.median(r.percentile(0.99) for r in rounds),
        )
        rate, p50, p99 = medians[name]
        print(f"  {name} median : {rate:8.0f} msgs/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(f"  hop ratio SDK/raw: {medians['sdk'][0] / medians['raw'][0]:.2f}")


async def main(rounds: int, single: int, loaded: int, window: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as directory:
        server = EmbeddedNats(Path(directory))
        server.start()
        try:
            print(f"nats-server {server.url} (sync_interval: always), {rounds} rounds")
            for label, count, size in (
                ("one in flight", single, 1),
                (f"under load: window of {window} in flight", loaded, window),
            ):
                results: dict[str, list[Result]] = {"raw": [], "sdk": []}
                for number in range(rounds):
                    # Alternate who goes first, so neither always gets the warmer server.
                    order = ("raw", "sdk") if number % 2 == 0 else ("sdk", "raw")
                    for name in order:
                        run = run_raw if name == "raw" else run_sdk
                        results[name].append(await run(server.url, count, size))
                report(label, results)
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--single", type=int, default=1500, help="events, one in flight")
    parser.add_argument("--loaded", type=int, default=6000, help="events under load")
    parser.add_argument("--window", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.single, args.loaded, args.window))
