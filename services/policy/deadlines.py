"""The approval deadline timer: every `deadline_check_every` seconds, each request that
waited past its deadline escalates once or expires (what that means: `approvals.py`),
and the log is told so.

The record changes first (compare-and-swap: a human who decided meanwhile wins), then
the step is announced under an id derived from the approval it concerns, so announcing
it again after a crash stores it once.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import msgspec

from contracts.envelope import Event
from contracts.events.actions import ApprovalEscalated, ApprovalExpired
from contracts.ids import derived_event_id
from mesh.service import AgentRunner, ConcurrencyConflict, MeshError, stop_task
from services.policy.approvals import PendingApproval, TimeoutStep, on_deadline, timed_out
from services.policy.store import ApprovalStore

log = logging.getLogger(__name__)


class DeadlineTimer:
    def __init__(
        self, approvals: ApprovalStore, runner: AgentRunner, service_id: str, every: float
    ) -> None:
        self.approvals = approvals
        self.runner = runner
        self.service_id = service_id
        self.every = every
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="approval-deadlines")

    async def stop(self) -> None:
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            try:
                await self.check_deadlines(datetime.now(UTC))
            except MeshError:
                log.exception("approval deadline check failed; will retry")

    async def check_deadlines(self, now: datetime) -> None:
        for key in await self.approvals.keys():
            loaded = await self.approvals.load(key)
            if loaded is None:
                continue
            pending, revision = loaded
            if pending.state == "expired":
                await self._announce(pending, "expire", pending)  # finish a crash
                continue
            if pending.state != "waiting" or now <= pending.deadline:
                continue
            step, updated = on_deadline(pending, now)
            if step == "expire":
                updated = msgspec.structs.replace(pending, state="expired")
            try:
                await self.approvals.swap(updated, revision)
            except ConcurrencyConflict:
                continue  # a human decided meanwhile: theirs stands
            await self._announce(pending, step, updated)

    async def _announce(
        self, pending: PendingApproval, step: TimeoutStep, updated: PendingApproval
    ) -> None:
        event_type: type[Event] = ApprovalEscalated if step == "escalate" else ApprovalExpired
        # Derived ids: announcing the same step twice (after a crash) stores it once.
        index = 100 + (1 if step == "escalate" else 2)
        await self.runner.emit(
            event_type(  # type: ignore[call-arg]
                event_id=derived_event_id(
                    pending.case_id,
                    pending.required_event_id,
                    self.service_id,
                    index,
                    self.runner.id_key,
                ),
                case_id=pending.case_id,
                correlation_id=pending.correlation_id,
                causation_id=pending.required_event_id,
                actor=self.service_id,
                payload=timed_out(pending, step, updated),
            )
        )
        if step == "expire":
            await self.approvals.forget(pending.request_id)
