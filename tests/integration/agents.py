"""Agents used by the integration tests, built fresh per test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

from contracts import (
    AgentCard,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
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
