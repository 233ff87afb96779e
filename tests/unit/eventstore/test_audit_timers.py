"""The verifier's timer checks (pure): once, on time, by its own agent, never after a
cancellation; a compressed clock is noted, not passed off as real time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts import (
    CaseWaiting,
    CaseWaitingPayload,
    TimerCancelled,
    TimerCancelledPayload,
    TimerFired,
    TimerFiredPayload,
    TimerSet,
    TimerSetPayload,
    WaitEnded,
    WaitEndedPayload,
)
from contracts.envelope import Event
from contracts.events.case import WaitOutcome
from services.eventstore.audit.case_state import CaseSoFar
from services.eventstore.audit.timers import check_timer, check_wait
from services.eventstore.domain import LogRecord
from services.eventstore.merkle import leaf_hash

DUE = datetime(2026, 11, 30, 12, 0, 10, tzinfo=UTC)
SET = TimerSet(
    case_id="c1",
    actor="reminder",
    payload=TimerSetPayload(name="follow_up", due_at=DUE, business_due_at=DUE, delay_seconds=10),
)


def record(sequence: int, event: Event, stored_at: datetime) -> LogRecord:
    return LogRecord(
        sequence=sequence,
        subject=f"m.case.c1.{event.event_name()}",
        case_id="c1",
        stored_at=stored_at,
        headers={},
        body=b"",
        leaf=leaf_hash(str(sequence).encode()),
        event=event,
        signer="U",
        problem=None,
    )


def fired(actor: str = "reminder", timer: TimerSet = SET) -> TimerFired:
    payload = TimerFiredPayload(timer_id=timer.event_id, name="follow_up", due_at=DUE)
    return TimerFired(case_id="c1", actor=actor, causation_id=timer.event_id, payload=payload)


def cancelled(actor: str = "reminder") -> TimerCancelled:
    payload = TimerCancelledPayload(timer_id=SET.event_id, reason="withdrawn")
    return TimerCancelled(case_id="c1", actor=actor, payload=payload)


def problems(
    *log: tuple[Event, datetime], compressed_clock_allowed: bool = False
) -> tuple[list[str], list[str]]:
    case, found, notes = CaseSoFar(), [], []
    for sequence, (event, at) in enumerate(log, start=1):
        assert isinstance(event, TimerSet | TimerCancelled | TimerFired)
        check_timer(
            case,
            record(sequence, event, at),
            event,
            lambda _r, problem: found.append(problem),
            lambda _r, remark: notes.append(remark),
            compressed_clock_allowed,
        )
    return found, notes


LATER = DUE + timedelta(seconds=1)


def test_a_timer_fired_once_on_time_is_clean() -> None:
    assert problems((SET, DUE - timedelta(seconds=10)), (fired(), LATER)) == ([], [])


def test_firing_early_twice_after_cancelling_or_for_another_is_named() -> None:
    early, _ = problems((SET, DUE), (fired(), DUE - timedelta(seconds=5)))
    assert any("before its due time" in p for p in early)
    twice, _ = problems((SET, DUE), (fired(), LATER), (fired(), LATER))
    assert any("again (fired at sequence 2)" in p for p in twice)
    after_cancel, _ = problems((SET, DUE), (cancelled(), DUE), (fired(), LATER))
    assert any("cancelled at sequence 2" in p for p in after_cancel)
    foreign, _ = problems((SET, DUE), (fired("intruder"), LATER))
    assert any("which intruder did not set" in p for p in foreign)
    foreign_cancel, _ = problems((SET, DUE), (cancelled("intruder"), LATER))
    assert any("which intruder did not set" in p for p in foreign_cancel)
    unknown, _ = problems((fired(), LATER))
    assert any("did not set in this case" in p for p in unknown)


def test_a_compressed_clock_is_noted() -> None:
    fast = TimerSet(
        case_id="c1",
        actor="reminder",
        payload=TimerSetPayload(
            name="deadline",
            due_at=DUE,
            business_due_at=DUE,
            delay_seconds=14 * 86_400,
            clock_rate=86_400,
        ),
    )
    found, notes = problems((fast, DUE - timedelta(seconds=14)), compressed_clock_allowed=True)
    assert found == []
    assert "compressed clock (rate 86400)" in notes[0]
    found, notes = problems((fast, DUE - timedelta(seconds=14)))
    assert notes == []
    assert "on a real mesh, time is real" in found[0]


def test_a_backdated_due_time_is_named() -> None:
    backdated = TimerSet(
        case_id="c1",
        actor="reminder",
        payload=TimerSetPayload(
            name="deadline", due_at=DUE, business_due_at=DUE, delay_seconds=14 * 86_400
        ),
    )
    found, _ = problems((backdated, DUE - timedelta(seconds=10)), (fired(backdated), LATER))
    assert any("earlier than its delay of 1.2096e+06s allows" in p for p in found)


def waiting(actor: str = "reminder") -> CaseWaiting:
    payload = CaseWaitingPayload(
        step="intake", waiting_for="police_report", until=DUE, timer_id=SET.event_id
    )
    return CaseWaiting(case_id="c1", actor=actor, payload=payload)


WAIT = waiting()


def ended(outcome: WaitOutcome, by: str | None, actor: str = "reminder") -> WaitEnded:
    payload = WaitEndedPayload(
        wait_id=WAIT.event_id, waiting_for="police_report", outcome=outcome, by=by
    )
    return WaitEnded(case_id="c1", actor=actor, payload=payload)


def wait_problems(*log: tuple[Event, datetime]) -> list[str]:
    case, found = CaseSoFar(), []
    for sequence, (event, at) in enumerate(log, start=1):
        entry = record(sequence, event, at)
        if isinstance(event, CaseWaiting | WaitEnded):
            check_wait(case, entry, event, lambda _r, problem: found.append(problem))
        else:
            assert isinstance(event, TimerSet | TimerCancelled | TimerFired)
            check_timer(case, entry, event, lambda _r, p: found.append(p), lambda *_: None)
    return found


def test_a_wait_ends_once_by_its_agent_and_its_deadline_by_its_timer() -> None:
    firing = fired()
    start = [(SET, DUE), (WAIT, DUE)]
    assert wait_problems(*start, (ended("arrived", "ev-1"), DUE)) == []
    assert (
        wait_problems(*start, (firing, LATER), (ended("deadline_passed", firing.event_id), LATER))
        == []
    )
    twice = wait_problems(*start, (ended("arrived", "e"), DUE), (ended("arrived", "e"), DUE))
    assert any("again" in p for p in twice)
    early = wait_problems(*start, (ended("deadline_passed", None), DUE))
    assert any("cites no firing of its timer" in p for p in early)
    foreign = wait_problems(*start, (ended("arrived", "e", actor="intruder"), DUE))
    assert any("which intruder did not begin" in p for p in foreign)
