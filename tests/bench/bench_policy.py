"""Benchmark: policy decisions.

1. Cedar evaluation alone: `decide()` on the reference bundle (card check + Cedar).
2. On the broker: an agent's `action_requested` → the policy service's decision event,
   timed from the request's publish to the decision's arrival (a core subscription on
   the decision subjects), at a moderate steady rate and at one request in flight.
   Baseline in the same run: a raw nats-py pull consumer doing the same work (fetch,
   decode, evaluate Cedar, publish a signed decision awaiting its ack, ack).

Run: `python -m tests.bench.bench_policy`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from nats.aio.msg import Msg

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionGrant,
    ActionRequested,
    ActionRequestedPayload,
    AgentCard,
    DecisionProvenance,
    EventDecoder,
    derived_event_id,
    encode,
)
from mesh import Identity, MeshSettings, Topology
from mesh._broker.connection import connect
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.provisioning import ensure_consumer, ensure_stream
from mesh._broker.publisher import MSG_ID_HEADER, EventPublisher
from mesh._runtime.durables import _durable
from mesh._trust.onboarding import card_with_key
from mesh._trust.registry_client import RegistryClient
from mesh.testing import unique_root
from services.policy.app import PolicyService
from services.policy.bundle import PolicyBundle
from services.policy.domain import ActionRequest, decide
from services.policy.handlers import policy_card
from services.policy.settings import PolicySettings
from services.registry.app import RegistryService
from tests.bench._enrol import BenchOperator

REFERENCE = Path(__file__).resolve().parents[2] / "deploy" / "policies"
DECISIONS = {"action_approved", "action_denied", "approval_required"}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def adjudicator_card(identity: Identity) -> AgentCard:
    card = AgentCard(
        agent_id="adjudicator",
        name="Adjudication",
        version="1",
        owner="bench",
        purpose="requests payments",
        produces=["action_requested"],
        actions=[ActionGrant(action_type="issue_payment")],
    )
    return card_with_key(card, identity)


def request(n: int) -> ActionRequested:
    return ActionRequested(
        case_id=f"case-{n}",
        actor="adjudicator",
        payload=ActionRequestedPayload(
            action_type="issue_payment",
            parameters={"amount": 10_000 + n % 500_000, "currency": "EUR"},
            evidence={"fraud_score": n % 100},
        ),
    )


def cedar_alone(count: int) -> None:
    bundle = PolicyBundle.load(REFERENCE)
    card = adjudicator_card(Identity.generate())
    latencies = []
    for n in range(count):
        event = request(n)
        began = time.perf_counter()
        decide(
            bundle,
            card,
            ActionRequest(
                request_id=event.event_id,
                case_id=event.case_id or "",
                action_type="issue_payment",
                parameters=event.payload.parameters,
                case_facts=event.payload.evidence,
            ),
        )
        latencies.append(time.perf_counter() - began)
    rate = count / sum(latencies)
    print(
        f"== Cedar evaluation alone (decide: card check + Cedar), {count} decisions ==\n"
        f"  {rate:8.0f} decisions/s  p50 {pct(latencies, 0.5):6.3f} ms  "
        f"p99 {pct(latencies, 0.99):6.3f} ms"
    )


async def round_trips(
    url: str, topology: Topology, agent: Identity, count: int, rate: float, decided_subject: str
) -> list[float]:
    """Publish `count` requests at `rate`/s (0: one in flight); time each to its decision."""
    nc = await connect(url, name="bench-requester")
    publisher = EventPublisher(nc.jetstream(), agent, topology)
    sent: dict[str, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    arrived = asyncio.Event()
    decoder = EventDecoder()

    async def on_decision(msg: Msg) -> None:
        if msg.subject.rsplit(".", 1)[-1] not in DECISIONS:
            return
        decision = decoder.decode(msg.data)
        started = sent.pop(decision.payload.request_id, None)  # type: ignore[attr-defined]
        if started is not None:
            latencies.append(time.perf_counter() - started)
            arrived.set()
            if len(latencies) == count:
                done.set()

    subscription = await nc.subscribe(decided_subject, cb=on_decision)
    await nc.flush()
    began = time.perf_counter()
    if rate < 0:  # a burst: everything at once, for decisions/s
        events = [request(n) for n in range(count)]
        for start in range(0, count, 200):
            chunk = events[start : start + 200]
            for event in chunk:
                sent[event.event_id] = time.perf_counter()
            await asyncio.gather(*(publisher.publish(event) for event in chunk))
    for n in range(count if rate >= 0 else 0):
        event = request(n)
        sent[event.event_id] = time.perf_counter()
        if rate:
            await publisher.publish(event)
            pause = began + (n + 1) / rate - time.perf_counter()
            if pause > 0:
                await asyncio.sleep(pause)
        else:
            arrived.clear()
            await publisher.publish(event)
            await asyncio.wait_for(arrived.wait(), timeout=10)
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - began
    if rate < 0:
        latencies.append(-count / elapsed)  # smuggled out: decisions/s (negative marks it)
    await subscription.unsubscribe()
    await nc.close()
    return latencies


async def raw_decider(url: str, topology: Topology, stop: asyncio.Event) -> None:
    """The same work as the policy service, in raw nats-py, for the baseline."""
    nc = await connect(url, name="bench-raw-policy")
    js = nc.jetstream()
    identity = Identity.generate()
    key = identity.id_key
    bundle = PolicyBundle.load(REFERENCE)
    card = adjudicator_card(Identity.generate())
    decoder = EventDecoder()
    config = _durable(
        "rawpolicy",
        "raw baseline",
        [topology.subjects.case_events_of_type(t) for t in policy_card("rawpolicy").consumes],
        MeshSettings(),
    )
    await ensure_consumer(js, topology.cases_stream, config)
    subscription = await js.pull_subscribe_bind(
        config.durable_name or "", stream=topology.cases_stream
    )

    async def hop(msg: Msg) -> None:
        event = decoder.decode(msg.data)
        assert isinstance(event, ActionRequested)
        decision = decide(
            bundle,
            card,
            ActionRequest(
                request_id=event.event_id,
                case_id=event.case_id or "",
                action_type=event.payload.action_type,
                parameters=event.payload.parameters,
                case_facts=event.payload.evidence,
            ),
        )
        out = ActionApproved(
            event_id=derived_event_id(event.case_id, event.event_id, "rawpolicy", 0, key),
            case_id=event.case_id,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
            actor="rawpolicy",
            payload=ActionDecisionPayload(
                request_id=event.event_id,
                action_type=event.payload.action_type,
                provenance=DecisionProvenance(policy_bundle_hash=decision.bundle_hash),
                reasons=decision.reasons,
            ),
        )
        subject = topology.subjects.case_event(event.case_id or "", "action_approved")
        body = encode(out)
        headers = identity.signature_headers(subject, body)
        headers[MSG_ID_HEADER] = out.event_id
        await js.publish(subject, body, headers=headers)
        await msg.ack()

    while not stop.is_set():
        try:
            messages = await subscription.fetch(64, timeout=0.2)
        except TimeoutError:
            continue
        await asyncio.gather(*(hop(m) for m in messages))
    await nc.close()


def report(name: str, runs: list[list[float]], count: int, rate: float) -> float:
    if rate < 0:
        throughput = statistics.median(-min(r) for r in runs)
        print(f"  {name:7s} burst of {count}: {throughput:8.0f} decisions/s")
        return throughput
    p50 = statistics.median(pct(r, 0.5) for r in runs)
    p99 = statistics.median(pct(r, 0.99) for r in runs)
    label = f"{rate:.0f}/s offered" if rate else "one in flight"
    print(f"  {name:7s} {label}: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  ({count} requests)")
    return p99


async def main(count: int, rate: float, rounds: int) -> None:
    cedar_alone(5000)
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as directory:
        server = EmbeddedNats(Path(directory))
        server.start()
        try:
            for label, offered in (
                ("moderate load", rate),
                ("one in flight", 0.0),
                ("burst", -1.0),
            ):
                print(f"\n== action_requested -> decision on the broker, {label} ==")
                results: dict[str, list[list[float]]] = {"service": [], "raw": []}
                for number in range(rounds):
                    order = ("service", "raw") if number % 2 == 0 else ("raw", "service")
                    for name in order:
                        results[name].append(await one_run(server.url, name, count, offered))
                service_figure = report("service", results["service"], count, offered)
                raw_figure = report("raw", results["raw"], count, offered)
                what = "throughput" if offered < 0 else "p99"
                print(f"  {what} ratio service/raw: {service_figure / raw_figure:.2f}")
        finally:
            server.stop()


async def one_run(url: str, name: str, count: int, rate: float) -> list[float]:
    topology = Topology(unique_root("p"))
    settings = MeshSettings(subject_root=topology.root, data_dir=Path(tempfile.mkdtemp()))
    nc = await connect(url, name=f"bench-{name}")
    for config in topology.streams():
        await ensure_stream(nc.jetstream(), config)
    agent = Identity.generate()
    decided = f"{topology.root}.case.*.*"
    if name == "raw":
        stop = asyncio.Event()
        task = asyncio.create_task(raw_decider(url, topology, stop))
        await asyncio.sleep(0.3)
        try:
            return await round_trips(url, topology, agent, count, rate, decided)
        finally:
            stop.set()
            await task
            await nc.close()
    operator = BenchOperator(settings.data_dir, ["bench"])
    registry = RegistryService(nc, Identity.generate(), settings, operator.settings, topology)
    await registry.start()
    card = adjudicator_card(agent)
    await RegistryClient(nc, topology.subjects).register(card, agent, grant=operator.grant(card))
    service = PolicyService(
        nc, Identity.generate(), settings, PolicySettings(bundle_dir=REFERENCE), topology
    )
    await service.start()
    try:
        return await round_trips(url, topology, agent, count, rate, decided)
    finally:
        await service.stop()
        await registry.stop()
        await nc.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s offered")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.count, args.rate, args.rounds))
