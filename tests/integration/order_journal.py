"""An order-checking agent for replica tests: every replica writes when it starts and
ends handling each event, and the journal finds any case whose events were handled at
once by two replicas or out of stream order.

Lines go to one file opened for append (one `write` per line), so replicas in separate
processes, killed at any moment, leave a journal that can still be read.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from contracts import (
    ActionApproved,
    ActionCompleted,
    ActionRequested,
    AgentCard,
    CaseClosed,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.envelope import Event
from mesh import Agent, HandlerContext
from mesh.service import EventPublisher

CARD_ID = "orderly"


# In the claims mesh it watches every step of every claim (a reader of nothing else,
# writing nothing), so a case gives it many events to keep in order.
CLAIMS_STEPS: tuple[type[Event], ...] = (
    CaseOpened,
    CaseStepCompleted,
    ActionRequested,
    ActionApproved,
    ActionCompleted,
    CaseClosed,
)


def orderly_card(
    agent_id: str = CARD_ID,
    owner: str = "platform-team",
    events: tuple[type[Event], ...] = (CaseStepCompleted,),
) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name="Orderly",
        version="1.0.0",
        owner=owner,
        purpose="proves that no case is handled by two replicas at once or out of order",
        consumes=[event.event_name() for event in events],
        produces=[],
    )


def orderly(
    journal: Path,
    replica: str,
    *,
    agent_id: str = CARD_ID,
    owner: str = "platform-team",
    events: tuple[type[Event], ...] = (CaseStepCompleted,),
    work: float = 0.01,
) -> Agent:
    """An agent whose handlers journal start and end around `work` seconds of waiting."""
    agent = Agent(orderly_card(agent_id, owner, events))
    fd = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def note(kind: str, event: Event, ctx: HandlerContext) -> None:
        line = f"{kind} {replica} {event.case_id} {ctx.stream_sequence} {time.time():.6f}\n"
        os.write(fd, line.encode())

    async def handle(event: Event, ctx: HandlerContext) -> None:
        note("start", event, ctx)
        await asyncio.sleep(random.uniform(0, work))
        note("end", event, ctx)

    for event_type in events:
        agent.on(event_type)(handle)
    return agent


async def publish_steps(
    publisher: EventPublisher, cases: list[str], steps: int, pace: float = 0.0
) -> int:
    """`steps` rounds of one step per case, `pace` seconds apart: the events to order."""
    published = 0
    for n in range(steps):
        if pace:
            await asyncio.sleep(pace)
        for case in cases:
            await publisher.publish(
                CaseStepCompleted(
                    case_id=case,
                    actor="test-harness",
                    payload=CaseStepCompletedPayload(step=f"s{n}", outcome="done"),
                )
            )
            published += 1
    return published


@dataclass
class Verdict:
    handled: dict[str, list[int]] = field(default_factory=dict)  # case → sequences done
    by_replica: dict[str, int] = field(default_factory=dict)
    concurrent: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    repeats: int = 0  # an event handled again (after its handler's replica died)
    # An event handled again after a later one of its case was done: redelivered
    # because its acknowledgement was lost (a consumer leader change) — at least once,
    # not out of order; reported, so that a test can say how often it happened.
    stale_repeats: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[str]:
        return self.concurrent + self.out_of_order


def read_journal(journal: Path, dead: set[str] = frozenset()) -> Verdict:  # type: ignore[assignment]
    """Replay the journal in the order it was written. A start while the case is busy is
    concurrent handling, unless the busy replica is in `dead` (killed mid-handler: it
    will never end, and the event comes back to another); a first start of an earlier
    sequence than one already finished for the case is out of order (a second start of
    one is a stale repeat: see `Verdict`)."""
    verdict = Verdict()
    busy: dict[str, tuple[str, int]] = {}  # case → (replica, sequence) being handled
    finished: dict[str, int] = {}
    for line in journal.read_text().splitlines():
        kind, replica, case, seq_text, _ = line.split(" ")
        sequence = int(seq_text)
        if kind == "start":
            holder = busy.get(case)
            if holder is not None and holder[0] not in dead:
                verdict.concurrent.append(
                    f"{case}: {replica} started {sequence} while {holder[0]} had {holder[1]}"
                )
            if sequence < finished.get(case, 0):
                where = (
                    verdict.stale_repeats
                    if sequence in verdict.handled.get(case, [])
                    else verdict.out_of_order
                )
                where.append(
                    f"{case}: {replica} started {sequence} after {finished[case]} was done"
                )
            busy[case] = (replica, sequence)
        else:
            if busy.get(case) == (replica, sequence):
                del busy[case]
            done = verdict.handled.setdefault(case, [])
            if sequence in done:
                verdict.repeats += 1
            else:
                done.append(sequence)
            finished[case] = max(finished.get(case, 0), sequence)
            verdict.by_replica[replica] = verdict.by_replica.get(replica, 0) + 1
    return verdict
