"""Fraud screening: how risky is an accepted claim? (`mesh run services.agents.claims.fraud`)"""

from __future__ import annotations

from contracts import CaseOpened, CaseStepCompleted, CaseStepCompletedPayload
from mesh import Agent, HandlerContext, PermanentError
from services.agents.claims.cards import FRAUD
from services.agents.claims.domain import fraud_score, read_claim

agent = Agent(FRAUD)


@agent.on(CaseStepCompleted)
async def screen(event: CaseStepCompleted, ctx: HandlerContext) -> None:
    if event.payload.step != "intake" or event.payload.outcome != "accepted":
        return
    history = await ctx.history()
    if any(
        isinstance(s.event, CaseStepCompleted)
        and s.event.actor == ctx.agent.card.agent_id
        and s.event.payload.step == "fraud_screening"
        for s in history
    ):
        return  # screened already: once per case, however often intake reports again
    opened = next((s.event for s in history if isinstance(s.event, CaseOpened)), None)
    if opened is None:
        raise PermanentError("an accepted intake without a case_opened in the log")
    score, signals = fraud_score(read_claim(opened.payload.data))
    band = "high" if score > 80 else "medium" if score > 40 else "low"
    await ctx.emit(
        CaseStepCompleted,
        CaseStepCompletedPayload(
            step="fraud_screening",
            outcome=f"{band} risk",
            rationale="; ".join(signals) or "no signal",
            evidence={"fraud_score": score},
        ),
    )
