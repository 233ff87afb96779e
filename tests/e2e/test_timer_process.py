"""A durable timer outlives its agent and its broker: set in a case by an agent running
under `mesh up`, it fires once, on time, after the agent process and then nats-server
were each SIGKILLed and brought back by the supervisor before it was due; the firing is
a signed event in the case that `mesh audit show` lists and `mesh audit verify` checks."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from mesh._broker.reading import read_case
from mesh._broker.stored_messages import StoredEvent
from mesh._trust.registry_client import request_with_patience
from services.stack.processes import SERVER
from services.stack.stack import Stack, running_stack
from tests.e2e.cli import mesh_cli
from tests.integration.agents import reminder_card

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DELAY = 12  # seconds: room for both kills and restarts before the timer is due


async def _history(stack: Stack, case_id: str) -> list[StoredEvent]:
    return await read_case(stack.operator_nc.jetstream(), stack.topology, case_id)


async def _until(stack: Stack, case_id: str, done: str, timeout: float) -> list[StoredEvent]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            history = await _history(stack, case_id)
        except Exception:
            history = []
        if any(s.event.event_name() == done for s in history):
            return history
        assert time.monotonic() < deadline, [s.event.event_name() for s in history]
        await asyncio.sleep(0.1)


async def _killed_and_back(stack: Stack, name: str) -> None:
    old = stack.supervisor.pid(name)
    await asyncio.to_thread(stack.supervisor.kill, name)
    while stack.supervisor.pid(name) in (None, old):  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def test_a_timer_fires_once_after_its_agent_and_the_broker_were_killed(
    tmp_path: Path,
) -> None:
    async with running_stack(
        tmp_path / "mesh",
        observers=[(reminder_card(), "tests.integration.agents:reminder")],
        env={"reminder": {"MESH_TEST_TIMER_SECONDS": str(DELAY)}},
    ) as stack:
        crm = await stack.connect("crm")
        claim = {
            "kind": "insurance_claim",
            "external_ref": "TIMER-1",
            "data": {
                "policy_number": "P-48217",
                "claimant": "A. Jansen",
                "claim_type": "auto",
                "amount_cents": 42_001,
                "incident_date": "2026-10-01",
                "payee_account": "DE89-12345678",
            },
        }
        reply = await request_with_patience(
            crm,
            stack.topology.subjects.service("ingress", "crm"),
            json.dumps(claim).encode(),
            timeout=10,
            what="open a case",
            patience=10,
        )
        case_id = json.loads(reply.data)["case_id"]
        history = await _until(stack, case_id, "timer_set", timeout=30)
        timer = next(s for s in history if s.event.event_name() == "timer_set").event
        assert timer.actor == "reminder"

        await _killed_and_back(stack, "reminder")
        await _killed_and_back(stack, SERVER)
        assert "timer_fired" not in [s.event.event_name() for s in await _history(stack, case_id)]

        history = await _until(stack, case_id, "timer_fired", timeout=60)
        await asyncio.sleep(3)  # any second firing would have come by now
        history = await _history(stack, case_id)
        fired = [s for s in history if s.event.event_name() == "timer_fired"]
        steps = [
            s
            for s in history
            if s.event.event_name() == "case_step_completed" and s.event.payload.step == "follow_up"  # type: ignore[attr-defined]
        ]
        assert len(fired) == 1, fired
        assert len(steps) == 1, steps
        assert fired[0].event.payload.timer_id == timer.event_id  # type: ignore[attr-defined]
        assert fired[0].stored_at >= timer.payload.due_at  # type: ignore[attr-defined]

        shown = mesh_cli(stack, "audit", "show", case_id)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "reminder set timer follow_up for" in shown.stdout, shown.stdout
        assert "reminder timer follow_up fired" in shown.stdout, shown.stdout
        verified = mesh_cli(stack, "audit", "verify", "--case", case_id)
        assert verified.returncode == 0, verified.stdout + verified.stderr
