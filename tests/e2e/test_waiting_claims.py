"""Weeks-long cases, compressed: a theft claim comes without a police report, so intake
asks for one and the case waits 14 days (here a few seconds: intake runs with a clock
rate, as the demo does). The claim whose report the CRM sends continues and is paid; a
repeat of the report is a no-op; the claim whose report never comes escalates at the
deadline. Both show in `mesh audit show`, pass `mesh audit verify`, and the CRM sees
"waiting" in the case's status while it waits."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from mesh._broker.reading import read_case
from mesh._broker.stored_messages import StoredEvent
from mesh._trust.registry_client import request_with_patience
from services.agents.claims.domain import POLICE_REPORT_WAIT
from services.stack.stack import Stack, running_stack
from tests.e2e.cli import mesh_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

WAIT_SECONDS = 8  # what intake's 14 days take here
CLOCK_RATE = POLICE_REPORT_WAIT.total_seconds() / WAIT_SECONDS


def _theft(ref: str) -> dict[str, Any]:
    return {
        "kind": "insurance_claim",
        "external_ref": ref,
        "data": {
            "policy_number": "P-48217",
            "claimant": "A. Jansen",
            "claim_type": "auto",
            "amount_cents": 42_001,
            "incident_date": "2026-10-01",
            "description": "car stolen from the driveway overnight",
            "payee_account": "DE89-12345678",
        },
    }


async def _ask(crm: Client, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await request_with_patience(
        crm, subject, json.dumps(body).encode(), timeout=10, what=subject, patience=10
    )
    answer: dict[str, Any] = json.loads(reply.data)
    return answer


async def _until(stack: Stack, case_id: str, done: str, timeout: float = 60) -> list[StoredEvent]:
    deadline = time.monotonic() + timeout
    while True:
        history = await read_case(stack.operator_nc.jetstream(), stack.topology, case_id)
        if any(s.event.event_name() == done for s in history):
            return history
        assert time.monotonic() < deadline, [s.event.event_name() for s in history]
        await asyncio.sleep(0.1)


def _names(history: list[StoredEvent]) -> list[str]:
    return [s.event.event_name() for s in history]


async def test_a_waiting_claim_resumes_on_its_report_and_another_escalates_at_the_deadline(
    tmp_path: Path,
) -> None:
    async with running_stack(
        tmp_path / "mesh", env={"intake": {"MESH_CLOCK_RATE": f"{CLOCK_RATE:.0f}"}}
    ) as stack:
        crm = await stack.connect("crm")
        subjects = stack.topology.subjects
        opening = subjects.service("ingress", "crm")
        reported = await _ask(crm, opening, _theft("THEFT-1"))
        unreported = await _ask(crm, opening, _theft("THEFT-2"))
        assert reported["ok"], reported
        assert unreported["ok"], unreported

        history = await _until(stack, reported["case_id"], "case_waiting", timeout=30)
        [waiting] = [s.event for s in history if s.event.event_name() == "case_waiting"]
        assert waiting.actor == "claims-intake"
        assert waiting.payload.waiting_for == "police_report"  # type: ignore[attr-defined]
        status = await _ask(
            crm, subjects.service_as("ingress", "status", "crm"), {"external_ref": "THEFT-1"}
        )
        assert (status["status"], status["waiting_for"]) == ("waiting", ["police_report"])

        report = {
            "case_source": "crm",
            "external_ref": "THEFT-1",
            "event_id": "PR-1",
            "kind": "police_report",
            "data": {
                "report_number": "PD-20261002",
                "police_force": "Politie Utrecht",
                "filed_on": "2026-10-02",
            },
        }
        events = subjects.service_as("ingress", "events", "crm")
        added = await _ask(crm, events, report)
        assert added["ok"], added
        again = await _ask(crm, events, report)
        assert (again["ok"], again["duplicate"], again["event_id"]) == (
            True,
            True,
            added["event_id"],
        )

        paid = await _until(stack, reported["case_id"], "case_closed")
        names = _names(paid)
        assert names.count("evidence_received") == 1
        assert "wait_ended" in names
        assert "case_escalated" not in names
        [closed] = [s.event for s in paid if s.event.event_name() == "case_closed"]
        assert closed.payload.outcome == "paid"  # type: ignore[attr-defined]

        escalated = await _until(stack, unreported["case_id"], "case_escalated")
        [ended] = [s.event for s in escalated if s.event.event_name() == "wait_ended"]
        assert ended.payload.outcome == "deadline_passed"  # type: ignore[attr-defined]
        assert "case_step_completed" not in _names(escalated)
        late = await _ask(
            crm, subjects.service_as("ingress", "status", "crm"), {"external_ref": "THEFT-2"}
        )
        assert late["status"] == "escalated"

        for case_id in (reported["case_id"], unreported["case_id"]):
            shown = mesh_cli(stack, "audit", "show", case_id)
            assert shown.returncode == 0, shown.stdout + shown.stderr
            assert "waits for police_report" in shown.stdout, shown.stdout
            # Intake's 14 days took seconds: on a real mesh that is a violation.
            strict = mesh_cli(stack, "audit", "verify", "--case", case_id)
            assert strict.returncode == 1, strict.stdout + strict.stderr
            assert "on a real mesh, time is real" in strict.stdout
            verified = mesh_cli(
                stack, "audit", "verify", "--case", case_id, "--allow-compressed-clock"
            )
            assert verified.returncode == 0, verified.stdout + verified.stderr
            assert "compressed clock" in verified.stdout
        timeline = mesh_cli(stack, "audit", "show", reported["case_id"]).stdout
        assert "received police_report PR-1 from crm" in timeline
        assert "the wait for police_report ended: arrived" in timeline
