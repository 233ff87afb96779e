"""The agent SDK: declare an agent with its card and one handler per event type.

    agent = Agent(AgentCard(agent_id="intake", consumes=["case_opened"],
                            produces=["case_step_completed"], ...))

    @agent.on(CaseOpened)
    async def on_case_opened(event: CaseOpened, ctx: HandlerContext) -> None:
        await ctx.emit(CaseStepCompleted, CaseStepCompletedPayload(step="intake", outcome="ok"))

Run it with `mesh run my_module` (its own process) or in tests with `mesh.testing`.
What a handler emits is signed with the agent's key and carries the case, correlation
and causation of the event it handles; its event_id is derived from the input, so a
redelivered input re-emits the same ids and JetStream drops the duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from contracts.cards import AgentCard
from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import Event
from contracts.events.actions import FactSource
from contracts.events.case import (
    CaseWaiting,
    CaseWaitingPayload,
    WaitEnded,
    WaitEndedPayload,
)
from contracts.events.timers import (
    TimerCancelled,
    TimerCancelledPayload,
    TimerFired,
    TimerSet,
)
from contracts.ids import derived_event_id
from mesh._broker.publisher import Receipt
from mesh._broker.stored_messages import RawMessage, StoredEvent
from mesh._runtime.resilience import CircuitBreaker
from mesh._sdk.timers import TIMER_CONSUMES, TIMER_PRODUCES, timer_payload, timer_record
from mesh._sdk.waits import WAIT_PRODUCES, OpenWait, open_waits, wait_timer
from mesh._trust.identity import message_digest
from mesh.errors import ConfigurationError, PermanentError

if TYPE_CHECKING:
    from mesh._trust.authorization import Authorization

E = TypeVar("E", bound=Event)
E_contra = TypeVar("E_contra", bound=Event, contravariant=True)


class Handler(Protocol[E_contra]):
    def __call__(self, event: E_contra, ctx: HandlerContext, /) -> Awaitable[None]: ...


WaitDeadlineHandler = Callable[["OpenWait", "HandlerContext"], Awaitable[None]]


class Services(Protocol):
    """What the runtime lends a handler: publishing, shared circuit breakers, reading
    the case log, and the key its derived event ids are made with."""

    @property
    def id_key(self) -> bytes: ...

    async def emit(self, event: Event, *, expected_case_sequence: int | None = None) -> Receipt: ...

    @property
    def clock_rate(self) -> float: ...

    async def set_timer(self, event: TimerSet) -> Receipt: ...

    async def cancel_timer(self, event: TimerCancelled) -> Receipt: ...

    def breaker(self, name: str) -> CircuitBreaker: ...

    async def history(self, case_id: str, at_least: int = 0) -> list[StoredEvent]: ...

    async def authorize(self, case_id: str, request_id: str) -> Authorization: ...

    async def replayed(self, dead_letter_sequence: int) -> RawMessage: ...

    async def facts(
        self, case_id: str, history: list[StoredEvent] | None = None
    ) -> dict[str, FactSource]: ...


class HandlerContext:
    """What a handler may use: the delivery facts, emit, and the agent's logger."""

    def __init__(
        self,
        *,
        agent: Agent,
        event: Event,
        delivery: int,
        stream_sequence: int,
        services: Services,
        written_at: datetime | None = None,
        max_deliver: int | None = None,
        message: StoredEvent | None = None,
    ) -> None:
        self.agent = agent
        self.event = event
        self.delivery = delivery  # 1 on first delivery; more after a crash or a nak
        # After this delivery a retryable failure dead-letters the event: a handler with
        # a better last resort (escalating to a human, say) takes it here.
        self.last_delivery = max_deliver is not None and delivery >= max_deliver
        self.stream_sequence = stream_sequence
        # When the event entered the log (the broker's clock): what deadlines are judged by.
        self.written_at = written_at or event.occurred_at
        # The event as stored: its subject, exact bytes and headers.
        self.message = message
        self.log = logging.getLogger(f"mesh.agent.{agent.card.agent_id}")
        self._services = services
        self._emitted = 0

    def derive(self, event_type: type[E], payload: Any) -> E:
        """Build the event this handler's next emit would publish."""
        name = event_type.event_name()
        if name not in self.agent.card.produces:
            raise PermanentError(
                f"agent {self.agent.card.agent_id} may not emit {name}: "
                f"not in its card's produces {self.agent.card.produces}"
            )
        cause = self.event
        # Every concrete event type declares `payload`; the base class does not.
        derived: E = cast(Any, event_type)(
            event_id=derived_event_id(
                cause.case_id,
                cause.event_id,
                self.agent.card.agent_id,
                self._emitted,
                self._services.id_key,
            ),
            case_id=cause.case_id,
            correlation_id=cause.correlation_id,
            causation_id=cause.event_id,
            actor=self.agent.card.agent_id,
            payload=payload,
        )
        self._emitted += 1
        return derived

    async def emit(
        self, event_type: type[E], payload: Any, *, expected_case_sequence: int | None = None
    ) -> Receipt:
        """Publish a derived event and wait for JetStream to store it."""
        event = self.derive(event_type, payload)
        return await self._services.emit(event, expected_case_sequence=expected_case_sequence)

    async def schedule(
        self,
        name: str,
        *,
        after: timedelta | None = None,
        at: datetime | None = None,
        data: dict[str, Any] | None = None,
    ) -> str:
        """Set a durable timer in this case: the handler `@agent.on_timer(name)` runs
        once it is due (`after` a delay or `at` a time), even if this process, every
        replica and the broker restart in between. Recorded as `timer_set`; returns the
        timer's id (that event's id). `data` comes back in the firing."""
        return (await self._set_timer(name, after=after, at=at, data=data)).event_id

    async def _set_timer(
        self,
        name: str,
        *,
        after: timedelta | None,
        at: datetime | None,
        data: dict[str, Any] | None,
    ) -> TimerSet:
        payload = timer_payload(
            name,
            now=datetime.now(UTC),
            after=after,
            at=at,
            clock_rate=self._services.clock_rate,
            data=data,
        )
        event = self.derive(TimerSet, payload)
        await self._services.set_timer(event)
        return event

    async def cancel_timer(self, timer_id: str, reason: str = "") -> None:
        """Withdraw a timer this agent set in this case: it will not fire (recorded as
        `timer_cancelled`; a firing already on its way is dropped)."""
        payload = TimerCancelledPayload(timer_id=timer_id, reason=reason)
        await self._services.cancel_timer(self.derive(TimerCancelled, payload))

    async def wait_for(
        self,
        what: str,
        *,
        after: timedelta | None = None,
        at: datetime | None = None,
        step: str = "",
        reason: str = "",
        requested_from: str | None = None,
    ) -> str:
        """Put the case on hold for `what` (e.g. "police_report") until a deadline
        (`after` a delay or `at` a time): recorded as `case_waiting`, with a durable timer
        for the deadline. Resume with `end_wait` when it arrives; if the deadline passes
        first, the agent's `@agent.on_wait_deadline(what)` handler runs. Returns the
        wait's id (its case_waiting event's)."""
        timer = await self._set_timer(
            wait_timer(what), after=after, at=at, data={"waiting_for": what}
        )
        payload = CaseWaitingPayload(
            step=step,
            waiting_for=what,
            until=timer.payload.due_at,
            timer_id=timer.event_id,
            reason=reason,
            requested_from=requested_from,
        )
        event = self.derive(CaseWaiting, payload)
        await self._services.emit(event)
        return event.event_id

    async def open_waits(self, history: list[StoredEvent] | None = None) -> dict[str, OpenWait]:
        """This agent's waits in this case that have not ended, by what they wait for
        (from `history`, as `history()` returned it, if given)."""
        events = history if history is not None else await self.history()
        return open_waits((stored.event for stored in events), self.agent.card.agent_id)

    async def end_wait(self, wait: OpenWait, *, by: str) -> None:
        """What `wait` waited for arrived (`by`: the event that brought it): its deadline
        timer is cancelled and `wait_ended` recorded; the case goes on."""
        await self.cancel_timer(wait.timer_id, f"{wait.waiting_for} arrived")
        await self.emit(
            WaitEnded,
            WaitEndedPayload(
                wait_id=wait.wait_id, waiting_for=wait.waiting_for, outcome="arrived", by=by
            ),
        )

    def breaker(self, name: str) -> CircuitBreaker:
        """The agent's breaker guarding dependency `name` (shared by all its handlers)."""
        return self._services.breaker(name)

    @property
    def digest(self) -> str:
        """sha256 of the event's stored subject and bytes (mesh._trust.identity.message_digest)."""
        if self.message is None:
            raise PermanentError(f"no stored bytes of {self.event.event_id} to digest")
        return message_digest(self.message.subject, self.message.body)

    async def history(self) -> list[StoredEvent]:
        """This case's log so far, in order (read from the stream, not a cache), up to
        the event being handled at least: never from a replica that is behind it."""
        assert self.event.case_id is not None
        return await self._services.history(self.event.case_id, at_least=self.stream_sequence)

    async def facts(self, history: list[StoredEvent] | None = None) -> dict[str, FactSource]:
        """The case's facts as the log establishes them: each from the latest statement
        of the agent whose card made it the authority for that fact (mesh._trust.facts);
        nobody else's say-so. From `history` (as `history()` returned it) if given."""
        assert self.event.case_id is not None
        return await self._services.facts(self.event.case_id, history)

    async def authorization(self, request_id: str) -> Authorization:
        """Before a side effect: prove from the log that policy (and a human, where
        asked) approved this request, every signature checked. Raises NotAuthorized."""
        assert self.event.case_id is not None
        return await self._services.authorize(self.event.case_id, request_id)


class Agent:
    def __init__(self, card: AgentCard) -> None:
        self.card = card
        self.handlers: dict[str, Callable[[Any, HandlerContext], Awaitable[None]]] = {}
        self.timer_handlers: dict[str, Handler[TimerFired]] = {}
        self.wait_handlers: set[str] = set()  # what its waits wait for

    def on(self, event_type: type[E]) -> Callable[[Handler[E]], Handler[E]]:
        name = event_type.event_name()

        def register(handler: Handler[E]) -> Handler[E]:
            if name in self.handlers:
                raise ConfigurationError(f"{self.card.agent_id}: two handlers for {name}")
            self.handlers[name] = handler
            return handler

        return register

    def on_timer(self, name: str) -> Callable[[Handler[TimerFired]], Handler[TimerFired]]:
        """The handler of this agent's timers called `name` (see `HandlerContext.schedule`).
        The card must produce timer_set and timer_fired and consume timer_fired."""

        def register(handler: Handler[TimerFired]) -> Handler[TimerFired]:
            if name in self.timer_handlers:
                raise ConfigurationError(f"{self.card.agent_id}: two handlers for timer {name}")
            if not self.timer_handlers:
                self.on(TimerFired)(self._timer_fired)
            self.timer_handlers[name] = handler
            return handler

        return register

    def on_wait_deadline(self, what: str) -> Callable[[WaitDeadlineHandler], WaitDeadlineHandler]:
        """The handler that runs when a wait for `what` (`HandlerContext.wait_for`)
        reaches its deadline before `end_wait`: escalate, or run the compensation. The
        SDK records `wait_ended` ("deadline_passed") first. The card must produce
        case_waiting, wait_ended and the timer events, and consume timer_fired."""

        def register(handler: WaitDeadlineHandler) -> WaitDeadlineHandler:
            async def deadline(fired: TimerFired, ctx: HandlerContext) -> None:
                wait = (await ctx.open_waits()).get(what)
                if wait is None or wait.timer_id != fired.payload.timer_id:
                    return  # it ended (what it waited for arrived) before the deadline
                await ctx.emit(
                    WaitEnded,
                    WaitEndedPayload(
                        wait_id=wait.wait_id,
                        waiting_for=what,
                        outcome="deadline_passed",
                        by=fired.event_id,
                    ),
                )
                await handler(wait, ctx)

            self.on_timer(wait_timer(what))(deadline)
            self.wait_handlers.add(what)
            return handler

        return register

    async def _timer_fired(self, event: TimerFired, ctx: HandlerContext) -> None:
        # Every timer_fired of the cases it works on reaches this agent; only its own
        # wake it (another agent's timers are that agent's business), and only the
        # firing the log holds first, at or after the due time: a copy of its own
        # signed firing, replayed under a fresh message id, wakes nothing.
        if event.actor != self.card.agent_id:
            return
        history = await ctx.history()
        first = timer_record(history, self.card.agent_id, event.payload.timer_id)
        if first.set is None or first.fired_at != ctx.stream_sequence:
            ctx.log.warning(
                "timer_fired #%d (timer %s) is not the first firing of a timer of ours; ignored",
                ctx.stream_sequence,
                event.payload.timer_id,
            )
            return
        if ctx.written_at < first.set.payload.due_at:
            raise PermanentError(
                f"timer {event.payload.timer_id} fired at {ctx.written_at.isoformat()}, before "
                f"it was due ({first.set.payload.due_at.isoformat()})"
            )
        handler = self.timer_handlers.get(event.payload.name)
        if handler is None:
            raise PermanentError(
                f"agent {self.card.agent_id} has no handler for its timer {event.payload.name!r}"
            )
        await handler(event, ctx)

    def check(self, catalog: EventCatalog = CATALOG) -> None:
        """The card and the handlers must agree, and name only known event types."""
        problems = []
        if self.timer_handlers:
            lacking = [f"produces {t}" for t in TIMER_PRODUCES if t not in self.card.produces] + [
                f"consumes {t}" for t in TIMER_CONSUMES if t not in self.card.consumes
            ]
            if lacking:
                problems.append(f"sets timers but its card lacks {lacking}")
        if self.wait_handlers:
            lacking = [f"produces {t}" for t in WAIT_PRODUCES if t not in self.card.produces]
            if lacking:
                problems.append(
                    f"waits for {sorted(self.wait_handlers)} but its card lacks {lacking}"
                )
        for name in (*self.card.consumes, *self.card.produces):
            if name not in catalog:
                problems.append(f"unknown event type {name!r} on the card")
            elif catalog.type_of(name).family != "case":
                problems.append(f"{name!r} is not a case event; agents handle case events")
        missing = sorted(set(self.card.consumes) - set(self.handlers))
        extra = sorted(set(self.handlers) - set(self.card.consumes))
        if missing:
            problems.append(f"consumes {missing} but has no handler for them")
        if extra:
            problems.append(f"handles {extra} which the card does not consume")
        if not self.handlers:
            problems.append("has no handlers")
        if problems:
            raise ConfigurationError(f"agent {self.card.agent_id}: " + "; ".join(problems))
