"""A payment gateway down for ~2 s mid-run (SIGKILL, held down, started again) costs
the payments in flight some time, never a person's attention: they are redelivered
with backoff until the gateway answers again, well within the payment agent's retry
budget, and every claim is paid exactly once."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from contracts import ActionApproved, ActionCompleted, CaseEscalated, decode
from services.eventstore.export import build_bundle
from services.stack.demo import Demo, make_cases, print_summary
from services.stack.stack import running_stack

pytestmark = pytest.mark.e2e

# Kinds no healthy gateway sends to a person (FAIL and CLOSED payees go there anyway).
CALM = {"small", "large", "gateway flaky", "gateway slow"}


@pytest.mark.parametrize(
    "breaker_threshold",
    [
        None,  # the stack's: the breaker opens, and redelivery waits for it
        "1000",  # a breaker that never opens: redelivery's backoff alone rides it out
    ],
)
async def test_a_short_gateway_restart_sends_no_payment_to_a_person(
    tmp_path: Path, breaker_threshold: str | None
) -> None:
    cases = [c for c in make_cases(260, seed=21) if c.kind in CALM]
    env = (
        {"payment": {"MESH_BREAKER_FAILURE_THRESHOLD": breaker_threshold}}
        if breaker_threshold
        else {}
    )
    async with running_stack(tmp_path / "mesh", env=env) as stack:
        demo = Demo(stack, cases, Console(file=io.StringIO()))
        running = asyncio.create_task(demo.run(timeout=100))
        # Mid-run: once payments are flowing, so that some are in flight.
        while sum(1 for v in demo.views.values() if v.outcome == "paid") < 15:
            assert not running.done()
            await asyncio.sleep(0.05)
        down_at = datetime.now(UTC)
        await asyncio.to_thread(stack.supervisor.kill, "gateway")
        stack.supervisor.stop("gateway")  # held down: no restart until we say
        await asyncio.sleep(2.0)
        back_at = datetime.now(UTC)
        stack.supervisor.restart("gateway")
        result = await running
        bundle = await build_bundle(stack.operator_nc, stack.topology, None)

    approved: dict[str, datetime] = {}
    completed: dict[str, datetime] = {}
    escalations: list[str] = []
    for stored in bundle.events:
        event = decode(stored.body)
        if isinstance(event, ActionApproved):
            approved[event.payload.request_id] = stored.stored_at
        elif isinstance(event, ActionCompleted):
            completed[event.payload.request_id] = stored.stored_at
        elif isinstance(event, CaseEscalated):
            escalations.append(f"{event.case_id}: {event.payload.reason}")
    # The payments the outage caught: approved before the gateway was back, paid after.
    waited = [r for r, at in approved.items() if at < back_at and completed.get(r, at) > back_at]

    output = io.StringIO()
    print_summary(result, Console(file=output, width=200))
    summary = output.getvalue()
    assert not result.timed_out, summary
    assert result.all_final, summary
    assert escalations == [], summary
    assert result.paid_once, summary
    assert result.report.ok, summary
    assert len(waited) >= 3, (down_at, back_at, summary)
    assert all(r in completed for r in waited)
