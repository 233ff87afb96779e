"""Agents used by the integration tests, built fresh per test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from contracts import (
    AgentCard,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
    TimerFired,
)
from mesh import Agent, HandlerContext

Behaviour = Callable[[CaseOpened, HandlerContext], Awaitable[None]]


def card(agent_id: str = "stepper", owner: str = "platform-team") -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name="Stepper",
        version="1.0.0",
        owner=owner,
        purpose="completes a step for every opened case",
        consumes=["case_opened"],
        produces=["case_step_completed"],
    )


async def complete_step(event: CaseOpened, ctx: HandlerContext) -> None:
    await ctx.emit(
        CaseStepCompleted,
        CaseStepCompletedPayload(step="intake", outcome="accepted", evidence={"n": ctx.delivery}),
    )


def stepper(
    behaviour: Behaviour = complete_step, agent_id: str = "stepper", owner: str = "platform-team"
) -> Agent:
    agent = Agent(card(agent_id, owner))
    agent.on(CaseOpened)(behaviour)
    return agent


# `mesh run tests.integration.agents:crash_once` — for the kill -9 test. On its first
# delivery it publishes its derived event, drops a marker, then hangs (the test kills
# it there: after the publish, before the ack).
async def _publish_then_hang(event: CaseOpened, ctx: HandlerContext) -> None:
    await complete_step(event, ctx)
    marker = os.environ.get("MESH_TEST_MARKER")
    if marker and ctx.delivery == 1:
        Path(marker).write_text(event.event_id)  # noqa: ASYNC240  (a test marker)
        await asyncio.sleep(3600)


crash_once = stepper(_publish_then_hang, agent_id="crash-once")


# `mesh run tests.integration.agents:onboarded` with MESH_ONBOARD=1 — registers itself.
onboarded = stepper(agent_id="onboarded", owner="claims-team")


# `mesh run tests.integration.agents:reminder` — sets a durable timer on every opened
# case (MESH_TEST_TIMER_SECONDS of business time, default 2), and completes a step when
# it fires; a case opened with {"cancel": true} cancels its timer at once.
def reminder_card(agent_id: str = "reminder") -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name="Reminder",
        version="1.0.0",
        owner="claims-team",
        purpose="follows up on every opened case after a while",
        consumes=["case_opened", "timer_fired"],
        produces=["case_step_completed", "timer_set", "timer_fired", "timer_cancelled"],
    )


def reminder_agent(agent_id: str = "reminder") -> Agent:
    agent = Agent(reminder_card(agent_id))

    @agent.on(CaseOpened)
    async def set_reminder(event: CaseOpened, ctx: HandlerContext) -> None:
        seconds = float(os.environ.get("MESH_TEST_TIMER_SECONDS", "2"))
        timer_id = await ctx.schedule(
            "follow_up", after=timedelta(seconds=seconds), data={"opened": event.event_id}
        )
        if event.payload.data.get("cancel"):
            await ctx.cancel_timer(timer_id, "the customer withdrew")

    @agent.on_timer("follow_up")
    async def follow_up(fired: TimerFired, ctx: HandlerContext) -> None:
        await ctx.emit(
            CaseStepCompleted,
            CaseStepCompletedPayload(
                step="follow_up", outcome="reminded", evidence={"timer": fired.payload.timer_id}
            ),
        )

    return agent


reminder = reminder_agent()
