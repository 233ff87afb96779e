"""The pull-consumer loop: keep up to `window` messages in flight, one lane per case.

Messages are handled concurrently *across* ordering keys (by default the case id in
the subject) and strictly one at a time, in stream order, *within* a key. There is no
window barrier: a slow message occupies one slot, not the whole window.

A message that is NAK'ed for a retry blocks its lane: later messages of the same case
are held in memory (kept alive with in-progress acks, never re-delivered) until the
NAK'ed one comes back and is settled, so a retry never lets a case's later event
overtake an earlier one. If the blocker does not come back in time (another process
on the same durable took it), the lane is released. Held messages do not count
against the window, so a blocker's redelivery always finds room; they are bounded by
`max_held`, past which a message for a blocked lane is NAK'ed back instead.

Settlement (ack / nak / term) is the job of the `process` callback, which returns None
when the message is settled for good or the NAK delay when it asked for a retry.

Messages come from a `MessageSource`: a plain pull subscription, or an agent's pinned
partitions (`mesh._runtime.partitions`), which may take back what it handed out when
another replica takes a partition over; the loop asks it before starting each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from contracts.subjects import case_subject_of_work, key_of

log = logging.getLogger(__name__)

# How many settled sequences a loop remembers, to ack (not handle) their redeliveries.
SETTLED_REMEMBERED = 16384
# None: settled for good (acked or dead-lettered). A float: NAK'ed, back after that delay.
Process = Callable[[Msg], Awaitable[float | None]]
OrderingKey = Callable[[Msg], str]


def delivered_by(msg: Msg, stream: str, consumer: str) -> bool:
    """Whether `msg` was delivered by that consumer: its reply (the ack subject the
    server gives each delivery) names the stream and the consumer. A message anyone
    else got into our inbox — a peer's own delivery, sent here by a pull whose reply
    subject it chose — fails this, and is never handled, acked or remembered."""
    try:
        meta = msg.metadata
    except (nats.errors.Error, ValueError, IndexError):
        return False
    return bool(meta.stream == stream and meta.consumer == consumer)


def case_ordering_key(msg: Msg) -> str:
    # <root>.<family>.<key>.<event_type>: the key token orders a case's events; a work
    # copy, <root>.work.<partition>.<case>.<event_type>, is ordered by its case too (not
    # by its partition, which would make every case in it wait for each other).
    subject = msg.subject
    if subject.split(".", 2)[1:2] == ["work"]:
        subject = case_subject_of_work(subject)
    key = key_of(subject)
    return subject if key is None else key


class MessageSource(Protocol):
    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        """Up to `batch` messages; raises TimeoutError (or nats' own) when none came."""
        ...

    def owns(self, msg: Msg) -> bool:
        """Whether the message is still ours to handle (cheap, no waiting)."""
        ...

    async def admissible(self, msg: Msg) -> bool:
        """Whether the message may be handled now: False when it is no longer ours
        (the loop then hands it back); may wait until that is known."""
        ...

    def done(self, msg: Msg) -> None:
        """The loop is finished with the message (settled, handed back or replaced)."""
        ...

    def settled(self, msg: Msg) -> None:
        """The message was settled for good (acked or dead-lettered), before `done`."""
        ...


class SubscriptionSource:
    """A plain pull subscription bound to `stream`/`consumer`: what it fetches is ours,
    once checked to come from that consumer (see `delivered_by`)."""

    def __init__(
        self, subscription: JetStreamContext.PullSubscription, stream: str, consumer: str
    ) -> None:
        self.subscription = subscription
        self.stream = stream
        self.consumer = consumer

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        fetched = await self.subscription.fetch(batch, timeout=timeout)
        ours = [msg for msg in fetched if delivered_by(msg, self.stream, self.consumer)]
        if len(ours) < len(fetched):
            log.warning(
                "%s/%s: %d message(s) in its inbox not delivered by it; dropped",
                self.stream,
                self.consumer,
                len(fetched) - len(ours),
            )
        return ours

    def owns(self, msg: Msg) -> bool:
        return True

    async def admissible(self, msg: Msg) -> bool:
        return True

    def done(self, msg: Msg) -> None:
        return None

    def settled(self, msg: Msg) -> None:
        return None


@dataclass
class _Lane:
    queue: deque[Msg] = field(default_factory=deque)
    blocked_on: int | None = None  # stream sequence of the NAK'ed message
    blocked_until: float = 0.0
    task: asyncio.Task[None] | None = None
    current: Msg | None = None  # the message being handled now


def _sequence(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


class PullConsumerLoop:
    def __init__(
        self,
        source: MessageSource,
        process: Process,
        *,
        window: int,
        fetch_wait: float,
        ack_wait: float,
        ordering_key: OrderingKey = case_ordering_key,
        max_held: int | None = None,
    ) -> None:
        self.source = source
        self.process = process
        self.window = window
        self.fetch_wait = fetch_wait
        self.ack_wait = ack_wait
        self.keepalive_interval = max(ack_wait / 3, 0.1)
        self.ordering_key = ordering_key
        self.max_held = max_held if max_held is not None else window * 2
        self.processed = 0
        self.repeats_acked = 0  # redeliveries of what this loop had settled: not handled
        # Stream sequences this loop settled for good, newest last (bounded): a message
        # that comes back after that was acked and the ack was lost (a consumer leader
        # changed under it), so it is acked again rather than handled a second time —
        # after later events of its case. Across a hand-over to another replica this is
        # not known there; the handler's idempotency is the guard then.
        self._settled: OrderedDict[int, None] = OrderedDict()
        self._lanes: dict[str, _Lane] = {}
        self._active = 0  # messages in unblocked lanes: queued or being processed
        self._held = 0  # messages waiting behind a blocked lane
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop fetching; what is being handled finishes, what waits is NAK'ed back."""
        self._stopping.set()
        self._room.set()

    async def run(self) -> None:
        keepalive = asyncio.create_task(self._keep_alive())
        try:
            await self._fetch_loop()
        finally:
            keepalive.cancel()
            await self._drain()

    async def _fetch_loop(self) -> None:
        # Refill in batches: one fetch round trip per message would cost more than the
        # slot it fills, so wait until a quarter of the window is free.
        refill_at = max(1, self.window // 2)
        while not self._stopping.is_set():
            room = self.window - self._active
            if room < refill_at:
                self._room.clear()
                await self._room.wait()
                continue
            try:
                messages = await self._fetch_unless_stopped(room)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # an idle long-poll
            except nats.errors.ConnectionClosedError:
                if self._stopping.is_set():
                    return
                raise
            except nats.errors.Error as exc:
                # Reconnecting, or the server briefly unavailable: back off, try again.
                log.warning("fetch failed (%r); retrying", exc)
                await asyncio.sleep(min(self.fetch_wait, 1.0))
                continue
            for msg in messages:
                await self._admit(msg)

    async def _fetch_unless_stopped(self, room: int) -> list[Msg]:
        """A fetch that stop() interrupts at once (a fetch can outlive its timeout while
        the connection is down, e.g. after the broker dropped our credentials)."""
        fetch = asyncio.ensure_future(self.source.fetch(room, self.fetch_wait))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({fetch, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not fetch.done():
            fetch.cancel()
            with contextlib.suppress(asyncio.CancelledError, nats.errors.Error, TimeoutError):
                await fetch
            return []
        return fetch.result()

    async def _admit(self, msg: Msg) -> None:
        sequence = _sequence(msg)
        if sequence in self._settled:
            self.repeats_acked += 1
            log.info("%s #%d came back after it was settled; acked again", msg.subject, sequence)
            await settle(msg.ack())
            self.source.done(msg)
            return
        key = self.ordering_key(msg)
        lane = self._lanes.setdefault(key, _Lane())
        if lane.blocked_on == sequence:
            # The retried message is back: it goes first, then the lane runs again.
            lane.queue.appendleft(msg)
            lane.blocked_on = None
            self._active += len(lane.queue)
            self._held -= len(lane.queue) - 1
        elif self._replaced(lane, msg):
            return
        elif lane.blocked_on is not None:
            if self._held >= self.max_held:
                await settle(msg.nak(delay=max(0.1, lane.blocked_until - time.monotonic())))
                self.source.done(msg)
                return
            lane.queue.append(msg)
            self._held += 1
            return
        else:
            lane.queue.append(msg)
            self._active += 1
        if lane.task is None:
            lane.task = asyncio.create_task(self._run_lane(key, lane))

    def _replaced(self, lane: _Lane, msg: Msg) -> bool:
        """A redelivery of a message we already hold replaces the stale copy; one of the
        message being handled now is dropped (its handling settles both)."""
        sequence = _sequence(msg)
        if lane.current is not None and _sequence(lane.current) == sequence:
            self.source.done(msg)
            return True
        for index, queued in enumerate(lane.queue):
            if _sequence(queued) == sequence:
                lane.queue[index] = msg
                self.source.done(queued)
                return True
        return False

    async def _run_lane(self, key: str, lane: _Lane) -> None:
        try:
            while lane.queue and lane.blocked_on is None and not self._stopping.is_set():
                msg = lane.current = lane.queue.popleft()
                if not await self.source.admissible(msg):
                    # Another replica has this message's partition now: hand it back.
                    lane.current = None
                    self._active -= 1
                    await settle(msg.nak())
                    self.source.done(msg)
                    self._room.set()
                    continue
                retry_in = await self._process_guarded(msg)
                lane.current = None
                if retry_in is None:
                    self._remember_settled(_sequence(msg))
                    self.source.settled(msg)
                self.source.done(msg)
                self._active -= 1
                self.processed += 1
                if retry_in is not None:
                    # Hold the rest of this case until the retried message is settled.
                    lane.blocked_on = _sequence(msg)
                    lane.blocked_until = time.monotonic() + retry_in + self.ack_wait + 1.0
                    self._active -= len(lane.queue)
                    self._held += len(lane.queue)
                self._room.set()
        finally:
            lane.task = None
            if not lane.queue and lane.blocked_on is None:
                self._lanes.pop(key, None)

    def _remember_settled(self, sequence: int) -> None:
        self._settled[sequence] = None
        if len(self._settled) > SETTLED_REMEMBERED:
            self._settled.popitem(last=False)

    async def _process_guarded(self, msg: Msg) -> float | None:
        try:
            return await self.process(msg)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being stopped
            # A handler raised CancelledError on its own: a failure like any other.
            log.exception("processing %s raised CancelledError; retrying it", msg.subject)
        except Exception:
            log.exception("processing %s failed outside the dispatcher; retrying it", msg.subject)
        await settle(msg.nak(delay=1.0))
        return 1.0

    async def _keep_alive(self) -> None:
        """In-progress acks for everything we hold, so the server does not redeliver a
        message that is being handled or waits behind its case's retry; and release lanes
        whose retried message did not come back."""
        while True:
            await asyncio.sleep(self.keepalive_interval)
            now = time.monotonic()
            for key, lane in list(self._lanes.items()):
                await self._hand_back_lost(lane)
                for msg in [lane.current, *lane.queue]:
                    if msg is not None:
                        await settle(msg.in_progress())
                if lane.blocked_on is not None and now > lane.blocked_until:
                    log.info(
                        "lane %s: retried message %s did not return; releasing %d held",
                        key,
                        lane.blocked_on,
                        len(lane.queue),
                    )
                    lane.blocked_on = None
                    self._held -= len(lane.queue)
                    self._active += len(lane.queue)
                    if lane.queue and lane.task is None:
                        lane.task = asyncio.create_task(self._run_lane(key, lane))
                    elif not lane.queue:
                        self._lanes.pop(key, None)

    async def _hand_back_lost(self, lane: _Lane) -> None:
        """Messages waiting in a lane whose partition another replica took over go back
        now (NAK), not after ack_wait: the new holder waits for them before it starts."""
        lost = [msg for msg in lane.queue if not self.source.owns(msg)]
        if not lost:
            return
        for msg in lost:
            lane.queue.remove(msg)
            if lane.blocked_on is None:
                self._active -= 1
            else:
                self._held -= 1
            await settle(msg.nak())
            self.source.done(msg)
        self._room.set()

    async def _drain(self) -> None:
        """On stop: let the messages being handled finish; hand the waiting ones back."""
        self._stopping.set()
        running = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if running:
            await asyncio.gather(*running, return_exceptions=True)
        for lane in self._lanes.values():
            while lane.queue:
                msg = lane.queue.popleft()
                await settle(msg.nak())
                self.source.done(msg)
        self._lanes.clear()


async def settle(settlement: Awaitable[None]) -> None:
    """Ack, nak, term or keep-alive, fire-and-forget. A failure is harmless: the server
    redelivers after ack_wait, and idempotent emits make the repeat a no-op."""
    try:
        await settlement
    except nats.errors.MsgAlreadyAckdError:
        pass  # a keep-alive raced the message's own settlement
    except nats.errors.Error as exc:
        log.warning("could not settle a message: %r (it will be redelivered)", exc)
