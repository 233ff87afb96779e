"""Replicas of one agent on a real nats-server: they share the partitions, never handle
one case at once or out of order, and take over from a replica that dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

from mesh import MeshSettings
from mesh._broker.connection import connect
from mesh._broker.pinned import consumer_info
from mesh._runtime.runtime import AgentRunner
from mesh._trust.identity import Identity
from mesh.testing import MeshTestKit, eventually
from tests.integration.order_journal import orderly, publish_steps, read_journal

SETTINGS = MeshSettings(
    ack_wait=3.0, fetch_wait=0.2, pin_timeout=1.0, retry_base_delay=0.05, retry_max_delay=0.5
)


async def _start_replica(
    kit: MeshTestKit, journal: Path, name: str, replica: str | None
) -> AgentRunner:
    nc = await connect(kit.url, name=f"replica:{name}")
    settings = kit.settings.model_copy(update={"replica": replica})
    runner = AgentRunner(
        orderly(journal, name),
        nc=nc,
        identity=Identity.generate(),
        settings=settings,
        topology=kit.topology,
    )
    await runner.start()
    return runner


async def _kill(runner: AgentRunner) -> None:
    """As close to kill -9 as one process allows: the connection drops at once, nothing
    is settled, handlers in flight never finish."""
    nc = runner.nc
    nc.options["allow_reconnect"] = False
    if nc._transport is not None:
        nc._transport.close()
    lanes = [lane.task for lane in runner.loop._lanes.values()] if runner.loop else []
    tasks = [
        *runner._tasks,
        *(runner.partitions._tasks if runner.partitions else []),
        *(task for task in lanes if task is not None),  # handlers in flight never finish
    ]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(Exception):
        await nc.close()


async def _publish_steps(kit: MeshTestKit, cases: list[str], steps: int, pace: float = 0.0) -> int:
    return await publish_steps(kit.publisher, cases, steps, pace)


def _all_handled(journal: Path, cases: list[str], steps: int) -> bool:
    verdict = read_journal(journal)
    return all(len(verdict.handled.get(case, [])) == steps for case in cases)


async def test_replicas_share_partitions_and_keep_each_case_in_order(
    nats_url: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    cases = [f"case-{n:03d}" for n in range(24)]
    async with MeshTestKit(nats_url=nats_url, settings=SETTINGS) as kit:
        replicas = [await _start_replica(kit, journal, f"r{i}", f"{i}/3") for i in range(3)]
        try:
            await _publish_steps(kit, cases, 6)
            await eventually(
                lambda: _all_handled(journal, cases, 6), timeout=30, what="every step handled"
            )
            verdict = read_journal(journal)
            assert verdict.violations == []
            # A partition is pinned when the server delivers on it; with work flowing,
            # each replica ends up with the partitions it prefers (p % 3 == i).
            rounds = 0

            async def balanced() -> bool:
                nonlocal rounds
                rounds += 1
                await _publish_steps(kit, [f"flow-{rounds}-{n}" for n in range(16)], 1)
                await asyncio.sleep(0.3)
                return all(
                    r.partitions is not None
                    and set(r.partitions.pinned) == {p for p in range(8) if p % 3 == i}
                    for i, r in enumerate(replicas)
                )

            await eventually(balanced, timeout=30, what="each replica on its preferred partitions")
            more = [f"more-{n:03d}" for n in range(24)]
            await _publish_steps(kit, more, 4)
            await eventually(
                lambda: _all_handled(journal, more, 4), timeout=30, what="the second batch"
            )
            verdict = read_journal(journal)
            assert verdict.violations == []
            assert len([r for r, n in verdict.by_replica.items() if n > 0]) == 3
        finally:
            for runner in replicas:
                await runner.stop()
                await runner.nc.close()


async def test_a_dead_replicas_partitions_move_and_its_cases_stay_in_order(
    nats_url: str, tmp_path: Path
) -> None:
    journal = tmp_path / "journal"
    cases = [f"case-{n:03d}" for n in range(16)]
    async with MeshTestKit(nats_url=nats_url, settings=SETTINGS) as kit:
        first = await _start_replica(kit, journal, "first", "0/2")
        second = await _start_replica(kit, journal, "second", "1/2")
        survivors = [second]
        try:
            steps = 60
            publishing = asyncio.create_task(_publish_steps(kit, cases, steps, pace=0.15))
            await eventually(
                lambda: (
                    first.partitions is not None
                    and second.partitions is not None
                    and len(first.partitions.pinned) == len(second.partitions.pinned) == 4
                ),
                timeout=20,
                what="the partitions shared out",
            )
            assert not publishing.done()
            await _kill(first)  # mid-flow, with handlers in flight
            await publishing
            await eventually(
                lambda: _all_handled(journal, cases, steps),
                timeout=60,
                what="every step handled after the failover",
            )
            assert second.partitions is not None
            assert sorted(second.partitions.pinned) == list(range(kit.topology.partitions))
            verdict = read_journal(journal, dead={"first"})
            assert verdict.violations == []
            # Nothing acknowledged is pending; nothing was dead-lettered.
            for durable in kit.topology.partition_durables("orderly"):
                info = await consumer_info(kit.nc, kit.topology.work_stream, durable)  # type: ignore[arg-type]
                assert info is not None
                assert info["num_ack_pending"] == 0, json.dumps(info)
            assert await kit.dead_letters() == []
        finally:
            for runner in survivors:
                await runner.stop()
                await runner.nc.close()
