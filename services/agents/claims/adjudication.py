"""Adjudication: what does the policy pay? It asks to pay it (the policy service
decides), and closes the case when payment is refused.
(`mesh run services.agents.claims.adjudication`)"""

from __future__ import annotations

from contracts import (
    ActionDenied,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalExpired,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from mesh import Agent, HandlerContext, PermanentError
from services.agents.claims.cards import ADJUDICATION
from services.agents.claims.domain import CLAIM_ACCEPTED, claim_accepted, payout, read_claim

agent = Agent(ADJUDICATION)


@agent.on(CaseStepCompleted)
async def adjudicate(event: CaseStepCompleted, ctx: HandlerContext) -> None:
    if event.payload.step != "fraud_screening":
        return
    history = await ctx.history()
    if any(
        s.event.actor == ctx.agent.card.agent_id
        and isinstance(s.event, ActionRequested | CaseClosed)
        for s in history
    ):
        return  # adjudicated already: once per case, however often a step fires again
    closed = next((s for s in history if isinstance(s.event, CaseClosed)), None)
    if closed is not None:
        # Nothing is adjudicated in a closed case, whoever "screened" it afterwards.
        raise PermanentError(
            f"case {event.case_id} was closed at #{closed.sequence} by {closed.event.actor}: "
            "nothing more is adjudicated in it"
        )
    facts = await ctx.facts(history)
    if "fraud_score" not in facts:
        # A "screening" by anyone but the fraud screening's authority decides nothing.
        raise PermanentError(f"no authoritative fraud_score in case {event.case_id} yet")
    if not claim_accepted(facts):
        # Only intake (its card's authority) accepts a claim: a screening of a claim it
        # did not accept — rejected, or never checked — is not a reason to pay.
        raise PermanentError(
            f"intake did not accept the claim of case {event.case_id} "
            f"(no authoritative {CLAIM_ACCEPTED}=true): nothing is paid"
        )
    opened = next((s.event for s in history if isinstance(s.event, CaseOpened)), None)
    if opened is None:
        raise PermanentError("a screened claim without a case_opened in the log")
    claim = read_claim(opened.payload.data)
    amount = payout(claim)
    if amount == 0:
        await ctx.emit(
            CaseStepCompleted,
            CaseStepCompletedPayload(
                step="adjudication", outcome="no payout", rationale="within the deductible"
            ),
        )
        await ctx.emit(CaseClosed, CaseClosedPayload(outcome="no payout"))
        return
    await ctx.emit(
        CaseStepCompleted,
        CaseStepCompletedPayload(
            step="adjudication",
            outcome="payout",
            rationale=f"covered; {claim.amount_cents} claimed, {amount} after deductible",
            evidence={"payout_cents": amount},
        ),
    )
    await ctx.emit(
        ActionRequested,
        ActionRequestedPayload(
            action_type="issue_payment",
            parameters={
                "amount": amount,
                "currency": claim.currency,
                "payee_account": claim.payee_account,
            },
            rationale=f"pay the {claim.claim_type} claim of {claim.claimant}",
            evidence={"payout_cents": amount},
        ),
    )


@agent.on(ActionDenied)
async def close_denied(event: ActionDenied, ctx: HandlerContext) -> None:
    if await _closed_already(ctx):
        return  # a request in a closed case is denied: the case stays closed, once
    await ctx.emit(
        CaseClosed,
        CaseClosedPayload(outcome="denied", summary="; ".join(event.payload.reasons)),
    )


@agent.on(ApprovalExpired)
async def close_expired(event: ApprovalExpired, ctx: HandlerContext) -> None:
    if await _closed_already(ctx):
        return
    await ctx.emit(CaseClosed, CaseClosedPayload(outcome="expired", summary=event.payload.reason))


async def _closed_already(ctx: HandlerContext) -> bool:
    """A case is closed once (the auditor flags a second closing)."""
    return any(isinstance(s.event, CaseClosed) for s in await ctx.history())
