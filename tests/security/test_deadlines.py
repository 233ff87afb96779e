"""Late approval (already refused before issue 10's fixes; kept refused): an approval
that comes after the request escalated and expired decides nothing. Who refuses: the
policy service (it dead-letters the approval with the reason); what did not move: the
decision, the gateway.

This one needs a mesh of its own: its policy bundle is the reference one with the
approval SLA shortened from 4h to 1s, so that a deadline passes within the test."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from contracts import (
    ActionApproved,
    ActionRequested,
    ApprovalEscalated,
    ApprovalExpired,
    ApprovalRequired,
    CaseClosed,
)
from services.stack.layout import POLICIES
from services.stack.stack import running_stack
from tests.security.kit import Mesh, claim, events, new_ref

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def hurried(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    directory = tmp_path_factory.mktemp("deadlines")
    bundle = directory / "policies"
    shutil.copytree(POLICIES, bundle)
    cedar = bundle / "payments.cedar"
    assert '@approval_sla("4h")' in cedar.read_text()
    cedar.write_text(cedar.read_text().replace('@approval_sla("4h")', '@approval_sla("1s")'))
    env = {"policy": {"MESH_POLICY_BUNDLE_DIR": str(bundle)}}
    async with running_stack(directory / "mesh", env=env) as stack:
        mesh = Mesh(stack)
        try:
            yield mesh
        finally:
            await mesh.close()


async def test_an_approval_after_the_deadline_decides_nothing(hurried: Mesh) -> None:
    """A large payout waits for a claims manager; nobody decides; it escalates to the
    head of claims, then expires, and adjudication closes the claim. Then the approver
    grants it, citing the request's digest: refused, nothing approved, nothing paid."""
    mesh = hurried
    dana = await mesh.human()
    case_id = await mesh.open(claim(new_ref("late"), amount=300_001))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    await mesh.wait_for_event(case_id, ApprovalEscalated)
    await mesh.wait_for_event(case_id, ApprovalExpired)
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "expired"
    [(_, request)] = events(await mesh.history(case_id), ActionRequested)
    assert required.payload.request_id == request.event_id
    assert [i for i in await mesh.pending(dana) if i["case_id"] == case_id] == []

    mark = await mesh.dead_letter_mark()
    approval = await mesh.approve(
        dana,
        {
            "case_id": case_id,
            "correlation_id": required.correlation_id,
            "required_event_id": required.event_id,
            "request_id": request.event_id,
            "request_digest": required.payload.request_digest,
        },
    )
    [refused] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "policy" and approval.event_id.encode() in d.body
    )
    assert refused.kind == "permanent"
    assert f"approval refused: no approval is pending for request {request.event_id}" in (
        refused.reason
    )
    assert not events(await mesh.history(case_id), ActionApproved)
    assert await mesh.case_payments(case_id) == []
