from __future__ import annotations

import pytest

from contracts import (
    AgentCard,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from mesh._sdk.agent import Agent, HandlerContext
from mesh.errors import ConfigurationError, PermanentError
from tests.unit.samples import sample_event


def _card(**overrides: object) -> AgentCard:
    fields: dict[str, object] = {
        "agent_id": "intake",
        "name": "Intake",
        "version": "1.0.0",
        "owner": "claims-team",
        "purpose": "checks new claims",
        "consumes": ["case_opened"],
        "produces": ["case_step_completed"],
    }
    fields.update(overrides)
    return AgentCard(**fields)  # type: ignore[arg-type]


async def _noop(event: CaseOpened, ctx: HandlerContext) -> None:
    return None


def test_a_consistent_agent_passes_its_check() -> None:
    agent = Agent(_card())
    agent.on(CaseOpened)(_noop)
    agent.check()


@pytest.mark.parametrize(
    ("card", "message"),
    [
        (_card(consumes=["case_opened", "case_closed"]), "no handler"),
        (_card(consumes=[]), "does not consume"),
        (_card(produces=["meteor_struck"]), "unknown event type 'meteor_struck'"),
        (_card(produces=["agent_revoked"]), "not a case event"),
    ],
)
def test_card_and_handlers_must_agree(card: AgentCard, message: str) -> None:
    agent = Agent(card)
    agent.on(CaseOpened)(_noop)
    with pytest.raises(ConfigurationError, match=message):
        agent.check()


def test_two_handlers_for_one_type_are_refused() -> None:
    agent = Agent(_card())
    agent.on(CaseOpened)(_noop)
    with pytest.raises(ConfigurationError, match="two handlers"):
        agent.on(CaseOpened)(_noop)


class _NoServices:
    id_key = b"a secret of the agent's"

    async def emit(self, event: object, *, expected_case_sequence: int | None = None) -> None:
        raise AssertionError("not used")

    def breaker(self, name: str) -> None:
        raise AssertionError("not used")


def _context(agent: Agent, event: CaseOpened | None = None) -> HandlerContext:
    return HandlerContext(
        agent=agent,
        event=event or sample_event(CaseOpened),
        delivery=1,
        stream_sequence=1,
        services=_NoServices(),  # type: ignore[arg-type]
    )


def test_derived_events_carry_case_correlation_causation_and_actor() -> None:
    agent = Agent(_card())
    ctx = _context(agent)
    payload = CaseStepCompletedPayload(step="intake", outcome="accepted")
    derived = ctx.derive(CaseStepCompleted, payload)
    cause = ctx.event
    assert derived.case_id == cause.case_id
    assert derived.correlation_id == cause.correlation_id
    assert derived.causation_id == cause.event_id
    assert derived.actor == "intake"
    # the same input handled again derives the same id (so the broker de-duplicates)
    redelivered = _context(agent, ctx.event)  # type: ignore[arg-type]
    assert redelivered.derive(CaseStepCompleted, payload).event_id == derived.event_id
    assert ctx.derive(CaseStepCompleted, payload).event_id != derived.event_id


def test_emitting_a_type_not_on_the_card_is_permanent() -> None:
    ctx = _context(Agent(_card(produces=[])))
    with pytest.raises(PermanentError, match="may not emit case_step_completed"):
        ctx.derive(CaseStepCompleted, CaseStepCompletedPayload(step="s", outcome="o"))


def test_a_handler_knows_its_last_delivery() -> None:
    agent = Agent(_card())
    event = sample_event(CaseOpened)

    def at(delivery: int, max_deliver: int | None) -> bool:
        ctx = HandlerContext(
            agent=agent,
            event=event,
            delivery=delivery,
            stream_sequence=1,
            services=_NoServices(),  # type: ignore[arg-type]
            max_deliver=max_deliver,
        )
        return ctx.last_delivery

    assert not at(1, 3)
    assert not at(2, 3)
    assert at(3, 3)
    assert not at(9, None)  # outside the runtime nobody says
