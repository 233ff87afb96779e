"""Benchmark: registry lookups (request/reply `get` and `find`) against a raw nats-py
responder doing the same work (look the record up in a dict, encode it, reply).

Both run on one embedded nats-server in the same run, with N registered agents.
Prints lookups/s and p50/p99 latency at one request in flight and with C concurrent
requesters, and the ratio registry/raw. Run: `python -m tests.bench.bench_registry`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from nats.aio.msg import Msg

from contracts import AgentCard, AgentKey
from contracts.registry_api import RegistryQuery, RegistryReply
from mesh import Identity, MeshSettings, Topology
from mesh._broker.connection import connect
from mesh._broker.embedded import EmbeddedNats
from mesh._trust.registry_client import RegistryClient
from mesh.testing import unique_root
from services.registry.app import RegistryService
from tests.bench._enrol import BenchOperator


def card(n: int, identity: Identity) -> AgentCard:
    return AgentCard(
        agent_id=f"agent-{n}",
        name=f"Agent {n}",
        version="1.0.0",
        owner="bench",
        purpose="benchmark",
        consumes=["case_opened"],
        produces=["case_step_completed"],
        keys=[AgentKey(public_key=identity.public_key, valid_from=datetime.now(UTC))],
    )


async def measure(call, total: int, concurrency: int) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    per_worker = total // concurrency

    async def worker(offset: int) -> None:
        for i in range(per_worker):
            began = time.perf_counter()
            await call(offset + i)
            latencies.append(time.perf_counter() - began)

    started = time.perf_counter()
    await asyncio.gather(*(worker(w * per_worker) for w in range(concurrency)))
    return (per_worker * concurrency) / (time.perf_counter() - started), latencies


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def main(agents: int, lookups: int, concurrency: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as directory:
        server = EmbeddedNats(Path(directory))
        server.start()
        try:
            topology = Topology(unique_root("b"))
            settings = MeshSettings(subject_root=topology.root, data_dir=Path(directory))
            service_nc = await connect(server.url, name="registry")
            operator = BenchOperator(Path(directory), ["bench"])
            service = RegistryService(
                service_nc, Identity.generate(), settings, operator.settings, topology
            )
            await service.start()
            client_nc = await connect(server.url, name="client")
            client = RegistryClient(client_nc, topology.subjects)
            for n in range(agents):
                identity = Identity.generate()
                enrolled = card(n, identity)
                await client.register(enrolled, identity, grant=operator.grant(enrolled))

            # The raw baseline: same records, same encoding, a plain responder.
            assert service.handlers is not None
            records = dict(service.handlers.state.records)
            encoder = msgspec.json.Encoder()
            query_decoder = msgspec.json.Decoder(RegistryQuery)
            reply_decoder = msgspec.json.Decoder(RegistryReply)

            async def respond(msg: Msg) -> None:
                query = query_decoder.decode(msg.data)
                reply = RegistryReply(ok=True, records=[records[query.agent_id or ""]])
                await msg.respond(encoder.encode(reply))

            raw_subject = f"{topology.root}.raw.get"
            await service_nc.subscribe(raw_subject, cb=respond)
            await service_nc.flush()

            async def raw_get(i: int) -> None:
                body = encoder.encode(RegistryQuery(agent_id=f"agent-{i % agents}"))
                msg = await client_nc.request(raw_subject, body, timeout=5)
                reply_decoder.decode(msg.data)

            async def registry_get(i: int) -> None:
                await client.get(f"agent-{i % agents}")

            print(f"nats-server {server.url}; {agents} agents registered; {rounds} rounds")
            for label, c in (("one in flight", 1), (f"{concurrency} concurrent", concurrency)):
                rows: dict[str, list[tuple[float, float, float]]] = {"raw": [], "registry": []}
                for number in range(rounds):
                    order = ("raw", "registry") if number % 2 == 0 else ("registry", "raw")
                    for name in order:
                        call = raw_get if name == "raw" else registry_get
                        rate, latencies = await measure(call, lookups, c)
                        rows[name].append((rate, pct(latencies, 0.5), pct(latencies, 0.99)))
                print(f"\n== get, {label} ==")
                medians = {}
                for name, values in rows.items():
                    medians[name] = tuple(statistics.median(v[i] for v in values) for i in range(3))
                    rate, p50, p99 = medians[name]
                    print(
                        f"  {name:8s} median: {rate:8.0f} lookups/s  "
                        f"p50 {p50:6.3f} ms  p99 {p99:6.3f} ms"
                    )
                print(
                    f"  lookup ratio registry/raw: {medians['registry'][0] / medians['raw'][0]:.2f}"
                )

            rate, latencies = await measure(
                lambda i: client.find(RegistryQuery(event_type="case_opened")), 200, 1
            )
            print(
                f"\n== find (all {agents} agents match), one in flight ==\n"
                f"  registry: {rate:8.0f} lookups/s  p50 {pct(latencies, 0.5):6.3f} ms  "
                f"p99 {pct(latencies, 0.99):6.3f} ms"
            )
            await service.stop()
            await client_nc.close()
            await service_nc.close()
        finally:
            server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.agents, args.lookups, args.concurrency, args.rounds))
