"""Benchmark: the whole mesh (every service and agent its own process, registry-enforced
auth, signed events, fsync always) against a raw nats-py pipeline doing the same hops
and the same stored publishes, in the same run on the same kind of server.

A small claim that is paid takes 6 hops and 8 JetStream publishes (each acked after an
fsync): ingress -> case_opened; intake -> step; fraud -> step; adjudication -> step +
action_requested; policy -> action_approved; payment -> gateway authorize + capture
over HTTP -> action_completed + case_closed. The raw pipeline runs the same six stages
as nats-py pull consumers in one process (ack after publish), and the payment stage
calls the same simulated gateway over HTTP; it does no signing, verification, history
reads or policy evaluation.

Prints cases/s and p50/p99 case latency (first request to final event) for both, and
the ratios. Run: `python -m tests.bench.bench_mesh [--cases 300] [--concurrency 32]`.

`--cluster 3` runs both on a 3-member JetStream cluster (R3 streams); `--replicas N`
runs every claims agent as N processes (the raw pipeline stays one process: it has no
per-case order to keep across processes). `--matrix` runs 1 node, then 3 nodes with 1,
2 and 4 replicas per agent, one after the other, each against its own raw baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import msgspec
import uvicorn
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig

from contracts.eventstore_api import CaseQuery
from contracts.ingress import IngressReply
from mesh._broker.cluster import NatsCluster
from mesh._broker.connection import connect
from mesh._broker.embedded import EmbeddedNats, free_port
from mesh._trust.registry_client import request_with_patience
from services.agents.claims.gateway import GatewaySettings, Ledger, gateway_app
from services.eventstore.export import store_request
from services.stack.demo import make_cases
from services.stack.processes import AGENTS
from services.stack.stack import running_stack


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def small_claims(count: int) -> list[bytes]:
    bodies: list[bytes] = []
    for case in make_cases(count * 3, seed=3):
        if case.kind == "small" and len(bodies) < count:
            case.body["data"]["amount_cents"] = 40_001  # paid straight away, no deductible edge
            bodies.append(msgspec.json.encode(case.body))
    return bodies


# --------------------------------------------------------------------------- the mesh


async def mesh_run(
    count: int, concurrency: int, cluster: int = 0, replicas: int = 1
) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as directory:
        overrides = {"gateway": {"MESH_GATEWAY_FAILURE_RATE": "0"}}
        async with running_stack(
            Path(directory),
            env=overrides,
            cluster=cluster,
            replicas={agent: replicas for agent in AGENTS},
        ) as stack:
            crm = await stack.connect("crm")
            subject = stack.topology.subjects.service("ingress", "crm")
            gate = asyncio.Semaphore(concurrency)

            async def submit(body: bytes) -> str:
                async with gate:
                    msg = await request_with_patience(crm, subject, body, timeout=30, what="open")
                reply = msgspec.json.decode(msg.data, type=IngressReply)
                assert reply.ok, reply
                assert reply.case_id is not None
                return reply.case_id

            ids = set(await asyncio.gather(*(submit(b) for b in small_claims(count))))
            while True:
                views = (
                    await store_request(
                        stack.operator_nc, stack.topology, "cases", CaseQuery(limit=1000)
                    )
                ).cases
                closed = [v for v in views if v.case_id in ids and v.status == "closed"]
                if len(closed) == len(ids):
                    break
                await asyncio.sleep(0.05)
            # From the first case opened to the last one closed, by the broker's clock.
            last = max(v.updated_at for v in closed)
            first = min(v.opened_at for v in closed if v.opened_at)
            latencies = [
                (v.updated_at - v.opened_at).total_seconds() for v in closed if v.opened_at
            ]
            assert all(v.outcome == "paid" for v in closed)
            return len(closed) / (last - first).total_seconds(), latencies


# --------------------------------------------------------------------------- raw nats-py

STAGES = ["intake", "fraud", "adjudication", "policy", "payment"]


async def raw_run(count: int, concurrency: int, cluster: int = 0) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory(prefix="raw-bench-") as directory:
        server: EmbeddedNats | NatsCluster
        if cluster:
            server = NatsCluster(Path(directory) / "nats", size=cluster)
            await asyncio.to_thread(server.start)
            url = server.urls
        else:
            server = EmbeddedNats(Path(directory) / "nats")
            server.start()
            url = server.url
        port = free_port()
        ledger = Ledger(Path(directory) / "gateway.db")
        config = uvicorn.Config(
            gateway_app(GatewaySettings(failure_rate=0.0), ledger),
            port=port,
            log_level="warning",
            lifespan="off",
        )
        gateway = uvicorn.Server(config)
        serving = asyncio.create_task(gateway.serve())
        while not gateway.started:  # noqa: ASYNC110  (uvicorn offers no event)
            await asyncio.sleep(0.01)
        nc = await connect(url, name="raw")
        js = nc.jetstream()
        await js.add_stream(
            StreamConfig(
                name="RAW",
                subjects=["raw.>"],
                storage=StorageType.FILE,
                num_replicas=3 if cluster else 1,
            )
        )
        done: dict[str, float] = {}
        finished = asyncio.Event()
        http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5)

        async def stage(name: str, consume: str, produce: list[str], call_gateway: bool) -> None:
            sub = await js.pull_subscribe(
                consume,
                durable=name,
                stream="RAW",
                config=ConsumerConfig(
                    ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL
                ),
            )

            async def handle(msg: object) -> None:
                case = msg.subject.split(".")[1]  # type: ignore[attr-defined]
                if call_gateway:
                    key = case
                    payment = (
                        await http.post(
                            "/v1/payments",
                            json={
                                "idempotency_key": key,
                                "amount_cents": 40_001,
                                "currency": "EUR",
                                "payee_account": "DE89-1",
                            },
                        )
                    ).json()
                    await http.post(f"/v1/payments/{payment['payment_ref']}/capture")
                for event in produce:
                    await js.publish(f"raw.{case}.{event}", msg.data)  # type: ignore[attr-defined]
                await msg.ack()  # type: ignore[attr-defined]
                if produce[-1] == "closed":
                    done[case] = time.monotonic()
                    if len(done) == count:
                        finished.set()

            while not finished.is_set():
                try:
                    messages = await sub.fetch(64, timeout=0.2)
                except Exception:
                    continue
                await asyncio.gather(*(handle(m) for m in messages))

        stages = [
            asyncio.create_task(stage("intake", "raw.*.opened", ["intake"], False)),
            asyncio.create_task(stage("fraud", "raw.*.intake", ["fraud"], False)),
            asyncio.create_task(
                stage("adjudication", "raw.*.fraud", ["adjudicated", "requested"], False)
            ),
            asyncio.create_task(stage("policy", "raw.*.requested", ["approved"], False)),
            asyncio.create_task(stage("payment", "raw.*.approved", ["completed", "closed"], True)),
        ]
        await asyncio.sleep(0.2)
        started_at: dict[str, float] = {}
        gate = asyncio.Semaphore(concurrency)
        bodies = small_claims(count)
        start = time.monotonic()

        async def open_case(n: int) -> None:
            async with gate:
                case = f"c{n}"
                started_at[case] = time.monotonic()
                await js.publish(f"raw.{case}.opened", bodies[n % len(bodies)])

        await asyncio.gather(*(open_case(n) for n in range(count)))
        waiting = asyncio.ensure_future(finished.wait())
        await asyncio.wait([waiting, *stages], timeout=120, return_when=asyncio.FIRST_COMPLETED)
        for task in stages:
            if task.done():
                task.result()  # a stage that failed says why
        if not finished.is_set():
            raise TimeoutError(f"raw pipeline finished {len(done)} of {count} cases")
        elapsed = max(done.values()) - start
        latencies = [done[c] - started_at[c] for c in done]
        for task in stages:
            task.cancel()
        await asyncio.gather(*stages, return_exceptions=True)
        await http.aclose()
        await nc.close()
        gateway.should_exit = True
        await serving
        await asyncio.to_thread(server.stop)
        return count / elapsed, latencies


async def main(count: int, concurrency: int, rounds: int, configs: list[tuple[int, int]]) -> None:
    print(f"whole mesh vs raw nats-py pipeline: {count} small paid claims, {concurrency} in flight")
    print(
        f"{'nodes':>5} {'repl':>4} {'round':>5} {'mesh cases/s':>13} {'p50':>7} {'p99':>7} | "
        f"{'raw cases/s':>12} {'p50':>7} {'p99':>7} | {'ratio':>5}"
    )
    for cluster, replicas in configs:
        for n in range(1, rounds + 1):
            raw_rate, raw_lat = await raw_run(count, concurrency, cluster)
            mesh_rate, mesh_lat = await mesh_run(count, concurrency, cluster, replicas)
            mesh_p50, mesh_p99 = pct(mesh_lat, 0.5), pct(mesh_lat, 0.99)
            raw_p50, raw_p99 = pct(raw_lat, 0.5), pct(raw_lat, 0.99)
            print(
                f"{cluster or 1:>5} {replicas:>4} {n:>5} {mesh_rate:>13.1f} {mesh_p50:>5.0f}ms "
                f"{mesh_p99:>5.0f}ms | {raw_rate:>12.1f} {raw_p50:>5.0f}ms {raw_p99:>5.0f}ms | "
                f"{mesh_rate / raw_rate:>5.2f}",
                flush=True,
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster", type=int, default=0, help="members (0: one server)")
    parser.add_argument("--replicas", type=int, default=1, help="processes per claims agent")
    parser.add_argument("--matrix", action="store_true", help="1 node; 3 nodes x 1, 2, 4")
    args = parser.parse_args()
    configs = [(0, 1), (3, 1), (3, 2), (3, 4)] if args.matrix else [(args.cluster, args.replicas)]
    asyncio.run(main(args.cases, args.concurrency, args.rounds, configs))
