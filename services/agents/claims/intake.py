"""Intake: is the claim covered and complete? (`mesh run services.agents.claims.intake`)

A theft is covered only on a police report. If the claim came without one, intake asks
for it and the case waits (`case_waiting`, for 14 days): the report arriving from
outside (`evidence_received`, sent by the claim's opener or a party it named) resumes
it; the deadline passing first escalates the case to a claims handler.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from contracts import (
    CaseClosed,
    CaseClosedPayload,
    CaseEscalated,
    CaseEscalatedPayload,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
    Event,
    EvidenceReceived,
)
from contracts.ingress import CLAIM_KIND, ClaimData
from mesh import Agent, HandlerContext, OpenWait
from services.agents.claims.cards import INTAKE
from services.agents.claims.domain import (
    POLICE_REPORT,
    POLICE_REPORT_WAIT,
    intake,
    needs_police_report,
    read_claim,
)

agent = Agent(INTAKE)


@agent.on(CaseOpened)
async def check_claim(event: CaseOpened, ctx: HandlerContext) -> None:
    if event.payload.kind != CLAIM_KIND:
        return  # another process's case
    try:
        claim = read_claim(event.payload.data)
    except msgspec.ValidationError as exc:
        await _reject(ctx, [f"claim data unreadable: {exc}"])
        return
    if needs_police_report(claim) and _police_report(s.event for s in await ctx.history()) is None:
        await ctx.wait_for(
            POLICE_REPORT,
            after=POLICE_REPORT_WAIT,
            step="intake",
            reason="a theft is covered only on a police report; none came with the claim",
            requested_from=event.payload.source,
        )
        return
    await _decide(ctx, claim)


@agent.on(EvidenceReceived)
async def on_evidence(event: EvidenceReceived, ctx: HandlerContext) -> None:
    if event.payload.kind != POLICE_REPORT:
        return  # nothing intake waits for
    history = await ctx.history()
    wait = (await ctx.open_waits(history)).get(POLICE_REPORT)
    if wait is None:
        return  # not waiting (it came with the claim, or after the deadline)
    await ctx.end_wait(wait, by=event.event_id)
    opened = next((s.event for s in history if isinstance(s.event, CaseOpened)), None)
    assert opened is not None  # a wait was set while handling the opening
    await _decide(ctx, read_claim(opened.payload.data), report=event)


@agent.on_wait_deadline(POLICE_REPORT)
async def no_police_report(wait: OpenWait, ctx: HandlerContext) -> None:
    await ctx.emit(
        CaseEscalated,
        CaseEscalatedPayload(
            step="intake",
            reason=f"no police report by {wait.until.isoformat(timespec='seconds')}: a "
            "claims handler decides whether to chase it or reject the claim",
            to_role="case_handler",
        ),
    )


async def _decide(
    ctx: HandlerContext, claim: ClaimData, report: EvidenceReceived | None = None
) -> None:
    result = intake(claim, ctx.written_at.date())
    if not result.accepted:
        await _reject(ctx, result.reasons)
        return
    on_file = f"; police report {report.payload.data.get('report_number')}" if report else ""
    await ctx.emit(
        CaseStepCompleted,
        CaseStepCompletedPayload(
            step="intake",
            outcome="accepted",
            rationale=f"policy {claim.policy_number} in force; claim within cover{on_file}",
            # Intake's verdict, the one fact it is the authority for (the claim's own
            # facts are the ingress's to state): policy pays nothing without it.
            evidence=result.evidence,
        ),
    )


async def _reject(ctx: HandlerContext, reasons: list[str]) -> None:
    await ctx.emit(
        CaseStepCompleted,
        CaseStepCompletedPayload(step="intake", outcome="rejected", rationale="; ".join(reasons)),
    )
    await ctx.emit(CaseClosed, CaseClosedPayload(outcome="rejected", summary="; ".join(reasons)))


def _police_report(events: Iterable[Event]) -> EvidenceReceived | None:
    return next(
        (e for e in events if isinstance(e, EvidenceReceived) and e.payload.kind == POLICE_REPORT),
        None,
    )
