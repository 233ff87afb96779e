"""Benchmark: rebuilding the event store's views from the case stream, against a raw
nats-py pull-consume of the same stream, in the same run.

The parent starts one embedded nats-server (fsync always) and fills a stream per size
with signed case events (5 per case). For each size and database, a child process
(so its peak RSS is its own) first consumes the whole stream raw — an ack-less pull
consumer fetching batches of 1,000, touching each message — then rebuilds the views
(decode, signature and key check, hash chain, Merkle frontier, views, a transaction
per batch). It prints both rates, their ratio, and its peak RSS.

Run: `python -m tests.bench.bench_eventstore [--sizes 10000 100000]`. PostgreSQL is
included when MESH_TEST_POSTGRES_DSN names a server (as .ci/run sets it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from contracts import (
    ActionRequested,
    ActionRequestedPayload,
    AgentKey,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.cards import AgentCard, CardPeriod
from contracts.catalog import CATALOG
from contracts.envelope import Event
from contracts.registry_api import PrincipalKeys
from mesh import Identity, Topology
from mesh._broker.connection import connect
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.provisioning import ensure_stream
from mesh._broker.publisher import EventPublisher
from mesh._trust.key_directory import KeyDirectory
from mesh.testing import unique_root
from services.eventstore.projector import Projector
from services.eventstore.views import ViewStore

ACTOR = "bench-agent"


def case_events(n: int) -> list[Event]:
    case_id = f"c{n}"
    data = {"amount": 1000 + n, "policy": f"P-{n % 97}", "notes": "x" * 120}
    return [
        CaseOpened(
            case_id=case_id,
            actor=ACTOR,
            payload=CaseOpenedPayload(kind="claim", source="bench", data=data),
        ),
        CaseStepCompleted(
            case_id=case_id,
            actor=ACTOR,
            payload=CaseStepCompletedPayload(
                step="intake", outcome="complete", evidence={"fields": 12}
            ),
        ),
        CaseStepCompleted(
            case_id=case_id,
            actor=ACTOR,
            payload=CaseStepCompletedPayload(step="fraud", outcome="low", evidence={"score": 7}),
        ),
        ActionRequested(
            case_id=case_id,
            actor=ACTOR,
            payload=ActionRequestedPayload(
                action_type="issue_payment", parameters={"amount": 1000 + n, "currency": "EUR"}
            ),
        ),
        CaseClosed(case_id=case_id, actor=ACTOR, payload=CaseClosedPayload(outcome="paid")),
    ]


async def fill(url: str, root: str, events: int, identity: Identity) -> None:
    nc = await connect(url, name="bench-fill")
    topology = Topology(root)
    js = nc.jetstream()
    for config in topology.streams():
        await ensure_stream(js, config)
    publisher = EventPublisher(js, identity, topology)
    cases = events // 5
    for start in range(0, cases, 200):
        batch = [case_events(n) for n in range(start, min(start + 200, cases))]
        for step in range(5):
            await asyncio.gather(*(publisher.publish(e[step]) for e in batch))
    await nc.close()


# --------------------------------------------------------------------------- the child


async def raw_consume(url: str, topology: Topology, total: int) -> float:
    nc = await connect(url, name="bench-raw")
    js = nc.jetstream()
    subscription = await js.pull_subscribe(
        topology.subjects.family_all("case"),
        stream=topology.cases_stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.ALL,
            mem_storage=True,
            inactive_threshold=30.0,
        ),
    )
    seen = 0
    size = 0
    started = time.perf_counter()
    while seen < total:
        for msg in await subscription.fetch(1000, timeout=5):
            size += len(msg.data)
            seen += 1
    elapsed = time.perf_counter() - started
    await subscription.unsubscribe()
    await nc.close()
    return total / elapsed


async def rebuild(url: str, topology: Topology, total: int, dsn: str, public_key: str) -> float:
    nc = await connect(url, name="bench-rebuild")
    keys = KeyDirectory()
    epoch = datetime(2020, 1, 1, tzinfo=UTC)
    keys.load(
        [
            PrincipalKeys(
                agent_id=ACTOR,
                status="active",
                status_changed_at=epoch,
                key_history=[AgentKey(public_key=public_key, valid_from=epoch)],
                updated_at=epoch,
                # The card the events are checked against: it produces every type here.
                cards=[
                    CardPeriod(
                        card=AgentCard(
                            agent_id=ACTOR,
                            name=ACTOR,
                            version="1",
                            owner="bench",
                            purpose="writes the benchmark's log",
                            produces=CATALOG.names(),
                        ),
                        valid_from=epoch,
                    )
                ],
            )
        ]
    )
    store = ViewStore.open(dsn)
    store.reset()
    started = time.perf_counter()
    projector = Projector(nc.jetstream(), topology, store, keys, batch=1000)
    position = await projector.run(stop_at=total)
    elapsed = time.perf_counter() - started
    assert position.last_sequence == total
    _, flagged = store.counts()
    assert flagged == 0, f"{flagged} events failed verification"
    store.close()
    await nc.close()
    return total / elapsed


def child(args: argparse.Namespace) -> None:
    topology = Topology(args.root)
    raw = asyncio.run(raw_consume(args.url, topology, args.events))
    rate = asyncio.run(rebuild(args.url, topology, args.events, args.dsn, args.public_key))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"raw": raw, "rebuild": rate, "peak_rss_mib": peak_kib / 1024}))


# --------------------------------------------------------------------------- the parent


def postgres_database() -> tuple[str, str] | None:
    base = os.environ.get("MESH_TEST_POSTGRES_DSN")
    if not base:
        return None
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"mesh_bench_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        print(f"PostgreSQL skipped: {exc}")
        return None
    return make_url(base).set(database=name).render_as_string(hide_password=False), name


def drop_postgres(name: str) -> None:
    import psycopg

    with psycopg.connect(os.environ["MESH_TEST_POSTGRES_DSN"], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_child(url: str, root: str, events: int, dsn: str, public_key: str) -> dict[str, float]:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.bench.bench_eventstore",
            "--child",
            "--url",
            url,
            "--root",
            root,
            "--events",
            str(events),
            "--dsn",
            dsn,
            "--public-key",
            public_key,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(output.stdout.strip().splitlines()[-1])
    return result


def parent(sizes: list[int]) -> None:
    identity = Identity.generate()
    with tempfile.TemporaryDirectory(prefix="mesh-bench-") as directory:
        server = EmbeddedNats(Path(directory) / "nats")
        server.start()
        try:
            print("event store rebuild vs raw nats-py pull-consume (same stream, same run)")
            print(
                f"{'events':>8} {'database':>10} {'raw/s':>10} {'rebuild/s':>10} "
                f"{'ratio':>6} {'peak RSS':>9}"
            )
            for size in sizes:
                root = unique_root("b")
                started = time.perf_counter()
                asyncio.run(fill(server.url, root, size, identity))
                print(f"  (filled {size} signed events in {time.perf_counter() - started:.1f}s)")
                targets = [("sqlite", f"sqlite:///{directory}/views-{size}.db", None)]
                pg = postgres_database()
                if pg is not None:
                    targets.append(("postgresql", pg[0], pg[1]))
                for name, dsn, pg_name in targets:
                    try:
                        r = run_child(server.url, root, size, dsn, identity.public_key)
                    finally:
                        if pg_name is not None:
                            drop_postgres(pg_name)
                    print(
                        f"{size:>8} {name:>10} {r['raw']:>10,.0f} {r['rebuild']:>10,.0f} "
                        f"{r['rebuild'] / r['raw']:>6.2f} {r['peak_rss_mib']:>7.0f}MiB"
                    )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--events", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--public-key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
    else:
        parent(args.sizes)


if __name__ == "__main__":
    main()
