"""The end of the demo: what it found (outcomes per kind of claim, dead letters, the
gateway's ledger, the audit verification of the whole log) and the summary it prints."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.table import Table

from contracts.eventstore_api import CaseView
from mesh._runtime.dead_letters import read_dead_letters
from mesh._runtime.resilience import retry_transient
from mesh._support.text import shown
from mesh.errors import BrokerError, StoreRefused
from services.eventstore.audit import Report, verify_bundle
from services.eventstore.export import build_bundle
from services.stack.demo.payments import completions_in, payment_problems
from services.stack.demo.workload import MIX, WAITING_MIX, DemoCase
from services.stack.stack import Stack

T = TypeVar("T")

FINAL = ("closed", "escalated")


@dataclass
class DemoResult:
    cases: list[DemoCase]
    views: dict[str, CaseView]
    elapsed: float
    dead_letters: Counter[str]
    approvals: Counter[str]
    ledger: list[dict[str, Any]]
    report: Report
    timed_out: bool
    outcomes: dict[str, Counter[str]] = field(default_factory=dict)
    # request id -> the action_completed events the log holds for it (distinct ids)
    completions: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> list[DemoCase]:
        return [c for c in self.cases if c.reply is not None and c.reply.ok]

    @property
    def all_final(self) -> bool:
        return all(
            (view := self.views.get(c.reply.case_id or "")) is not None and view.status in FINAL
            for c in self.accepted
            if c.reply is not None
        )

    @property
    def payment_problems(self) -> list[str]:
        """Whatever shows a claim paid other than exactly once (see `payments`)."""
        return payment_problems(self.ledger, self.completions, self.views)

    @property
    def paid_once(self) -> bool:
        return not self.payment_problems


async def collect_result(
    stack: Stack,
    cases: list[DemoCase],
    views: dict[str, CaseView],
    approvals: Counter[str],
    elapsed: float,
    timed_out: bool,
) -> DemoResult:
    """Everything the summary shows, read from the running mesh once the demo ends —
    patiently: on a cluster the last case may end while streams still elect leaders
    (a member just restarted), and the registry's standby may be taking over."""
    js = stack.operator_nc.jetstream()
    letters = await _patiently(lambda: read_dead_letters(js, stack.topology, limit=10_000))
    dead = Counter(letter.kind for letter in letters)
    async with stack.gateway_client() as http:
        ledger = (await http.get("/v1/ledger")).json()["payments"]
    bundle = await _patiently(lambda: build_bundle(stack.operator_nc, stack.topology, None))
    completions = completions_in(bundle)
    # A demo's log: intake's waits ran on a compressed clock (DEMO_CLOCK_RATE), which the
    # verifier notes here and would name on a real mesh.
    report = verify_bundle(
        bundle,
        store_key=stack.layout.identity("eventstore").public_key,
        compressed_clock_allowed=True,
    )
    outcomes: dict[str, Counter[str]] = defaultdict(Counter)
    for case in cases:
        if case.reply is None or not case.reply.ok:
            outcomes[case.kind]["refused at ingress"] += 1
            continue
        view = views.get(case.reply.case_id or "")
        if view is None or view.status not in FINAL:
            outcomes[case.kind]["unfinished"] += 1
        elif view.status == "escalated":
            outcomes[case.kind]["escalated"] += 1
        else:
            outcomes[case.kind][view.outcome or "closed"] += 1
    return DemoResult(
        cases=cases,
        views=views,
        elapsed=elapsed,
        dead_letters=dead,
        approvals=approvals,
        ledger=ledger,
        report=report,
        timed_out=timed_out,
        outcomes=dict(outcomes),
        completions=completions,
    )


async def _patiently(read: Callable[[], Awaitable[T]]) -> T:
    """A read retried while the broker, or a service it asks, is not there yet."""
    return await retry_transient(
        read,
        attempts=12,
        maximum=5.0,
        deadline=90.0,
        retry_on=lambda e: isinstance(e, BrokerError | StoreRefused),
    )


def latencies(result: DemoResult) -> list[float]:
    """Seconds from a case's opening to its final event, by the broker's clock."""
    return [
        (view.updated_at - view.opened_at).total_seconds()
        for view in result.views.values()
        if view.status in FINAL and view.opened_at is not None
    ]


def print_summary(result: DemoResult, console: Console) -> None:
    table = Table(title="outcomes by kind of claim")
    table.add_column("kind")
    table.add_column("cases", justify="right")
    table.add_column("outcomes")
    for kind in (*MIX, *WAITING_MIX):
        counts = result.outcomes.get(kind, Counter())
        if counts:
            detail = ", ".join(f"{k} {v}" for k, v in counts.most_common())
            table.add_row(kind, str(sum(counts.values())), shown(detail))
    console.print(table)
    final = latencies(result)
    escalated = sum(1 for v in result.views.values() if v.status == "escalated")
    console.print(
        f"cases: {len(result.cases)} submitted, {len(result.accepted)} opened, "
        f"{len(final)} final, {escalated} escalated to a human; "
        f"approver: {dict(result.approvals)}",
        highlight=False,
    )
    waited = {kind: result.outcomes.get(kind, Counter()) for kind in WAITING_MIX}
    if any(waited.values()):
        resumed = sum(v for k, v in waited["theft reported"].items() if k != "escalated")
        console.print(
            f"waited for a police report: {sum(sum(c.values()) for c in waited.values())} "
            f"claims — {resumed} resumed when the report came, "
            f"{waited['theft unreported'].get('escalated', 0)} escalated at the 14-day "
            f"deadline ({len(result.report.notes)} timers on the demo's compressed clock)",
            highlight=False,
        )
    console.print(
        "dead letters: "
        + (", ".join(f"{k} {v}" for k, v in result.dead_letters.items()) or "none"),
        highlight=False,
    )
    if final:
        p50 = statistics.median(final)
        p99 = sorted(final)[min(len(final) - 1, int(0.99 * len(final)))]
        console.print(
            f"throughput {len(final) / result.elapsed:.1f} cases/s over {result.elapsed:.1f}s; "
            f"case latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms",
            highlight=False,
        )
    captured = sum(1 for p in result.ledger if p["status"] == "captured")
    moved = sum(p["captures"] for p in result.ledger)
    voided = sum(1 for p in result.ledger if p["status"] == "voided")
    problems = result.payment_problems
    console.print(
        f"payments: {captured} captured ({moved} captures moved money, "
        f"{sum(result.completions.values())} completions logged), {voided} voided by "
        f"compensation; each exactly once: {'yes' if not problems else 'NO'}",
        highlight=False,
    )
    for problem in problems[:20]:
        console.print(f"[red]✗[/red] {shown(problem)}", highlight=False)
    report = result.report
    for violation in report.violations[:20]:
        console.print(f"[red]✗[/red] {shown(str(violation))}", highlight=False)  # log text
    verdict = "[green]passed[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(
        f"mesh audit verify --all: {verdict} — {report.events} events in {report.cases} "
        f"cases, {report.checkpoints} signed checkpoints, {len(report.violations)} violations",
        highlight=False,
    )
    if result.timed_out:
        console.print("[red]the demo timed out before every case was final[/red]")
