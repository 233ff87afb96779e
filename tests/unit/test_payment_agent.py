"""The payment agent against the simulated gateway, in-process: what a capability
declares as compensation is what runs, a gateway outage within the retry budget is
left to redelivery, and only an outage past the budget (or the last delivery) reaches
a person."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts import ActionApproved, ActionCompleted, ActionFailed, CaseClosed, CaseEscalated
from contracts.events.actions import ActionDecisionPayload, DecisionProvenance
from mesh._runtime.resilience import CircuitBreaker, RetryBudget, redelivery_span
from services.agents.claims import payment
from services.agents.claims.capabilities import (
    ISSUE_PAYMENT,
    Capability,
    Compensation,
    Payment,
    Step,
)
from services.agents.claims.domain import PaymentInstruction
from services.agents.claims.gateway import GatewaySettings, Ledger, gateway_app
from services.agents.claims.gateway_client import GatewayClient, GatewayUnavailable

KEY = "case-1:issue_payment"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Gateway(httpx.AsyncBaseTransport):
    """The real gateway app, with an outage switch: requests whose path matches
    `failing` get no answer (a refused connection), or lose their answer after the
    gateway acted (`lost`)."""

    def __init__(self, ledger: Ledger) -> None:
        self.app = httpx.ASGITransport(app=gateway_app(GatewaySettings(failure_rate=0), ledger))
        self.failing: Callable[[str], bool] = lambda _path: False
        self.lost = False
        self.paths: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.paths.append(path)
        if self.failing(path):
            if not self.lost:
                raise httpx.ConnectError("connection refused", request=request)
            await self.app.handle_async_request(request)
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return await self.app.handle_async_request(request)


@dataclass
class Context:
    """What the payment handler uses of a HandlerContext."""

    delivery: int = 1
    last_delivery: bool = False
    emitted: list[tuple[type[Any], Any]] = field(default_factory=list)
    breakers: dict[str, CircuitBreaker] = field(default_factory=dict)

    def breaker(self, name: str) -> CircuitBreaker:
        return self.breakers.setdefault(name, CircuitBreaker(name, failure_threshold=100))

    async def emit(self, event_type: type[Any], payload: Any) -> None:
        self.emitted.append((event_type, payload))

    def types(self) -> list[type[Any]]:
        return [event_type for event_type, _ in self.emitted]

    def failure(self) -> str:
        [error] = [p.error for t, p in self.emitted if t is ActionFailed]
        return str(error)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    opened = Ledger(tmp_path / "gateway.db")
    yield opened
    opened.close()


@pytest.fixture
async def gateway(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    transport = Gateway(ledger)
    client = GatewayClient("http://gateway", transport=transport)
    monkeypatch.setattr(payment, "_gateway", client)
    monkeypatch.setattr(payment, "ATTEMPTS", 1)  # no in-process backoff to wait for
    yield transport
    await client.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(payment, "_budget", RetryBudget(10.0, clock=clock))
    return clock


def approved() -> ActionApproved:
    return ActionApproved(
        case_id="case-1",
        actor="policy",
        payload=ActionDecisionPayload(
            request_id="request-1",
            action_type="issue_payment",
            provenance=DecisionProvenance(policy_bundle_hash="test"),
        ),
    )


async def execute(
    ctx: Context, payee: str = "DE89-00000001", capability: Capability | None = None
) -> None:
    instruction = PaymentInstruction(amount=42_001, currency="EUR", payee_account=payee)
    await payment._execute(
        ctx,  # type: ignore[arg-type]
        approved(),
        capability or ISSUE_PAYMENT,
        Payment(KEY, instruction),
    )


def status(ledger: Ledger) -> tuple[str, int]:
    [row] = ledger.rows()
    return row["status"], row["captures"]


async def test_a_payment_is_authorized_captured_and_closed(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    ctx = Context()
    await execute(ctx)
    assert ctx.types() == [ActionCompleted, CaseClosed]
    assert status(ledger) == ("captured", 1)


async def test_a_refused_capture_runs_the_declared_compensation(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    ctx = Context()
    await execute(ctx, payee="CLOSED-00000001")
    assert ctx.types() == [ActionFailed, CaseEscalated]
    assert "compensated: void the authorization" in ctx.failure()
    assert "payee account is closed" in ctx.failure()
    assert status(ledger) == ("voided", 0)


async def test_what_runs_is_what_the_capability_declares(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    undone: list[str | None] = []

    async def release(client: GatewayClient, held: Payment) -> None:
        undone.append(held.reference)

    capability = Capability(
        "issue_payment",
        steps=(
            Step(
                "authorize",
                ISSUE_PAYMENT.steps[0].do,
                Compensation("release the hold", release),
            ),
            Step("capture", ISSUE_PAYMENT.steps[1].do),
        ),
    )
    ctx = Context()
    await execute(ctx, payee="CLOSED-00000001", capability=capability)
    [row] = ledger.rows()
    assert undone == [row["payment_ref"]]
    assert "compensated: release the hold" in ctx.failure()
    assert row["status"] == "authorized"  # the void was not declared, so it did not run
    assert not any(path.endswith("/void") for path in gateway.paths)


async def test_an_outage_within_the_budget_is_left_to_redelivery(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    gateway.failing = lambda _path: True
    for delivery in (1, 2, 3):
        ctx = Context(delivery=delivery)
        with pytest.raises(GatewayUnavailable):
            await execute(ctx)
        assert ctx.emitted == []  # nobody told: the runtime NAKs and redelivers
        clock.now += 3
    gateway.failing = lambda _path: False  # the gateway is back, 9 s later
    ctx = Context(delivery=4)
    await execute(ctx)
    assert ctx.types() == [ActionCompleted, CaseClosed]
    assert status(ledger) == ("captured", 1)


async def test_an_outage_past_the_budget_escalates(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    gateway.failing = lambda _path: True
    with pytest.raises(GatewayUnavailable):
        await execute(Context(delivery=1))
    clock.now += 10.5
    ctx = Context(delivery=2)
    await execute(ctx)
    assert ctx.types() == [ActionFailed, CaseEscalated]
    assert ctx.failure().startswith("payment not made: gateway /v1/payments")
    assert "past the retry budget of 10s" in ctx.failure()


async def test_the_last_delivery_escalates_within_the_budget(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    gateway.failing = lambda _path: True
    ctx = Context(delivery=6, last_delivery=True)
    await execute(ctx)
    assert ctx.types() == [ActionFailed, CaseEscalated]
    assert "at the last of 6 deliveries" in ctx.failure()


async def test_a_capture_that_stays_unavailable_is_compensated(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    gateway.failing = lambda path: path.endswith("/capture")
    with pytest.raises(GatewayUnavailable):
        await execute(Context(delivery=1))
    clock.now += 11
    ctx = Context(delivery=2)
    await execute(ctx)
    assert "compensated: void the authorization" in ctx.failure()
    assert status(ledger) == ("voided", 0)


async def test_a_capture_whose_answers_were_lost_is_found_paid_by_the_compensation(
    gateway: Gateway, ledger: Ledger, clock: Clock
) -> None:
    """The capture went through every time, but no answer came back: the void is
    refused (409, captured), and that is the news that the payment was made."""
    gateway.failing = lambda path: path.endswith("/capture")
    gateway.lost = True
    with pytest.raises(GatewayUnavailable):
        await execute(Context(delivery=1))
    clock.now += 11
    ctx = Context(delivery=2)
    await execute(ctx)
    assert ctx.types() == [ActionCompleted, CaseClosed]
    assert status(ledger) == ("captured", 1)


def test_the_budget_counts_from_the_first_failure_until_settled() -> None:
    clock = Clock()
    budget = RetryBudget(10.0, clock=clock)
    assert not budget.spent("a")
    clock.now = 9.9
    assert not budget.spent("a")
    assert not budget.spent("b")  # its own clock
    clock.now = 10.0
    assert budget.spent("a")
    budget.settled("a")
    assert not budget.spent("a")  # a new failure, a new clock
    assert budget.failed("b") == pytest.approx(0.1)


def test_the_budget_forgets_the_oldest_keys_beyond_its_limit() -> None:
    clock = Clock()
    budget = RetryBudget(1.0, limit=2, clock=clock)
    budget.failed("a")
    budget.failed("b")
    clock.now = 5
    budget.failed("c")
    assert budget.failed("a") == 0  # forgotten, so counted afresh
    assert budget.failed("c") == 0


def test_the_redelivery_span_is_the_backoff_with_jitter_at_its_mean() -> None:
    # Delays before deliveries 2..6 at base 0.5, cap 60: 0.5, 1, 2, 4, 8, each jittered
    # down to as little as half.
    assert redelivery_span(6, base=0.5, cap=60) == pytest.approx(0.75 * 15.5)
    # The stack's: base 0.2, cap 3, ten deliveries.
    assert redelivery_span(10, base=0.2, cap=3) == pytest.approx(0.75 * (3.0 + 3 * 5))
    assert redelivery_span(1, base=1, cap=1) == 0
