"""An agent's replicas share its work by partition, and never handle one case at once.

The work stream files every case event under a partition the server computes from the
case id; each agent has one consumer per partition with an ADR-42 `pinned_client`
priority group (`mesh._runtime.durables`). Every replica keeps a pull waiting on every
partition; the server serves each partition to one replica (the pinned one) and hands
it to another when that one stops pulling for `pin_timeout` (died, froze, lost the
network). So a case is handled by one replica at a time, in stream order, and a
replica that dies is replaced without anyone's say: no coordinator of ours.

What the server does not do, this module does:

- **Order across a hand-over.** The server serves the new holder at once, even while the
  old holder's messages are unacknowledged: the new holder could handle a case's next
  event before the previous one is redelivered. So a replica that gains a partition
  holds what it receives (the *gate*) until the consumer's ack-pending count is all its
  own — every message the old holder had is settled or has come back to it — and then
  releases them in stream order.
- **Knowing when a partition is no longer ours.** The pin is checked by the server on
  every pull; a replica starts a message only while its latest pull confirmed the pin
  recently enough that the server cannot have moved it (`fresh_until`). A replica that
  was frozen wakes up, finds its confirmation stale, waits for its next pull, gets 423
  ("another client is pinned") and hands back every message it had not started.
- **Spreading partitions.** Replica `i` of `N` (`MESH_REPLICA=i/N`, as `mesh up
  --replicas` starts them) prefers partitions `p % N == i`. It takes any partition
  that is free (so a dead replica's work moves at once), and lets go of one it does
  not prefer when another replica is waiting for it, by pausing its pulls until the
  server moves the pin. A replica without an index takes what is free and keeps it.

Residual, stated: a handler already running when its process froze finishes after the
process wakes (the dispatcher's handler timeout cancels it at its next await); its
emits carry the same message ids as the new holder's and the stream drops the second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.subjects import partition_of_work
from mesh._broker.pinned import API, PIN_GROUP, consumer_info
from mesh._runtime.consumer import delivered_by, settle
from mesh.errors import BrokerError

log = logging.getLogger(__name__)

PIN_HEADER = "Nats-Pin-Id"
# A pin confirmed by a pull sent at t is the replica's until t + pin_timeout at the
# earliest; it starts messages only in the first part of that span.
FRESH_SHARE = 0.6
# Letting go of a partition it does not prefer, a replica waits this many pin timeouts
# before pulling it again, so the server moves it to the replica that was waiting.
RELEASE_PAUSE = 2.0
MAX_HOLD_BEFORE_RELEASE = 600.0
# How many settled messages a partition remembers, to ack again after a pin change.
SETTLED_REMEMBERED = 2048


def _sequence(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


def preferred_partitions(replica: str | None, partitions: int) -> frozenset[int] | None:
    """`'i/N'` → the partitions replica i prefers; None (no preference) without one."""
    if not replica:
        return None
    index, _, count = replica.partition("/")
    i, n = int(index), int(count)
    return frozenset(p for p in range(partitions) if p % n == i)


@dataclass
class _Partition:
    index: int
    durable: str
    next_subject: str
    pin: str | None = None
    generation: int = 0  # bumped when the pin is lost: older messages are not ours
    fresh_until: float = 0.0
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)
    gated: bool = False
    gate: list[Msg] = field(default_factory=list)
    # What was delivered to us and is not done (buffered, gated or in the loop), by work
    # stream sequence → copies: a message redelivered while we still hold it (its
    # keep-alive came late) is one pending message to the server, however many copies.
    holding: dict[int, int] = field(default_factory=dict)
    pulls: int = 0
    last_pull_at: float = 0.0
    released_until: float = 0.0
    pinned_since: float = 0.0
    hold_for: float = 0.0  # how long to keep a non-preferred partition before letting go
    released_at: float = 0.0
    lost_pins: set[str] = field(default_factory=set)
    # Everything the server sends for this partition's pulls: the messages (which
    # arrive under their own subjects) and the pulls' status answers (under the pull's
    # reply subject, which tells an old pull's answer from the current one's).
    answers: asyncio.Queue[Msg] = field(default_factory=asyncio.Queue)
    # When a pull we stopped waiting for was sent: a message that still comes from it
    # confirms the pin only as of then.
    unfinished_since: float | None = None
    troubled: int = 0  # pulls in a row answered with an unexpected status (503…)
    # What this replica settled lately: sequence → (ack reply subject, when).
    settled: OrderedDict[int, tuple[str, float]] = field(default_factory=OrderedDict)


class PinnedPartitions:
    """A `MessageSource` over an agent's partition consumers (see the module doc)."""

    def __init__(
        self,
        nc: Client,
        stream: str,
        durables: list[str],
        *,
        window: int,
        fetch_wait: float,
        pin_timeout: float,
        ack_wait: float,
        preferred: frozenset[int] | None = None,
        request_timeout: float = 5.0,
    ) -> None:
        self.nc = nc
        self.stream = stream
        self.window = window
        self.fetch_wait = fetch_wait
        # A waiting pull is served the moment a message comes, so its expiry adds no
        # latency; it only has to be renewed often enough to keep the pin (the server
        # moves it after pin_timeout without a pull) and to confirm it while idle
        # (FRESH_SHARE of it). Every replica keeps one on every partition: long enough
        # that idle standbys cost the server little.
        self.pull_expires = pin_timeout / 4
        self.pin_timeout = pin_timeout
        self.ack_wait = ack_wait
        self.preferred = preferred
        self.request_timeout = request_timeout
        self._parts = [
            _Partition(k, name, f"{API}.CONSUMER.MSG.NEXT.{stream}.{name}")
            for k, name in enumerate(durables)
        ]
        self._ready: deque[Msg] = deque()  # received, ours, not yet taken by the loop
        self._arrived = asyncio.Event()
        self._generation_of: dict[int, int] = {}  # id(msg) → its partition's generation
        self._room = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[Subscription] = []
        self._inbox = ""
        self._settling: set[asyncio.Future[None]] = set()  # NAKs sent from sync code
        self._openers: set[asyncio.Future[None]] = set()  # gates waiting to open
        self.handovers = 0  # pins gained after the first: failovers and rebalancing

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        for part in self._parts:
            self._subscriptions.append(
                await self.nc.subscribe(
                    f"{self._inbox}.{part.index}.>",
                    cb=self._answer_to(part),
                    pending_msgs_limit=-1,
                    pending_bytes_limit=-1,
                )
            )
        self._tasks = [
            asyncio.create_task(self._pull_forever(part), name=f"pull:{part.durable}")
            for part in self._parts
        ]
        self._tasks.append(asyncio.create_task(self._keep_alive(), name="partitions:keepalive"))
        self._tasks.append(asyncio.create_task(self._watch(), name="partitions:watch"))

    async def stop(self) -> None:
        """Stop pulling; hand back what was received and not given to the loop."""
        self._stopping.set()
        self._room.set()
        for part in self._parts:
            part.confirmed.set()
        running = [*self._tasks, *self._openers]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._settling:
            await asyncio.gather(*self._settling, return_exceptions=True)
        waiting = [*(m for part in self._parts for m in part.gate), *self._ready]
        self._ready.clear()
        for part in self._parts:
            part.gate.clear()
        for msg in waiting:
            await settle(msg.nak())
            self.done(msg)
        for subscription in self._subscriptions:
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
        for part in self._parts:
            await self._hand_back_answers(part)

    # -- MessageSource -----------------------------------------------------------

    async def fetch(self, batch: int, timeout: float) -> list[Msg]:
        self._room.set()
        if not self._ready:
            self._arrived.clear()
            await asyncio.wait_for(self._arrived.wait(), timeout)  # TimeoutError: idle
        out: list[Msg] = []
        while self._ready and len(out) < batch:
            out.append(self._ready.popleft())
        self._room.set()
        return out

    def owns(self, msg: Msg) -> bool:
        part = self._parts[partition_of_work(msg.subject)]
        return part.pin is not None and self._generation_of.get(id(msg)) == part.generation

    async def admissible(self, msg: Msg) -> bool:
        part = self._parts[partition_of_work(msg.subject)]
        while True:
            if self._stopping.is_set() or not self.owns(msg):
                return False
            if time.monotonic() < part.fresh_until:
                return True
            # Not confirmed recently (we were slow, or frozen): the next pull tells.
            part.confirmed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(part.confirmed.wait(), self.pull_expires + 1.0)

    def settled(self, msg: Msg) -> None:
        if not msg.reply:
            return
        remembered = self._parts[partition_of_work(msg.subject)].settled
        remembered[_sequence(msg)] = (msg.reply, time.monotonic())
        if len(remembered) > SETTLED_REMEMBERED:
            remembered.popitem(last=False)

    def done(self, msg: Msg) -> None:
        if self._generation_of.pop(id(msg), None) is None:
            return
        holding = self._parts[partition_of_work(msg.subject)].holding
        sequence = _sequence(msg)
        holding[sequence] -= 1
        if not holding[sequence]:
            del holding[sequence]
        self._room.set()

    # -- what this replica holds -------------------------------------------------

    @property
    def pinned(self) -> list[int]:
        return [part.index for part in self._parts if part.pin is not None]

    def _buffered(self) -> int:
        return len(self._ready) + sum(len(part.gate) for part in self._parts)

    # -- pulling -----------------------------------------------------------------

    def _status_of(self, msg: Msg) -> str | None:
        """A pull's status (408, 423…), or None for a message of the stream. Told by
        subject: a status comes on the pull's own reply subject, a message under its own
        subject — whatever headers a publisher gave it (an event may carry `Status`)."""
        if not msg.subject.startswith(f"{self._inbox}."):
            return None
        return (msg.headers or {}).get("Status", "")

    def _answer_to(self, part: _Partition) -> Callable[[Msg], Awaitable[None]]:
        async def answer(msg: Msg) -> None:
            part.answers.put_nowait(msg)

        return answer

    async def _hand_back_answers(self, part: _Partition) -> None:
        """Messages that came for a partition we are not pulling now go straight back."""
        while not part.answers.empty():
            msg = part.answers.get_nowait()
            if self._status_of(msg) is None and msg.reply:
                await settle(msg.nak())

    async def _pull_forever(self, part: _Partition) -> None:
        while not self._stopping.is_set():
            now = time.monotonic()
            if part.released_until > now:
                await self._hand_back_answers(part)
                await asyncio.sleep(min(part.released_until - now, 0.5))
                continue
            room = self.window - self._buffered()
            if room <= 0 and (part.pin is None or now - part.last_pull_at < self.pin_timeout / 3):
                # Full: pull again once there is room, or just in time to keep the pin.
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), self.pin_timeout / 6)
                continue
            pinned = max(1, len(self.pinned))
            batch = max(1, min(room, math.ceil(self.window / pinned)))
            try:
                await self._pull_once(part, batch)
            except (nats.errors.Error, TimeoutError, BrokerError) as exc:
                log.warning("pull on %s failed (%r); retrying", part.durable, exc)
                await asyncio.sleep(min(self.fetch_wait, 1.0))

    async def _pull_once(self, part: _Partition, batch: int) -> None:
        part.pulls += 1
        reply = f"{self._inbox}.{part.index}.{part.pulls}"
        request: dict[str, object] = {
            "batch": batch,
            "expires": int(self.pull_expires * 1e9),
            "group": PIN_GROUP,
        }
        if part.pin is not None:
            request["id"] = part.pin
        sent = part.last_pull_at = time.monotonic()
        deadline = sent + self.pull_expires + max(1.0, self.pull_expires)
        await self.nc.publish(part.next_subject, json.dumps(request).encode(), reply=reply)
        earliest = sent if part.unfinished_since is None else part.unfinished_since
        received = 0
        while received < batch and not self._stopping.is_set():
            left = deadline - time.monotonic()
            if part.released_until > time.monotonic() or left <= 0:
                # Let go of, or no answer at all (the server is away): pull again later;
                # whatever this pull still brings confirms the pin only as of `sent`.
                part.unfinished_since = earliest
                return
            try:
                msg = await asyncio.wait_for(part.answers.get(), left)
            except TimeoutError:
                continue
            status = self._status_of(msg)
            if status is None:
                received += 1
                part.troubled = 0
                self._receive(part, msg, earliest)
                continue
            if msg.subject != reply:
                continue  # an earlier pull's answer
            part.unfinished_since = None
            if status in ("100", "408"):
                part.troubled = 0
            if status == "100":
                continue  # idle heartbeat
            if status == "408":
                if part.pin is not None and request.get("id") == part.pin:
                    self._confirm(part, sent)  # still ours: a 408, not a 423
            elif status == "423":
                self._lose(part, "another replica is pinned")
            elif status == "409":
                description = (msg.headers or {}).get("Description", "")
                if "Batch Completed" not in description:
                    log.info("pull on %s: %s", part.durable, description)
                    await asyncio.sleep(min(self.fetch_wait, 0.5))
            elif status != "404":
                # 503 (the consumer has no leader: a member died, an election runs) or
                # anything unexpected: the same pull would be answered the same at
                # once, so back off — every replica spinning on it would starve the
                # very servers that are recovering.
                part.troubled += 1
                if part.troubled == 1 or part.troubled % 20 == 0:
                    log.warning(
                        "pull on %s answered %s (%d in a row); backing off",
                        part.durable,
                        status,
                        part.troubled,
                    )
                await asyncio.sleep(min(0.05 * 2 ** min(part.troubled, 6), 2.0))
            return
        part.unfinished_since = None  # the whole batch came

    def _receive(self, part: _Partition, msg: Msg, sent: float) -> None:
        if not delivered_by(msg, self.stream, part.durable):
            # Not this partition's delivery (a peer's, sent into our inbox by a pull
            # whose reply it chose): neither handled, nor acked, nor remembered.
            log.warning(
                "partition %s of %s: a message on %s not delivered by %s; dropped",
                part.index,
                self.stream,
                msg.subject,
                part.durable,
            )
            return
        pin = (msg.headers or {}).get(PIN_HEADER)
        if pin is None:
            # Not a pinned consumer after all (someone changed it): refuse to guess.
            self._hand_back(msg)
            raise BrokerError(f"consume {self.stream}/{part.durable}", "message without a pin id")
        if pin in part.lost_pins:
            self._hand_back(msg)  # late, under a pin the server has moved on from
            return
        if pin != part.pin:
            self._gain(part, pin)
        self._confirm(part, sent)
        sequence = _sequence(msg)
        part.holding[sequence] = part.holding.get(sequence, 0) + 1
        self._generation_of[id(msg)] = part.generation
        if part.gated:
            part.gate.append(msg)
        else:
            self._ready.append(msg)
            self._arrived.set()

    def _confirm(self, part: _Partition, sent: float) -> None:
        part.fresh_until = sent + self.pin_timeout * FRESH_SHARE
        part.confirmed.set()

    def _gain(self, part: _Partition, pin: str) -> None:
        """A new pin id: whatever we held of this partition before is not ours any more,
        and what the last holder had unacknowledged must come back before we start."""
        if part.pin is not None:
            self._lose(part, "the server moved the pin")
        part.pin = pin
        part.gated = True
        part.pinned_since = time.monotonic()
        if part.released_at and part.pinned_since - part.released_at < 60.0:
            # Let go of it, and nobody else took it: keep it longer before trying again.
            part.hold_for = min(
                max(part.hold_for * 2, self.pin_timeout * 4), MAX_HOLD_BEFORE_RELEASE
            )
        elif not part.hold_for:
            part.hold_for = self.pin_timeout * 2
        self.handovers += 1
        log.info("pinned to partition %s of %s", part.index, self.stream)
        self._ack_again(part)
        opener = asyncio.ensure_future(self._open_when_clear(part, part.generation))
        self._openers.add(opener)
        opener.add_done_callback(self._openers.discard)

    def _lose(self, part: _Partition, why: str) -> None:
        if part.pin is None:
            return
        log.info("partition %s of %s is no longer ours: %s", part.index, self.stream, why)
        part.lost_pins.add(part.pin)
        part.pin = None
        part.generation += 1
        part.fresh_until = 0.0
        part.confirmed.set()  # wake lanes waiting on it: they hand their messages back
        part.gated = False
        gate, part.gate = part.gate, []
        for msg in gate:
            self._hand_back(msg)
            self.done(msg)
        # Buffered messages of this partition go back when the loop asks (owns → False).

    def _ack_again(self, part: _Partition) -> None:
        """A new pin comes after a hand-over, a consumer leader change or a server
        restart — the moments acks get lost: a server killed before it stored an ack
        counts the message pending again and redelivers it only after `ack_wait`, and
        until then the gate (which waits for every pending message) stays shut. So
        what this replica settled lately is acked again: harmless where the first ack
        counted, and where it was lost the gate opens now, not ack_wait later."""
        horizon = time.monotonic() - 2 * self.ack_wait
        for reply, at in part.settled.values():
            if at >= horizon:
                task = asyncio.ensure_future(settle(self.nc.publish(reply, b"+ACK")))
                self._settling.add(task)
                task.add_done_callback(self._settling.discard)

    def _hand_back(self, msg: Msg) -> None:
        """NAK from synchronous code: the settlement runs as a task we keep."""
        task = asyncio.ensure_future(settle(msg.nak()))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    # -- the gate, and letting go ---------------------------------------------------

    async def _watch(self) -> None:
        """Let go of a partition we do not prefer when another replica waits for it."""
        every = min(0.5, self.pin_timeout / 4)
        while not self._stopping.is_set():
            await asyncio.sleep(every)
            for part in self._parts:
                try:
                    if not part.gated and self._should_release(part):
                        await self._maybe_release(part)
                except BrokerError as exc:
                    log.warning("watching partition %s: %s", part.index, exc)

    async def _open_when_clear(self, part: _Partition, generation: int) -> None:
        """Ask at once whether the gate may open, then ever less often: on a first pin
        nothing is outstanding and the gate opens in one round trip."""
        pause = 0.02
        while part.gated and part.generation == generation and not self._stopping.is_set():
            try:
                await self._maybe_open(part)
            except BrokerError as exc:
                log.warning("watching partition %s: %s", part.index, exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _maybe_open(self, part: _Partition) -> None:
        info = await consumer_info(self.nc, self.stream, part.durable, self.request_timeout)
        if info is None or not part.gated:
            return
        pending = int(info.get("num_ack_pending", 0))
        if pending > len(part.holding):
            return  # the last holder's messages have not all come back yet
        part.gated = False
        gate, part.gate = part.gate, []
        latest: dict[int, Msg] = {}
        for msg in gate:  # a message that came twice goes once, as its latest delivery
            if (older := latest.get(_sequence(msg))) is not None:
                self.done(older)
            latest[_sequence(msg)] = msg
        self._ready.extend(latest[sequence] for sequence in sorted(latest))
        self._arrived.set()
        log.info("partition %s of %s: gate open (%d waiting)", part.index, self.stream, len(gate))

    def _should_release(self, part: _Partition) -> bool:
        if self.preferred is None or part.pin is None or part.index in self.preferred:
            return False
        return time.monotonic() - part.pinned_since > part.hold_for

    async def _maybe_release(self, part: _Partition) -> None:
        info = await consumer_info(self.nc, self.stream, part.durable, self.request_timeout)
        # Our own waiting pull is one; another means a replica waits for this partition.
        if info is None or int(info.get("num_waiting", 0)) < 2:
            return
        log.info(
            "letting go of partition %s of %s for a replica that prefers it",
            part.index,
            self.stream,
        )
        part.released_at = time.monotonic()
        part.released_until = part.released_at + self.pin_timeout * RELEASE_PAUSE
        self._lose(part, "let go for another replica")

    async def _keep_alive(self) -> None:
        """In-progress acks for what waits here (the loop keeps its own alive)."""
        while not self._stopping.is_set():
            await asyncio.sleep(max(self.ack_wait / 3, 0.1))
            for msg in [*(m for part in self._parts for m in part.gate), *self._ready]:
                await settle(msg.in_progress())
