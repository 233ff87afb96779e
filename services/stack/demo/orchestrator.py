"""The demo's run: the workload fed in, the approver at work, a live table of where the
cases stand, until every case is final (or the time is up), then the result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from rich.console import Console
from rich.live import Live
from rich.table import Table

from contracts.eventstore_api import CaseQuery, CaseView
from mesh.errors import MeshError
from services.eventstore.export import store_request
from services.stack.demo.approver import approve, enrol_approver
from services.stack.demo.report import FINAL, DemoResult, collect_result
from services.stack.demo.workload import DemoCase, feed
from services.stack.stack import Stack

log = logging.getLogger(__name__)


class Demo:
    def __init__(self, stack: Stack, cases: list[DemoCase], console: Console) -> None:
        self.stack = stack
        self.cases = cases
        self.console = console
        self.views: dict[str, CaseView] = {}
        self.approvals: Counter[str] = Counter()
        self.started = 0.0

    async def run(self, timeout: float) -> DemoResult:
        crm = await self.stack.connect("crm")
        desk = await enrol_approver(self.stack)
        self.started = time.monotonic()
        feeding = asyncio.create_task(feed(self.stack, crm, self.cases))
        approving = asyncio.create_task(approve(self.stack, desk, self.approvals))
        timed_out = False
        try:
            with Live(self._progress(), console=self.console, refresh_per_second=4) as live:
                while True:
                    await asyncio.sleep(0.5)
                    try:
                        await self._refresh()
                    except MeshError as exc:
                        # The event store restarting (or killed) is no reason to stop
                        # watching: the views are read again on the next tick.
                        log.info("views not readable just now: %s", exc)
                    live.update(self._progress())
                    self.stack.check_processes()
                    for task in (feeding, approving):
                        if task.done() and task.exception() is not None:
                            raise task.exception()  # type: ignore[misc]
                    if feeding.done() and self._finished():
                        break
                    if time.monotonic() - self.started > timeout:
                        timed_out = True
                        break
        finally:
            approving.cancel()
            await asyncio.gather(feeding, approving, return_exceptions=True)
        elapsed = time.monotonic() - self.started
        await self._refresh()
        return await collect_result(
            self.stack, self.cases, self.views, self.approvals, elapsed, timed_out
        )

    async def _refresh(self) -> None:
        after: str | None = None
        while True:
            page = (
                await store_request(
                    self.stack.operator_nc,
                    self.stack.topology,
                    "cases",
                    CaseQuery(limit=1000, after=after),
                )
            ).cases
            for view in page:
                self.views[view.case_id] = view
            if len(page) < 1000:
                return
            after = page[-1].case_id

    def _finished(self) -> bool:
        accepted = [c for c in self.cases if c.reply is not None and c.reply.ok]
        if len(accepted) + self._refused() < len(self.cases):
            return False
        return all(
            (v := self.views.get(c.reply.case_id or "")) is not None and v.status in FINAL
            for c in accepted
            if c.reply is not None
        )

    def _refused(self) -> int:
        return sum(1 for c in self.cases if c.reply is not None and not c.reply.ok)

    def _progress(self) -> Table:
        statuses = Counter(v.status for v in self.views.values())
        outcomes = Counter(v.outcome or "" for v in self.views.values() if v.status == "closed")
        waiting = sum(v.pending_approvals for v in self.views.values())
        submitted = sum(1 for c in self.cases if c.reply is not None)
        table = Table(title=f"agent mesh demo — {time.monotonic() - self.started:5.1f}s")
        table.add_column("cases")
        table.add_column("", justify="right")
        table.add_row("submitted", f"{submitted}/{len(self.cases)}")
        table.add_row("refused at the ingress", str(self._refused()))
        table.add_row("in progress", str(statuses.get("open", 0)))
        table.add_row("  waiting for something from outside", str(statuses.get("waiting", 0)))
        table.add_row("  waiting for the approver", str(waiting))
        table.add_row("escalated to a human", str(statuses.get("escalated", 0)))
        for outcome, count in sorted(outcomes.items()):
            table.add_row(f"closed: {outcome}", str(count))
        table.add_row(
            "approver decisions", ", ".join(f"{k} {v}" for k, v in self.approvals.items())
        )
        return table
