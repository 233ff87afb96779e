"""Durable timers on the broker: the agent's side.

Setting a timer is two writes, in this order:
1. the schedule, on `<root>.timers.set.<agent>.<case>.<timer>` in the timers stream, with
   `Nats-Schedule: @at <due>` and `Nats-Schedule-Target: …timers.due.<agent>.<case>.<timer>`
   (ADR-51): the server holds it on disk, through restarts of every process and of
   itself, and at the due time publishes the firing and removes the schedule;
2. `timer_set` in the case log: the record.
Cancelling rolls the schedule's subject up to a marker (`Nats-Rollup: sub`, so the
schedule is gone) and records `timer_cancelled`.

Anyone can make the server publish on a subject (a JetStream API request whose reply
subject is it), and a message with no schedule on a schedule's subject disarms it
(ADR-51: the last message on the subject holds the schedule). Such a message cannot
carry a rollup, so it removes nothing; the agent's sweep (at start, then every
`MESH_TIMER_SWEEP_EVERY` seconds) reads the last message of each of its schedule
subjects, and re-arms, from the log, every timer whose schedule something foreign
disarmed and that the log says is neither fired nor cancelled. Until nats-server accounts
isolate the mesh's streams from its clients, this is what keeps a timer alive.

The broker only wakes the agent; the log decides. A firing, taken from the agent's own
durable by whichever replica is free, becomes the signed `timer_fired` event only if the
log holds this agent's `timer_set` for it, its due time has come (by the broker's clock),
and the log holds neither a firing nor a cancellation of it. That one rule makes a timer
fire once, on time and not after it was cancelled, whatever the broker delivers twice,
a crash repeats, or someone schedules into this agent's firing subjects (the server
sets `Nats-Scheduler` to the subject that held the schedule; it must be ours). Its event
id is derived from the timer's, so two deliveries racing each other (ack_wait apart,
well inside the stream's de-duplication window) write one event. The `timer_fired` then
reaches the agent's `@agent.on_timer` handler through the work stream, in the case's
order.
"""

from __future__ import annotations

import logging
from datetime import datetime

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from contracts.errors import InvalidSubject
from contracts.events.timers import (
    TimerCancelled,
    TimerFired,
    TimerFiredPayload,
    TimerSet,
)
from contracts.ids import derived_event_id
from contracts.subjects import Subjects, TimerSubject
from mesh._broker.direct_get import read_direct
from mesh._runtime.consumer import settle
from mesh._runtime.resilience import redelivery_delay, retry_transient
from mesh._sdk.agent import Services
from mesh._sdk.timers import schedule_header, timer_record
from mesh.errors import BrokerError, MeshError

log = logging.getLogger(__name__)

SCHEDULE = "Nats-Schedule"
SCHEDULE_TARGET = "Nats-Schedule-Target"
SCHEDULER = "Nats-Scheduler"  # set by the server on a firing; no client can set it
ROLLUP = "Nats-Rollup"
# What this runtime writes on a schedule subject besides schedules: its cancellation.
MARKER = "Mesh-Timer"
# A firing may overtake its own `timer_set` (a timer due at once, a lagging read): it
# waits for the record this many deliveries before it is given up as a timer nobody set.
DELIVERIES_AWAITING_RECORD = 8
# The index a firing's event id is derived with: distinct from every handler emit (>= 0).
FIRING_INDEX = -1


class TimerSchedules:
    """Writes and withdraws an agent's schedules in the timers stream."""

    def __init__(self, js: JetStreamContext, subjects: Subjects, agent_id: str) -> None:
        self.js = js
        self.subjects = subjects
        self.agent_id = agent_id

    async def schedule(self, event: TimerSet) -> None:
        assert event.case_id is not None
        case_id, timer_id = event.case_id, event.event_id
        headers = {
            SCHEDULE: schedule_header(event.payload.due_at),
            SCHEDULE_TARGET: self.subjects.timer("due", self.agent_id, case_id, timer_id),
        }
        await self._publish(self.subjects.timer("set", self.agent_id, case_id, timer_id), headers)

    async def withdraw(self, event: TimerCancelled) -> None:
        assert event.case_id is not None
        subject = self.subjects.timer("set", self.agent_id, event.case_id, event.payload.timer_id)
        await self._publish(subject, {ROLLUP: "sub", MARKER: "cancelled"})

    async def disarmed(self, nc: Client, stream: str, timeout: float) -> list[TimerSubject]:
        """The agent's schedule subjects whose last message is neither a schedule nor
        its own cancellation: something foreign landed there (see the module doc)."""
        messages = await read_direct(
            nc, stream, self.subjects.timers_of("set", self.agent_id), timeout=timeout
        )
        last = {message.subject: message for message in messages}
        return [
            self.subjects.parse_timer(subject)
            for subject, message in sorted(last.items())
            if SCHEDULE not in message.headers and MARKER not in message.headers
        ]

    async def rearm(self, timer: TimerSet) -> None:
        """Schedule `timer` again, as the log has it (a due time past fires at once)."""
        await self.schedule(timer)

    async def _publish(self, subject: str, headers: dict[str, str]) -> None:
        # The body is nothing: the log holds the timer; the schedule only wakes its agent.
        async def publish() -> None:
            try:
                await self.js.publish(subject, b"", headers=headers or None)
            except (nats.errors.Error, TimeoutError) as exc:  # nats.js.errors are these too
                raise BrokerError(f"write the timer schedule {subject}", repr(exc)) from exc

        await retry_transient(publish, retry_on=lambda e: isinstance(e, BrokerError))


async def sweep(
    schedules: TimerSchedules,
    services: Services,
    nc: Client,
    stream: str,
    timeout: float,
) -> int:
    """Re-arm every timer of the agent that something foreign disarmed and the log
    says is still open; how many were."""
    rearmed = 0
    for timer in await schedules.disarmed(nc, stream, timeout):
        record = timer_record(
            await services.history(timer.case_id), schedules.agent_id, timer.timer_id
        )
        if record.set is None or record.fired_at is not None or record.cancelled_at is not None:
            continue
        log.warning(
            "%s: the schedule of timer %s in case %s was overwritten by a foreign message; "
            "re-armed for %s",
            schedules.agent_id,
            timer.timer_id,
            timer.case_id,
            record.set.payload.due_at.isoformat(),
        )
        await schedules.rearm(record.set)
        rearmed += 1
    return rearmed


class TimerFirings:
    """Turns a firing from the agent's timer durable into its `timer_fired` event (see
    the module doc); a consumer loop's `process`: returns None once the firing is
    settled for good, or the delay after which it comes back."""

    def __init__(
        self,
        services: Services,
        subjects: Subjects,
        agent_id: str,
        id_key: bytes,
        *,
        retry_base_delay: float,
        retry_max_delay: float,
    ) -> None:
        self.services = services
        self.subjects = subjects
        self.agent_id = agent_id
        self.id_key = id_key
        self.retry_base_delay = retry_base_delay
        self.retry_max_delay = retry_max_delay

    async def __call__(self, msg: Msg) -> float | None:
        timer = self._ours(msg)
        if timer is None:
            await settle(msg.term())  # it stays in the timers stream, where it was written
            return None
        delivery = msg.metadata.num_delivered
        try:
            history = await self.services.history(timer.case_id)
        except MeshError as exc:
            return await self._later(msg, f"read case {timer.case_id}: {exc}")
        record = timer_record(history, self.agent_id, timer.timer_id)
        if record.set is None:
            if delivery < DELIVERIES_AWAITING_RECORD:
                return await self._later(msg, f"no timer_set {timer.timer_id} in the log yet")
            log.error(
                "%s: firing %s #%d names a timer the log of case %s does not hold; not "
                "fired, left in the timers stream",
                self.agent_id,
                msg.subject,
                msg.metadata.sequence.stream,
                timer.case_id,
            )
            await settle(msg.term())
            return None
        if record.fired_at is not None or record.cancelled_at is not None:
            what = "fired" if record.fired_at is not None else "cancelled"
            log.info("%s: timer %s was %s already; nothing to do", self.agent_id, timer, what)
            await settle(msg.ack())
            return None
        fired_at: datetime = msg.metadata.timestamp
        due = record.set.payload.due_at
        if fired_at < due:
            early = (due - fired_at).total_seconds()
            return await self._later(msg, f"fired {early:.3f}s before its due time", early)
        try:
            await self.services.emit(self._firing(record.set))
        except MeshError as exc:
            return await self._later(msg, f"write timer_fired: {exc}")
        await settle(msg.ack())
        return None

    def _ours(self, msg: Msg) -> TimerSubject | None:
        try:
            timer = self.subjects.parse_timer(msg.subject)
        except InvalidSubject as exc:
            log.error("%s: not a timer firing: %s", self.agent_id, exc)  # noqa: TRY400
            return None
        scheduler = (msg.headers or {}).get(SCHEDULER)
        expected = self.subjects.timer("set", self.agent_id, timer.case_id, timer.timer_id)
        if timer.kind != "due" or timer.agent_id != self.agent_id or scheduler != expected:
            log.error(
                "%s: %s #%d was scheduled by %r, not by this agent's timer %s; not fired",
                self.agent_id,
                msg.subject,
                msg.metadata.sequence.stream,
                scheduler,
                expected,
            )
            return None
        return timer

    def _firing(self, timer: TimerSet) -> TimerFired:
        assert timer.case_id is not None
        return TimerFired(
            event_id=derived_event_id(
                timer.case_id, timer.event_id, self.agent_id, FIRING_INDEX, self.id_key
            ),
            case_id=timer.case_id,
            correlation_id=timer.correlation_id,
            causation_id=timer.event_id,
            actor=self.agent_id,
            payload=TimerFiredPayload(
                timer_id=timer.event_id,
                name=timer.payload.name,
                due_at=timer.payload.due_at,
                data=timer.payload.data,
            ),
        )

    async def _later(self, msg: Msg, why: str, delay: float | None = None) -> float:
        if delay is None:
            delay = redelivery_delay(
                msg.metadata.num_delivered, base=self.retry_base_delay, cap=self.retry_max_delay
            )
        log.info("%s: timer firing %s: %s; again in %.2fs", self.agent_id, msg.subject, why, delay)
        await settle(msg.nak(delay=delay))
        return delay
