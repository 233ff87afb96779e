"""Payment: executes an approved `issue_payment` against the payment gateway, exactly
once. (`mesh run services.agents.claims.payment`, with MESH_GATEWAY_URL.)

- Before anything, the approval chain is proved from the log (policy's decision, and a
  human's grant where policy asked for one, every signature checked). A request that
  is not authorized is recorded as failed and escalated; the gateway is never called.
- The gateway is called with the business obligation as idempotency key (one payout
  per claim: `<case>:issue_payment`), never the request: a retry, a redelivery, a crash
  between the call and the ack, a replayed approval or a second request's approval
  never pays twice. A claim the log already shows paid is not paid again; the attempt
  is recorded as failed.
- What is paid is the request the approval chain proved, byte for byte.
- What an action does is declared (`capabilities.CAPABILITIES`): its steps in order (authorize, then
  capture), each with the compensation that undoes it. When a step cannot be done, the
  declared compensations of the steps already done run, last first — for a payment,
  the authorization is voided, so no money is held for a payment that will not happen.
- The retry budget. A gateway that does not answer (timeout, 5xx, refused connection)
  is tried again a few times at once (`ATTEMPTS`, for a blip), then through redelivery:
  the approval is NAK'ed and JetStream brings it back after the runtime's backoff
  (MESH_RETRY_BASE_DELAY doubling up to MESH_RETRY_MAX_DELAY, and never before an open
  circuit breaker lets a call through). Every step is idempotent, so each delivery
  starts again from the first. Only when a payment has been failing for longer than
  `MESH_PAYMENT_RETRY_BUDGET` seconds (default 10; counted from its first failure
  seen by this process) does the agent stop: it compensates what was done and
  escalates the case to a human. A restart of the gateway of a few seconds therefore
  costs time, never a person's attention. The runtime's MESH_MAX_DELIVER bounds the
  deliveries as well — on the last one the agent escalates whatever the budget says —
  so give redelivery at least the budget (`mesh._runtime.resilience.redelivery_span`: about
  12 s with the runtime's defaults, 13 s in `mesh up`; the agent logs a warning at
  its first payment when it is shorter).
- A gateway that refuses (4xx: a closed account, a key used for another payment) is
  not retried: compensate and escalate at once.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from contracts import (
    ActionApproved,
    ActionCompleted,
    ActionCompletedPayload,
    ActionFailed,
    ActionFailedPayload,
    CaseClosed,
    CaseClosedPayload,
    CaseEscalated,
    CaseEscalatedPayload,
)
from mesh import (
    Agent,
    CircuitOpen,
    HandlerContext,
    MeshSettings,
    NotAuthorized,
    RetryBudget,
    redelivery_span,
    retry_transient,
)
from services.agents.claims.capabilities import (
    CAPABILITIES,
    Capability,
    DoneAfterAll,
    Payment,
    Step,
)
from services.agents.claims.cards import PAYMENT
from services.agents.claims.domain import obligation_key, paid_by_another, payment_instruction
from services.agents.claims.gateway_client import (
    GatewayClient,
    GatewayRefused,
    GatewayUnavailable,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

agent = Agent(PAYMENT)
ATTEMPTS = 3  # at once, within one delivery; after that, redelivery
ESCALATE_TO = "claims_manager"


class PaymentSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MESH_PAYMENT_", extra="ignore")

    retry_budget: float = Field(
        default=10.0,
        ge=0,
        description="seconds a payment may go on failing transiently (gateway down, "
        "breaker open) and be redelivered before it is compensated and escalated",
    )


# --------------------------------------------------------------------------- running

_gateway: GatewayClient | None = None
_budget: RetryBudget | None = None


def gateway() -> GatewayClient:
    global _gateway
    if _gateway is None:
        # The gateway's credential, as a real acquirer would issue one.
        _gateway = GatewayClient(
            os.environ.get("MESH_GATEWAY_URL", "http://127.0.0.1:8099"),
            token=os.environ.get("MESH_GATEWAY_TOKEN"),
        )
    return _gateway


def use_gateway(client: GatewayClient | None) -> None:
    """Pay through `client` from now on (a test's gateway, in-process); None: through
    the one MESH_GATEWAY_URL names, as at start. The caller closes `client`."""
    global _gateway
    _gateway = client


def budget() -> RetryBudget:
    global _budget
    if _budget is None:
        _budget = RetryBudget(PaymentSettings().retry_budget)
        runtime = MeshSettings()
        span = redelivery_span(
            runtime.max_deliver, base=runtime.retry_base_delay, cap=runtime.retry_max_delay
        )
        if span < _budget.seconds:
            log.warning(
                "with MESH_MAX_DELIVER=%d the redelivery backoff lasts about %.1fs, less "
                "than the payment retry budget of %gs: a longer outage escalates at the "
                "last delivery, before the budget is spent",
                runtime.max_deliver,
                span,
                _budget.seconds,
            )
    return _budget


async def _call(ctx: HandlerContext, operation: Callable[[], Awaitable[T]]) -> T:
    """Through the breaker, retrying at once what may pass on a second try. An open
    breaker is not retried here: that is for redelivery, after the breaker's delay."""
    breaker = ctx.breaker("payment-gateway")
    return await retry_transient(
        lambda: breaker.call(operation),
        attempts=ATTEMPTS,
        initial=0.2,
        maximum=1.0,
        retry_on=lambda exc: isinstance(exc, GatewayUnavailable),
    )


def _unavailable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayUnavailable | CircuitOpen)


async def _give_up(ctx: HandlerContext, event: ActionApproved, error: str, attempts: int) -> None:
    budget().settled(event.payload.request_id)
    await ctx.emit(
        ActionFailed,
        ActionFailedPayload(
            request_id=event.payload.request_id,
            action_type=event.payload.action_type,
            error=error,
            retryable=False,
            attempts=attempts,
        ),
    )
    await ctx.emit(
        CaseEscalated, CaseEscalatedPayload(step="payment", reason=error, to_role=ESCALATE_TO)
    )


@agent.on(ActionApproved)
async def pay(event: ActionApproved, ctx: HandlerContext) -> None:
    capability = CAPABILITIES.get(event.payload.action_type)
    if capability is None:
        return
    request_id = event.payload.request_id
    try:
        authorization = await ctx.authorization(request_id)
    except NotAuthorized as exc:
        await _give_up(ctx, event, f"not executed: {exc.reason}", attempts=0)
        return
    history = (statement.event for statement in authorization.history)
    paid = paid_by_another(history, event.payload.action_type, request_id)
    if paid is not None:
        await _give_up(
            ctx,
            event,
            f"not executed: request {paid} already paid this claim (one payout per claim)",
            attempts=0,
        )
        return
    instruction = payment_instruction(authorization.request.payload.parameters)
    if isinstance(instruction, str):
        await _give_up(ctx, event, f"not executed: {instruction}", attempts=0)
        return
    assert event.case_id is not None
    payment = Payment(obligation_key(event.case_id, event.payload.action_type), instruction)
    await _execute(ctx, event, capability, payment)


async def _execute(
    ctx: HandlerContext, event: ActionApproved, capability: Capability, payment: Payment
) -> None:
    client = gateway()
    done: list[Step] = []
    for step in capability.steps:
        try:
            await _call(ctx, functools.partial(step.do, client, payment))
        except (GatewayRefused, GatewayUnavailable, CircuitOpen) as exc:
            if _unavailable(exc) and _retry_later(ctx, event):
                raise  # redelivered after the backoff; every step is idempotent
            await _compensate(ctx, event, payment, step, exc, done)
            return
        done.append(step)
    await _completed(ctx, event, payment)


def _retry_later(ctx: HandlerContext, event: ActionApproved) -> bool:
    """Leave it to redelivery, unless the payment's retry budget (or the runtime's
    deliveries) ran out."""
    spent = budget().spent(event.payload.request_id)
    return not spent and not ctx.last_delivery


def _why_stopped(ctx: HandlerContext, event: ActionApproved) -> str:
    failing = budget().failed(event.payload.request_id)
    if failing >= budget().seconds:
        return f"still failing after {failing:.1f}s, past the retry budget of {budget().seconds:g}s"
    return f"still failing at the last of {ctx.delivery} deliveries"


async def _compensate(
    ctx: HandlerContext,
    event: ActionApproved,
    payment: Payment,
    failed: Step,
    failure: Exception,
    done: list[Step],
) -> None:
    """`failed` cannot be done: undo the steps done before it, last first, by their
    declared compensations, and hand the case to a person."""
    what = f"{failed.name} of {payment.reference}" if payment.reference else failed.name
    why = f"{failure}; {_why_stopped(ctx, event)}" if _unavailable(failure) else str(failure)
    undone: list[str] = []
    for step in reversed(done):
        compensation = step.compensation
        if compensation is None:
            continue
        try:
            await _call(ctx, functools.partial(compensation.undo, gateway(), payment))
        except DoneAfterAll:
            await _completed(ctx, event, payment)
            return
        except (GatewayUnavailable, CircuitOpen) as exc:
            if not ctx.last_delivery:
                # Not undone yet: the whole action again later (every step is
                # idempotent, so it may even go through now).
                raise
            await _give_up(
                ctx,
                event,
                f"{what} failed ({why}) and the compensation ({compensation.description}) "
                f"failed too ({exc}): the funds stay held until a person acts",
                attempts=ctx.delivery,
            )
            return
        except GatewayRefused as exc:
            await _give_up(
                ctx,
                event,
                f"{what} failed ({why}) and the gateway refused the compensation "
                f"({compensation.description}: {exc}): a person must reconcile it",
                attempts=ctx.delivery,
            )
            return
        undone.append(compensation.description)
    if not undone:
        await _give_up(ctx, event, f"payment not made: {why}", attempts=ctx.delivery)
        return
    await _give_up(
        ctx,
        event,
        f"{what} failed ({why}); compensated: {'; '.join(undone)}",
        attempts=ctx.delivery,
    )


async def _completed(ctx: HandlerContext, event: ActionApproved, payment: Payment) -> None:
    budget().settled(event.payload.request_id)
    result: dict[str, Any] = {
        "payment_ref": payment.reference,
        "amount": payment.instruction.amount,
        "status": "paid",
    }
    await ctx.emit(
        ActionCompleted,
        ActionCompletedPayload(
            request_id=event.payload.request_id,
            action_type=event.payload.action_type,
            result=result,
        ),
    )
    await ctx.emit(
        CaseClosed, CaseClosedPayload(outcome="paid", summary=f"payment {payment.reference}")
    )
