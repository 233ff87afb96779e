"""Intake: is the claim covered and complete? (`mesh run services.agents.claims.intake`)"""

from __future__ import annotations

import msgspec

from contracts import (
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.ingress import CLAIM_KIND
from mesh import Agent, HandlerContext
from services.agents.claims.cards import INTAKE
from services.agents.claims.domain import intake, read_claim

agent = Agent(INTAKE)


@agent.on(CaseOpened)
async def check_claim(event: CaseOpened, ctx: HandlerContext) -> None:
    if event.payload.kind != CLAIM_KIND:
        return  # another process's case
    try:
        claim = read_claim(event.payload.data)
    except msgspec.ValidationError as exc:
        reasons = [f"claim data unreadable: {exc}"]
    else:
        result = intake(claim, ctx.written_at.date())
        if result.accepted:
            await ctx.emit(
                CaseStepCompleted,
                CaseStepCompletedPayload(
                    step="intake",
                    outcome="accepted",
                    rationale=f"policy {claim.policy_number} in force; claim within cover",
                    # Intake's verdict, the one fact it is the authority for (the
                    # claim's own facts are the ingress's to state): policy pays
                    # nothing without it.
                    evidence=result.evidence,
                ),
            )
            return
        reasons = result.reasons
    await ctx.emit(
        CaseStepCompleted,
        CaseStepCompletedPayload(step="intake", outcome="rejected", rationale="; ".join(reasons)),
    )
    await ctx.emit(CaseClosed, CaseClosedPayload(outcome="rejected", summary="; ".join(reasons)))
