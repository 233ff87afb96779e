"""A case started under one version of a contract finishes under the next.

Version 1 of `timer_set` had no `business_due_at` (commit PREVIOUS); version 2 added
it, with an upcaster that derives it for v1 events, and `case_waiting` gained an
optional `requested_from`. Under `mesh up`, intake runs the previous version's code
(its tree, from git) and theft claims wait for a police report, their timers written
as v1. The whole mesh stops; it comes back on the same data running this version.
One claim's report arrives and it is paid; the other's v1 timer fires — read through
the upcaster by the new intake — and it escalates at the deadline; a new claim's timer
is written as v2. The audit timeline, a replay to a past moment and `mesh audit
verify` read the mixed log."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import subprocess
import sys
import tarfile
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

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
PREVIOUS = "f1af9e9"  # the last commit whose timer_set is v1
WAIT_SECONDS = 30  # intake's 14 days, here: room for the mesh to stop and come back
ENV = {"intake": {"MESH_CLOCK_RATE": f"{POLICE_REPORT_WAIT.total_seconds() / WAIT_SECONDS:.0f}"}}


def _previous_tree(into: Path) -> Path:
    """The previous version's source, as git holds it (no checkout is touched)."""
    if shutil.which("git") is None:
        pytest.skip("git is needed to run the previous version")
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {PREVIOUS} is not in this clone: {archive.stderr.decode()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _run_previous(tree: Path) -> list[str]:
    """`mesh run services.agents.claims.intake` on the previous version's code."""
    code = (
        f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
        "sys.argv = ['mesh', 'run', 'services.agents.claims.intake']; "
        "runpy.run_module('mesh', run_name='__main__', alter_sys=True)"
    )
    return [sys.executable, "-c", code]


async def _ask(crm: Client, subject: str, body: dict[str, Any]) -> dict[str, Any]:
    reply = await request_with_patience(
        crm, subject, json.dumps(body).encode(), timeout=10, what=subject, patience=20
    )
    answer: dict[str, Any] = json.loads(reply.data)
    assert answer["ok"], answer
    return answer


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
            "description": "car stolen from the street overnight",
            "payee_account": "DE89-12345678",
        },
    }


async def _until(stack: Stack, case_id: str, done: str, timeout: float = 90) -> list[StoredEvent]:
    deadline = time.monotonic() + timeout
    while True:
        history = await read_case(stack.operator_nc.jetstream(), stack.topology, case_id)
        if any(s.event.event_name() == done for s in history):
            return history
        assert time.monotonic() < deadline, [s.event.event_name() for s in history]
        await asyncio.sleep(0.2)


def _versions(history: list[StoredEvent], name: str) -> list[int]:
    """The schema versions as written (the stored bytes, before any upcasting)."""
    return [json.loads(s.body)["schema_version"] for s in history if s.event.event_name() == name]


async def test_cases_started_on_the_previous_contract_finish_on_this_one(tmp_path: Path) -> None:
    previous = _previous_tree(tmp_path / "previous")
    data = tmp_path / "mesh"

    # The previous version: intake writes v1 timers.
    async with running_stack(data, env=ENV, argv={"intake": _run_previous(previous)}) as stack:
        crm = await stack.connect("crm")
        opening = stack.topology.subjects.service("ingress", "crm")
        reported = (await _ask(crm, opening, _theft("EVO-1")))["case_id"]
        unreported = (await _ask(crm, opening, _theft("EVO-2")))["case_id"]
        for case_id in (reported, unreported):
            history = await _until(stack, case_id, "case_waiting")
            assert _versions(history, "timer_set") == [1]
            stored = next(s for s in history if s.event.event_name() == "timer_set")
            assert "business_due_at" not in json.loads(stored.body)["payload"]
        set_at = stored.stored_at

    # This version, on the same data: the waits end as they should.
    async with running_stack(data, env=ENV) as stack:
        crm = await stack.connect("crm")
        subjects = stack.topology.subjects
        report = {
            "case_source": "crm",
            "external_ref": "EVO-1",
            "event_id": "PR-EVO-1",
            "kind": "police_report",
            "data": {
                "report_number": "PD-20261130",
                "police_force": "Politie Utrecht",
                "filed_on": "2026-11-30",
            },
        }
        await _ask(crm, subjects.service_as("ingress", "events", "crm"), report)
        paid = await _until(stack, reported, "case_closed")
        assert paid[-1].event.payload.outcome == "paid"  # type: ignore[attr-defined]

        escalated = await _until(stack, unreported, "case_escalated")
        [upcast] = [s.event for s in escalated if s.event.event_name() == "timer_set"]
        assert upcast.schema_version == 2  # read as this version's, upcast
        assert upcast.payload.business_due_at > upcast.payload.due_at  # type: ignore[attr-defined]
        [ended] = [s.event for s in escalated if s.event.event_name() == "wait_ended"]
        assert ended.payload.outcome == "deadline_passed"  # type: ignore[attr-defined]

        fresh = (await _ask(crm, subjects.service("ingress", "crm"), _theft("EVO-3")))["case_id"]
        history = await _until(stack, fresh, "case_waiting")
        assert _versions(history, "timer_set") == [2]
        waiting = next(s.event for s in history if s.event.event_name() == "case_waiting")
        assert waiting.payload.requested_from == "crm"  # type: ignore[attr-defined]

        shown = mesh_cli(stack, "audit", "show", unreported)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert "set timer wait_police_report for" in shown.stdout
        replayed = mesh_cli(stack, "audit", "replay", unreported, "--at", set_at.isoformat())
        assert replayed.returncode == 0, replayed.stdout + replayed.stderr
        verified = mesh_cli(stack, "audit", "verify", "--all", "--allow-compressed-clock")
        assert verified.returncode == 0, verified.stdout + verified.stderr
