"""`mesh demo`: the whole mesh up as processes, reference claims flowing through it, a
person watching, and a summary that ends with the audit verification.

Claims of mixed kinds go in through the ingress (most over NATS as the `crm`
principal, some over HTTP): small ones are paid straight away, large ones wait for the
demo approver (who approves most and rejects some), fraudulent ones are denied by
policy, lapsed policies are rejected at intake, malformed input is refused at the door
and kept in the dead-letter stream, and some payees' banks fail, flap, stall or turn out
to be closed at the gateway — retries, the circuit breaker, escalation to a human and
compensation all happen on the way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import msgspec
from nats.aio.client import Client
from rich.console import Console
from rich.live import Live
from rich.table import Table

from contracts import (
    ActionCompleted,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRejected,
    ApprovalRejectedPayload,
    ContractError,
    decode,
)
from contracts.audit_bundle import AuditBundle
from contracts.cards import AgentCard
from contracts.eventstore_api import CaseQuery, CaseView
from contracts.ingress import CLAIM_KIND, IngressReply
from contracts.subjects import event_type_of
from mesh._broker.publisher import EventPublisher
from mesh._runtime.dead_letters import read_dead_letters
from mesh._support.text import shown
from mesh._trust.enrolment import issue_grant
from mesh._trust.identity import Identity
from mesh._trust.onboarding import register
from mesh._trust.registry_client import request_with_patience
from mesh.errors import MeshError
from services.agents.claims.domain import obligation_key
from services.eventstore.audit import Report, verify_bundle
from services.eventstore.export import build_bundle, store_request
from services.stack.stack import Stack

log = logging.getLogger(__name__)

APPROVER = "dana"
FINAL = ("closed", "escalated")
# kind -> share of the cases
MIX = {
    "small": 0.38,
    "large": 0.15,
    "fraudulent": 0.08,
    "malformed": 0.08,
    "lapsed": 0.05,
    "gateway down": 0.06,
    "gateway flaky": 0.08,
    "gateway slow": 0.06,
    "account closed": 0.06,
}
PAYEE = {
    "gateway down": "FAIL",
    "gateway flaky": "FLAKY",
    "gateway slow": "SLOW",
    "account closed": "CLOSED",
}


@dataclass
class DemoCase:
    number: int
    kind: str
    body: dict[str, Any]
    via_http: bool
    submitted_at: float = 0.0
    reply: IngressReply | None = None
    http_status: int | None = None


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
        """Whatever shows a claim paid other than exactly once. Counted where a double
        payment would show: the gateway's journal of captures that moved money (per
        idempotency key, which is the claim's obligation), the action_completed events
        in the log (per request), and paid cases against keys whose money moved."""
        problems = [
            f"{p['idempotency_key']}: money moved {p['captures']} times ({p['payment_ref']})"
            for p in self.ledger
            if p["captures"] > 1
        ]
        problems += [
            f"request {request}: completed {count} times"
            for request, count in sorted(self.completions.items())
            if count > 1
        ]
        moved = {p["idempotency_key"] for p in self.ledger if p["captures"] > 0}
        paid = {
            obligation_key(view.case_id, "issue_payment")
            for view in self.views.values()
            if view.status == "closed" and view.outcome == "paid"
        }
        problems += [
            f"{key}: money moved, but the case is not paid" for key in sorted(moved - paid)
        ]
        problems += [f"{key}: the case is paid, but no money moved" for key in sorted(paid - moved)]
        return problems

    @property
    def paid_once(self) -> bool:
        return not self.payment_problems


def make_cases(count: int, seed: int) -> list[DemoCase]:
    rng = random.Random(seed)
    kinds = rng.choices(list(MIX), weights=list(MIX.values()), k=count)
    today = date.today()
    cases = []
    for number, kind in enumerate(kinds, start=1):
        amount = rng.randrange(20_000, 95_000)
        claim_type = rng.choice(["auto", "home", "travel"])
        if kind == "large":
            amount, claim_type = rng.randrange(200_000, 1_500_000), rng.choice(["auto", "home"])
        data: dict[str, Any] = {
            "policy_number": f"P-{rng.randrange(1000, 9999)}7",  # in force: not ending in 0
            "claimant": rng.choice(["A. Jansen", "B. Okafor", "C. Rossi", "D. Novak", "E. Kim"]),
            "claim_type": claim_type,
            "amount_cents": amount + 1,  # never a round amount
            "incident_date": str(today - timedelta(days=rng.randrange(1, 200))),
            "description": rng.choice(["rear-ended at a light", "water damage", "lost luggage"]),
            "payee_account": f"{PAYEE.get(kind, 'DE89')}-{rng.randrange(10**8):08d}",
        }
        if kind == "fraudulent":
            data["description"] = "staged collision, no witnesses, cash only"
        if kind == "lapsed":
            data["policy_number"] = f"P-{rng.randrange(100, 999)}0"
        body: dict[str, Any] = {
            "kind": CLAIM_KIND,
            "external_ref": f"CLM-{number:05d}",
            "data": data,
        }
        if kind == "malformed":
            broken = rng.choice(["amount", "policy", "field", "kind"])
            if broken == "amount":
                data["amount_cents"] = -5
            elif broken == "policy":
                data["policy_number"] = "12345"
            elif broken == "field":
                del data["payee_account"]
            else:
                body["kind"] = "parking_ticket"
        cases.append(DemoCase(number, kind, body, via_http=number % 5 == 0))
    return cases


async def _post_again_if_lost(
    http: httpx.AsyncClient, url: str, *, content: bytes, headers: dict[str, str]
) -> httpx.Response:
    """A POST whose connection broke (a kept-alive connection the server closed just as
    it was reused) is sent again, a few times: opening a case is idempotent by its
    reference, so a second request answers for the first."""
    for attempt in range(1, 4):
        try:
            return await http.post(url, content=content, headers=headers)
        except httpx.TransportError:
            if attempt == 3:
                raise
            await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


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
        approver_nc, approver = await self._approver()
        self.started = time.monotonic()
        feeding = asyncio.create_task(self._feed(crm))
        approving = asyncio.create_task(self._approve(approver_nc, approver))
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
        return await self._result(elapsed, timed_out)

    # ------------------------------------------------------------------ the actors

    async def _approver(self) -> tuple[Client, Identity]:
        identity = self.stack.layout.identity(APPROVER)
        card = AgentCard(
            agent_id=APPROVER,
            name="Dana (claims desk)",
            version="1",
            owner="claims-desk",
            purpose="approves or rejects large payouts",
            kind="human",
            roles=["approver", "claims_manager", "head_of_claims"],
            produces=["approval_granted", "approval_rejected"],
        )
        # A human approver enrols like anyone else: with an operator's grant.
        grant = issue_grant(card, self.stack.layout.identity("operator"), "operator")
        await register(
            self.stack.url, card, identity, self.stack.topology.subjects, wait=20, grant=grant
        )
        return await self.stack.connect(APPROVER), identity

    async def _feed(self, crm: Client) -> None:
        gate = asyncio.Semaphore(24)
        token = self.stack.layout.http_token("crm")
        subject = self.stack.topology.subjects.service("ingress", "crm")
        async with httpx.AsyncClient(base_url=self.stack.ingress_http, timeout=10) as http:

            async def submit(case: DemoCase) -> None:
                body = msgspec.json.encode(case.body)
                async with gate:
                    case.submitted_at = time.monotonic()
                    if case.via_http:
                        response = await _post_again_if_lost(
                            http,
                            "/v1/cases/crm",
                            content=body,
                            headers={"Authorization": f"Bearer {token}"},
                        )
                        case.http_status = response.status_code
                        case.reply = msgspec.json.decode(response.content, type=IngressReply)
                    else:
                        msg = await request_with_patience(
                            crm, subject, body, timeout=10, what="open a case"
                        )
                        case.reply = msgspec.json.decode(msg.data, type=IngressReply)

            await asyncio.gather(*(submit(case) for case in self.cases))

    async def _approve(self, nc: Client, identity: Identity) -> None:
        topology = self.stack.topology
        publisher = EventPublisher(nc.jetstream(), identity, topology, nc=nc)
        decided: set[str] = set()
        while True:
            await asyncio.sleep(0.3)
            reply = await request_with_patience(
                nc,
                topology.subjects.service_as("policy", "pending", APPROVER),
                b"",
                timeout=5,
                what="pending",
            )
            for item in msgspec.json.decode(reply.data):
                request_id = item["request_id"]
                if request_id in decided:
                    continue
                decided.add(request_id)
                # Most are approved; one in five is rejected (no receipt attached).
                grant = int(hashlib.sha256(request_id.encode()).hexdigest(), 16) % 5 != 0
                envelope: dict[str, Any] = {
                    "case_id": item["case_id"],
                    "correlation_id": item["correlation_id"],
                    "causation_id": item["required_event_id"],
                    "actor": APPROVER,
                }
                if grant:
                    await publisher.publish(
                        ApprovalGranted(
                            **envelope,
                            payload=ApprovalGrantedPayload(
                                request_id=request_id,
                                approver=APPROVER,
                                comment="documents ok",
                                request_digest=item["request_digest"],
                            ),
                        )
                    )
                else:
                    await publisher.publish(
                        ApprovalRejected(
                            **envelope,
                            payload=ApprovalRejectedPayload(
                                request_id=request_id,
                                approver=APPROVER,
                                reason="no receipt",
                                request_digest=item["request_digest"],
                            ),
                        )
                    )
                self.approvals["approved" if grant else "rejected"] += 1

    # ------------------------------------------------------------------ watching

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
        table.add_row("  waiting for the approver", str(waiting))
        table.add_row("escalated to a human", str(statuses.get("escalated", 0)))
        for outcome, count in sorted(outcomes.items()):
            table.add_row(f"closed: {outcome}", str(count))
        table.add_row(
            "approver decisions", ", ".join(f"{k} {v}" for k, v in self.approvals.items())
        )
        return table

    # ------------------------------------------------------------------ the end

    async def _result(self, elapsed: float, timed_out: bool) -> DemoResult:
        await self._refresh()
        letters = await read_dead_letters(
            self.stack.operator_nc.jetstream(), self.stack.topology, limit=10_000
        )
        dead = Counter(letter.kind for letter in letters)
        async with self.stack.gateway_client() as http:
            ledger = (await http.get("/v1/ledger")).json()["payments"]
        bundle = await build_bundle(self.stack.operator_nc, self.stack.topology, None)
        completions = completions_in(bundle)
        report = verify_bundle(
            bundle, store_key=self.stack.layout.identity("eventstore").public_key
        )
        outcomes: dict[str, Counter[str]] = defaultdict(Counter)
        for case in self.cases:
            if case.reply is None or not case.reply.ok:
                outcomes[case.kind]["refused at ingress"] += 1
                continue
            view = self.views.get(case.reply.case_id or "")
            if view is None or view.status not in FINAL:
                outcomes[case.kind]["unfinished"] += 1
            elif view.status == "escalated":
                outcomes[case.kind]["escalated"] += 1
            else:
                outcomes[case.kind][view.outcome or "closed"] += 1
        return DemoResult(
            cases=self.cases,
            views=self.views,
            elapsed=elapsed,
            dead_letters=dead,
            approvals=self.approvals,
            ledger=ledger,
            report=report,
            timed_out=timed_out,
            outcomes=dict(outcomes),
            completions=completions,
        )


def completions_in(bundle: AuditBundle) -> Counter[str]:
    """request id -> how many distinct action_completed events the log holds for it."""
    name = ActionCompleted.event_name()
    seen: set[str] = set()
    completions: Counter[str] = Counter()
    for stored in bundle.events:
        if event_type_of(stored.subject) != name:
            continue
        try:
            event = decode(stored.body)
        except ContractError:
            continue  # the verification names it
        if isinstance(event, ActionCompleted) and event.event_id not in seen:
            seen.add(event.event_id)
            completions[event.payload.request_id] += 1
    return completions


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
    for kind in MIX:
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
