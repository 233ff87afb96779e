"""Approval deadlines, on durable timers: asking a human sets a timer for the deadline
(`approval_deadline`, round 0); when it fires and the request still waits, the request
escalates once (and a round-1 timer is set for the new deadline) or expires — what that
means: `approvals.py` — and the log is told so. A human's decision cancels the timer.

The timer is the mesh's own (`ctx.schedule`): held by the broker, fired once, recorded
in the case as timer_set / timer_fired / timer_cancelled. Nothing polls.

The record changes first (compare-and-swap: a human who decided meanwhile wins), then
the step is announced under an id derived from the approval it concerns, so announcing
it again after a crash stores it once; a firing handled again after a crash between the
two finds the step taken (the round it names is behind the record's) and finishes it.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from typing import Any

import msgspec

from contracts.events.actions import ApprovalEscalated, ApprovalExpired
from contracts.events.timers import TimerFired
from mesh.service import Agent, ConcurrencyConflict, HandlerContext
from services.policy.approvals import PendingApproval, TimeoutStep, on_deadline, timed_out
from services.policy.store import ApprovalStore

log = logging.getLogger(__name__)

DEADLINE_TIMER = "approval_deadline"


def deadline_data(pending: PendingApproval) -> dict[str, Any]:
    """What an approval's deadline timer carries: the request, which deadline (round 0,
    or 1 after the escalation) and whom it waited for until when."""
    return {
        "request_id": pending.request_id,
        "round": 1 if pending.escalated else 0,
        "role": pending.approver_role,
        "deadline": pending.deadline.isoformat(),
    }


async def set_deadline(ctx: HandlerContext, pending: PendingApproval) -> str:
    """Set the timer for the pending approval's deadline; its timer id."""
    return await ctx.schedule(DEADLINE_TIMER, at=pending.deadline, data=deadline_data(pending))


class ApprovalDeadlines:
    def __init__(self, approvals: ApprovalStore) -> None:
        self.approvals = approvals

    def subscribe(self, agent: Agent) -> None:
        agent.on_timer(DEADLINE_TIMER)(self.on_deadline)

    async def on_deadline(self, fired: TimerFired, ctx: HandlerContext) -> None:
        data = fired.payload.data
        loaded = await self.approvals.load(str(data.get("request_id", "")))
        if loaded is None:
            return  # decided, or expired and announced: the deadline changes nothing
        pending, revision = loaded
        if pending.state == "expired":
            await self._announce(ctx, pending, "expire", pending)  # finish a crash
            return
        if pending.state != "waiting":
            return  # a human decided; the decision's handler announces it
        if int(data.get("round", 0)) < deadline_data(pending)["round"]:
            # This deadline's escalation was recorded before a crash: finish it, as the
            # record stood before it (the timer says whom it waited for until when).
            before = msgspec.structs.replace(
                pending,
                approver_role=str(data.get("role", pending.approver_role)),
                deadline=datetime.fromisoformat(str(data["deadline"])),
            )
            await self._escalate(ctx, before, pending)
            return
        step, updated = on_deadline(pending, ctx.written_at)
        if step == "expire":
            updated = msgspec.structs.replace(pending, state="expired")
        try:
            await self.approvals.swap(updated, revision)
        except ConcurrencyConflict:
            return  # a human decided meanwhile: theirs stands
        if step == "escalate":
            await self._escalate(ctx, pending, updated)
        else:
            await self._announce(ctx, pending, step, updated)

    async def _escalate(
        self, ctx: HandlerContext, before: PendingApproval, escalated: PendingApproval
    ) -> None:
        """Set the new deadline's timer (kept on the record, for a decision to cancel),
        then tell the log whom it waits for now."""
        timer_id = await set_deadline(ctx, escalated)
        loaded = await self.approvals.load(escalated.request_id)
        if loaded is not None and loaded[0].deadline_timer != timer_id:
            with contextlib.suppress(ConcurrencyConflict):  # a human decided meanwhile
                await self.approvals.swap(
                    msgspec.structs.replace(loaded[0], deadline_timer=timer_id), loaded[1]
                )
        await self._announce(ctx, before, "escalate", escalated)

    async def _announce(
        self,
        ctx: HandlerContext,
        pending: PendingApproval,
        step: TimeoutStep,
        updated: PendingApproval,
    ) -> None:
        # Derived from the firing: announcing the same step again after a crash (the
        # firing redelivered, the same emits in the same order) stores it once.
        event_type = ApprovalEscalated if step == "escalate" else ApprovalExpired
        await ctx.emit(event_type, timed_out(pending, step, updated))
        if step == "expire":
            await self.approvals.forget(pending.request_id)
