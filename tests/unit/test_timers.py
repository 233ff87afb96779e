"""Durable timers, pure: due times, the log's account of a timer, the card's duty."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from contracts import (
    AgentCard,
    AgentRecord,
    EventDecoder,
    TimerCancelled,
    TimerCancelledPayload,
    TimerFired,
    TimerFiredPayload,
    TimerSet,
    TimerSetPayload,
)
from mesh import Agent, ConfigurationError, HandlerContext, PermanentError
from mesh._broker.permissions import agent_permissions
from mesh._broker.stored_messages import StoredEvent
from mesh._broker.topology import Topology
from mesh._sdk.timers import schedule_header, timer_payload, timer_record

NOW = datetime(2026, 11, 30, 12, 0, 0, 250_000, tzinfo=UTC)


def _payload(**options: Any) -> TimerSetPayload:
    defaults: dict[str, Any] = {
        "now": NOW,
        "after": None,
        "at": None,
        "clock_rate": 1.0,
        "data": None,
    }
    return timer_payload("follow_up", **{**defaults, **options})


def test_due_time_is_rounded_up_to_the_second_the_broker_fires_by() -> None:
    payload = _payload(after=timedelta(seconds=10))
    assert payload.due_at == datetime(2026, 11, 30, 12, 0, 11, tzinfo=UTC)
    assert payload.delay_seconds == 10
    assert schedule_header(payload.due_at) == "@at 2026-11-30T12:00:11Z"


def test_a_compressed_clock_fires_sooner_and_says_so() -> None:
    payload = _payload(after=timedelta(days=14), clock_rate=86_400.0)
    assert payload.due_at == datetime(2026, 11, 30, 12, 0, 15, tzinfo=UTC)
    assert payload.delay_seconds == 14 * 86_400
    assert payload.clock_rate == 86_400.0


def test_at_a_time_and_in_the_past() -> None:
    at = NOW + timedelta(hours=1)
    assert _payload(at=at).due_at == datetime(2026, 11, 30, 13, 0, 1, tzinfo=UTC)
    past = _payload(at=NOW - timedelta(days=1))
    assert past.delay_seconds == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "exactly one of after= and at="),
        ({"after": timedelta(1), "at": NOW}, "exactly one of after= and at="),
        ({"at": datetime(2026, 12, 1)}, "time zone"),
        ({"after": timedelta(1), "data": {"x": "y" * 5000}}, "more than 4096"),
    ],
)
def test_bad_timers_are_refused_with_the_reason(options: dict[str, object], message: str) -> None:
    with pytest.raises(PermanentError, match=message):
        _payload(**options)


def test_a_timer_name_is_a_subject_safe_token() -> None:
    with pytest.raises(Exception, match="timer name"):
        timer_payload("a.b", now=NOW, after=timedelta(1), at=None, clock_rate=1.0, data=None)


def _stored(sequence: int, event: object) -> StoredEvent:
    return StoredEvent(sequence, "s", b"", {}, event, NOW)  # type: ignore[arg-type]


def _set(actor: str = "reminder") -> TimerSet:
    payload = _payload(after=timedelta(seconds=5))
    return TimerSet(case_id="c-1", actor=actor, payload=payload)


def _fired(timer: TimerSet, actor: str = "reminder") -> TimerFired:
    payload = TimerFiredPayload(
        timer_id=timer.event_id, name="follow_up", due_at=timer.payload.due_at
    )
    return TimerFired(case_id="c-1", actor=actor, payload=payload)


def test_the_log_account_of_a_timer_counts_only_its_own_agent() -> None:
    mine, theirs = _set(), _set("intruder")
    cancel = TimerCancelled(
        case_id="c-1", actor="intruder", payload=TimerCancelledPayload(timer_id=mine.event_id)
    )
    history = [
        _stored(1, mine),
        _stored(2, theirs),
        _stored(3, _fired(mine, actor="intruder")),
        _stored(4, cancel),
    ]
    record = timer_record(history, "reminder", mine.event_id)
    assert record.set == mine
    assert record.fired_at is None
    assert record.cancelled_at is None
    assert timer_record(history, "reminder", theirs.event_id).set is None
    history.append(_stored(5, _fired(mine)))
    assert timer_record(history, "reminder", mine.event_id).fired_at == 5


def _card(consumes: list[str], produces: list[str] | None = None) -> AgentCard:
    return AgentCard(
        agent_id="reminder",
        name="R",
        version="1",
        owner="o",
        purpose="p",
        consumes=consumes,
        produces=produces or [],
    )


async def _noop(event: TimerFired, ctx: HandlerContext) -> None:
    return None


def test_an_agent_with_timers_must_say_so_on_its_card() -> None:
    agent = Agent(_card(consumes=["timer_fired"], produces=["timer_fired"]))
    agent.on_timer("follow_up")(_noop)
    with pytest.raises(ConfigurationError, match="produces timer_set"):
        agent.check()
    ready = Agent(_card(consumes=["timer_fired"], produces=["timer_set", "timer_fired"]))
    ready.on_timer("follow_up")(_noop)
    ready.check()
    with pytest.raises(ConfigurationError, match="two handlers for timer follow_up"):
        ready.on_timer("follow_up")(_noop)


def _record(card: AgentCard) -> AgentRecord:
    return AgentRecord(
        card=card, status="active", registered_at=NOW, updated_at=NOW, status_changed_at=NOW
    )


def test_the_card_that_sets_timers_holds_their_subjects_and_durable() -> None:
    card = _card(consumes=["timer_fired"], produces=["timer_set", "timer_fired"])
    allowed = _published(_record(card))
    assert "t1.timers.set.reminder.>" in allowed
    assert "$JS.API.CONSUMER.MSG.NEXT.T1_TIMERS_reminder.reminder_timers" in allowed
    assert not any(a.startswith("t1.timers.due") for a in allowed)
    assert not any("timers" in a for a in _published(_record(_card(consumes=["case_opened"]))))


def _published(record: AgentRecord) -> list[str]:
    permissions = agent_permissions(record, Topology("t1"))["publish"]
    assert isinstance(permissions, dict)
    return list(permissions["allow"])


def test_a_v1_timer_set_reads_as_v2_with_its_business_due_time() -> None:
    """timer_set v1 had no business_due_at: the upcaster derives it (set time + delay)."""
    v1 = msgspec.json.encode(
        {
            "event_type": "timer_set",
            "schema_version": 1,
            "event_id": "0193aaaa-0000-7000-8000-000000000001",
            "case_id": "c-1",
            "actor": "claims-intake",
            "occurred_at": "2026-11-30T12:00:00Z",
            "payload": {
                "name": "wait_police_report",
                "due_at": "2026-11-30T12:00:09Z",
                "delay_seconds": 14 * 86_400,
                "clock_rate": 150_000.0,
            },
        }
    )
    event = EventDecoder().decode(v1)
    assert isinstance(event, TimerSet)
    assert event.schema_version == 2
    assert event.payload.business_due_at == datetime(2026, 12, 14, 12, tzinfo=UTC)
    assert event.payload.due_at == datetime(2026, 11, 30, 12, 0, 9, tzinfo=UTC)
    assert _payload(after=timedelta(days=1)).business_due_at == NOW + timedelta(days=1)
