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
- Transient failures are retried with exponential backoff and jitter; a circuit
  breaker stops calling a gateway that keeps failing (its state changes are events).
  When retries are exhausted the case escalates to a human.
- Paying is two steps: authorize, then capture. If the capture fails after the
  authorization committed, the declared compensation runs: the authorization is
  voided, so no money is held for a payment that will not happen.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

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
from mesh import Agent, HandlerContext
from mesh.authorization import NotAuthorized
from mesh.errors import CircuitOpen
from mesh.resilience import retry_transient
from services.agents.claims.cards import PAYMENT
from services.agents.claims.domain import PaymentInstruction, obligation_key, payment_instruction
from services.agents.claims.gateway_client import (
    GatewayClient,
    GatewayRefused,
    GatewayUnavailable,
)

agent = Agent(PAYMENT)
ATTEMPTS = 3
ESCALATE_TO = "claims_manager"
# What each executed action undoes when a later step of it fails: (step, compensation).
COMPENSATIONS = {"issue_payment": ("capture", "void the authorization")}
_gateway: GatewayClient | None = None


def gateway() -> GatewayClient:
    global _gateway
    if _gateway is None:
        # The gateway's credential, as a real acquirer would issue one.
        _gateway = GatewayClient(
            os.environ.get("MESH_GATEWAY_URL", "http://127.0.0.1:8099"),
            token=os.environ.get("MESH_GATEWAY_TOKEN"),
        )
    return _gateway


async def _call(ctx: HandlerContext, operation: Callable[[], Awaitable[dict[str, Any]]]) -> Any:
    """Through the breaker, retrying what may pass on a second try. An open breaker is
    not retried here: the runtime redelivers the event after the breaker's delay."""
    breaker = ctx.breaker("payment-gateway")
    return await retry_transient(
        lambda: breaker.call(operation),
        attempts=ATTEMPTS,
        initial=0.2,
        maximum=1.0,
        retry_on=lambda exc: isinstance(exc, GatewayUnavailable),
    )


async def _give_up(ctx: HandlerContext, event: ActionApproved, error: str, attempts: int) -> None:
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
    if event.payload.action_type != "issue_payment":
        return
    request_id = event.payload.request_id
    try:
        authorization = await ctx.authorization(request_id)
    except NotAuthorized as exc:
        await _give_up(ctx, event, f"not executed: {exc.reason}", attempts=0)
        return
    paid = next(
        (
            s.event.payload.request_id
            for s in authorization.history
            if isinstance(s.event, ActionCompleted)
            and s.event.payload.action_type == event.payload.action_type
            and s.event.payload.request_id != request_id
        ),
        None,
    )
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
    progress: dict[str, str] = {}
    try:
        await _execute(ctx, event, instruction, progress)
    except CircuitOpen as exc:
        if not ctx.last_delivery:
            raise  # the runtime redelivers after the breaker's delay
        # The gateway stayed unavailable through every redelivery: a person takes over.
        held = progress.get("authorized")
        error = (
            f"payment {held} authorized but neither captured nor voided ({exc}): "
            "the funds stay held until a person acts"
            if held
            else f"payment not made: {exc}"
        )
        await _give_up(ctx, event, error, attempts=ctx.delivery)


async def _execute(
    ctx: HandlerContext,
    event: ActionApproved,
    instruction: PaymentInstruction,
    progress: dict[str, str],
) -> None:
    assert event.case_id is not None
    key = obligation_key(event.case_id, event.payload.action_type)
    client = gateway()
    try:
        payment = await _call(
            ctx,
            lambda: client.authorize(
                key, instruction.amount, instruction.currency, instruction.payee_account
            ),
        )
    except (GatewayUnavailable, GatewayRefused) as exc:
        await _give_up(ctx, event, f"payment not made: {exc}", attempts=ATTEMPTS)
        return
    reference = payment["payment_ref"]
    progress["authorized"] = reference
    try:
        await _call(ctx, lambda: client.capture(reference))
    except (GatewayUnavailable, GatewayRefused) as exc:
        # The authorization committed and the capture cannot follow: compensate.
        try:
            await _call(ctx, lambda: client.void(reference))
        except GatewayRefused as refused:
            if refused.status != 409:
                raise
            # "captured": the capture went through after all (its answer was lost).
            await _completed(ctx, event, reference, instruction)
            return
        except GatewayUnavailable as unavailable:
            # Not voided yet: try the whole payment again later (every step is
            # idempotent); on the last delivery the runtime's retry budget is spent.
            if ctx.last_delivery:
                await _give_up(
                    ctx,
                    event,
                    f"capture of {reference} failed ({exc}) and the void failed too "
                    f"({unavailable}): the funds stay held until a person acts",
                    attempts=ctx.delivery,
                )
                return
            raise
        step, compensation = COMPENSATIONS["issue_payment"]
        await _give_up(
            ctx,
            event,
            f"{step} of {reference} failed ({exc}); compensated: {compensation}",
            attempts=ATTEMPTS,
        )
        return
    await _completed(ctx, event, reference, instruction)


async def _completed(
    ctx: HandlerContext, event: ActionApproved, reference: str, instruction: PaymentInstruction
) -> None:
    await ctx.emit(
        ActionCompleted,
        ActionCompletedPayload(
            request_id=event.payload.request_id,
            action_type="issue_payment",
            result={"payment_ref": reference, "amount": instruction.amount, "status": "paid"},
        ),
    )
    await ctx.emit(CaseClosed, CaseClosedPayload(outcome="paid", summary=f"payment {reference}"))
