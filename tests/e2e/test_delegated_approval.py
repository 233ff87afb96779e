"""Delegation end to end, under `mesh up`: the claims manager's assistant (an agent with
the role delegate) approves a payout within the delegation she signed, and the claim is
paid; it approves one beyond it, which policy refuses (kept with the reason, the request
still waiting for a person); she revokes the delegation with `mesh delegations revoke`,
and its next approval is refused too. `mesh audit show` shows whom the assistant acted
for, and `mesh audit verify` passes over the whole log."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from contracts import ApprovalGranted, ApprovalGrantedPayload, ApprovalRequired
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._runtime.dead_letters import read_dead_letters
from mesh._trust.registry_client import request_with_patience
from services.stack.demo.approver import APPROVER, ASSISTANT, Desk, enrol_approver
from services.stack.stack import Stack, running_stack
from tests.e2e.cli import mesh_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


async def _open(stack: Stack, ref: str, amount: int) -> str:
    body = {
        "kind": "insurance_claim",
        "external_ref": ref,
        "data": {
            "policy_number": "P-48217",
            "claimant": "A. Jansen",
            "claim_type": "auto",
            "amount_cents": amount,  # less the 100.00 EUR deductible: the payout
            "incident_date": "2026-10-01",
            "payee_account": "DE89-12345678",
        },
    }
    crm = await stack.connect("crm")
    reply = await request_with_patience(
        crm,
        stack.topology.subjects.service("ingress", "crm"),
        json.dumps(body).encode(),
        timeout=10,
        what="open a case",
        patience=10,
    )
    case_id: str = json.loads(reply.data)["case_id"]
    return case_id


async def _first(stack: Stack, case_id: str, name: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        history = await read_case(stack.operator_nc.jetstream(), stack.topology, case_id)
        found = [s.event for s in history if s.event.event_name() == name]
        if found:
            return found[0]
        assert time.monotonic() < deadline, [s.event.event_name() for s in history]
        await asyncio.sleep(0.1)


async def _assistant_grants(stack: Stack, desk: Desk, case_id: str) -> ApprovalGranted:
    required: ApprovalRequired = await _first(stack, case_id, "approval_required")
    grant = ApprovalGranted(
        case_id=case_id,
        actor=ASSISTANT,
        causation_id=required.event_id,
        correlation_id=required.correlation_id,
        payload=ApprovalGrantedPayload(
            request_id=required.payload.request_id,
            approver=ASSISTANT,
            request_digest=required.payload.request_digest,
            delegation_id=desk.delegation_id,
        ),
    )
    nc = desk.assistant_nc
    await EventPublisher(nc.jetstream(), desk.assistant, stack.topology, nc=nc).publish(grant)
    return grant


async def _refused(stack: Stack, grant: ApprovalGranted, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        letters = await read_dead_letters(stack.operator_nc.jetstream(), stack.topology)
        for letter in letters:
            if letter.consumer == "policy" and grant.event_id.encode() in letter.body:
                return letter.reason
        assert time.monotonic() < deadline, "policy never refused the grant"
        await asyncio.sleep(0.2)


async def test_a_delegated_approval_within_beyond_and_after_revocation(tmp_path: Path) -> None:
    async with running_stack(tmp_path / "mesh") as stack:
        desk = await enrol_approver(stack)  # dana delegates payouts up to 2,500.00 EUR
        listed = mesh_cli(stack, "delegations", "list", "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        [held] = json.loads(listed.stdout)
        assert held["delegation"]["delegator"] == APPROVER

        within = await _open(stack, "DLG-1", 210_001)
        await _assistant_grants(stack, desk, within)
        closed = await _first(stack, within, "case_closed")
        assert closed.payload.outcome == "paid"
        approved = await _first(stack, within, "action_approved")
        assert approved.payload.acting_for == APPROVER
        assert approved.payload.delegations == [desk.delegation_id]

        beyond = await _open(stack, "DLG-2", 410_001)
        over = await _assistant_grants(stack, desk, beyond)
        assert "above its max_amount 250000" in await _refused(stack, over)

        revoked = mesh_cli(
            stack,
            "delegations",
            "revoke",
            desk.delegation_id,
            "--reason",
            "back at the desk",
            "--seed-file",
            str(stack.layout.seed(APPROVER)),
        )
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        after = await _open(stack, "DLG-3", 210_001)
        late = await _assistant_grants(stack, desk, after)
        assert f"delegation {desk.delegation_id} was revoked" in await _refused(stack, late)

        shown = mesh_cli(stack, "audit", "show", within)
        assert shown.returncode == 0, shown.stdout + shown.stderr
        assert f"acting for {APPROVER} under delegation {desk.delegation_id}" in shown.stdout
        verified = mesh_cli(stack, "audit", "verify", "--all")
        assert verified.returncode == 0, verified.stdout + verified.stderr
