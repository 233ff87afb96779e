"""Reading a stream in order through an ephemeral consumer that survives the broker.

A consumer-based read is the one for long or open-ended reads (a projection following
the log, an auditor's pass over a whole stream): it pulls batches as fast as the broker
hands them out and waits for new messages. It gets its own module because most of it
is recovery: the consumer lives in the broker's memory and must be remade, from the
right sequence, after a reconnect, a 503 or a 409.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, Header
from nats.js.client import JetStreamContext

from mesh._broker.connection import client_of, on_reconnect
from mesh._broker.stored_messages import RawMessage
from mesh.errors import BrokerError

log = logging.getLogger(__name__)


class StreamReader:
    """Reads a stream in order, a batch at a time, through an ephemeral ack-less
    consumer: nothing on the broker remembers the read, and nothing needs acking.

    Batches are pulled with `$JS.API.CONSUMER.MSG.NEXT` requests answered on one
    core-NATS subscription whose callback only collects: nats-py's `fetch()` spends a
    queue hop and a timer on every message, which costs more than twice the reading
    itself. While messages are waiting a pull asks for what is there (`no_wait`);
    when there are none it waits for the first to arrive, up to `wait` seconds.

    The consumer lives in the broker's memory: a restarted broker has forgotten it.
    The reader knows the stream sequence it has read up to, so when its connection
    comes back (with a connection made by `mesh._broker.connection.connect` it is told at once,
    even in the middle of a pull), or a pull finds no consumer to answer it, it makes a
    new consumer from the next sequence, on a fresh inbox, and reads on: whoever reads
    from it sees no gap and no repeat, and no error unless the broker stays away for
    longer than a pull waits for its answer (`wait` + 5 s).
    """

    def __init__(
        self,
        nc: Client,
        stream: str,
        subject: str,
        *,
        start_sequence: int | None = None,
        inactive_threshold: float = 60.0,
        recreate_patience: float = 5.0,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.stream = stream
        self.subject = subject
        self.start_sequence = start_sequence
        self.inactive_threshold = inactive_threshold
        self.recreate_patience = recreate_patience
        self.consumer: str | None = None
        self.recreated = 0  # consumers made again after one was lost
        self._next: int | None = start_sequence  # the stream sequence to read next
        self._lost = False  # the consumer may be gone: make a new one before pulling
        self._made_at_reconnects = 0  # the client's reconnect count the consumer saw
        self._stop_watching: Callable[[], None] | None = None
        self._cleanup: set[asyncio.Task[None]] = set()
        self._subscription: Subscription | None = None
        self._inbox = ""
        self._request = 0
        self._batch: list[Msg] = []
        self._wanted = 0
        self._done: asyncio.Future[str] | None = None
        self._status = ""

    async def __aenter__(self) -> StreamReader:
        await self.open()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def open(self) -> None:
        try:
            await self._create(timeout=None)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError(f"read {self.subject}", repr(exc)) from exc
        self._stop_watching = on_reconnect(self.nc, self._reconnected)

    async def close(self) -> None:
        if self._stop_watching is not None:
            self._stop_watching()
            self._stop_watching = None
        await self._unsubscribe()
        if self.consumer is not None:
            with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                await self.js.delete_consumer(self.stream, self.consumer)
            self.consumer = None
        for task in self._cleanup:
            task.cancel()
        await asyncio.gather(*self._cleanup, return_exceptions=True)

    async def _create(self, timeout: float | None) -> None:
        """A consumer from the next sequence to read, answered on a fresh inbox: a pull
        still open on a consumer that outlived a blip cannot add to the new batches."""
        start = self._next
        self._made_at_reconnects = self.nc.stats.get("reconnects", 0)
        info = await self.js.add_consumer(
            self.stream,
            ConsumerConfig(
                filter_subject=self.subject,
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.ALL
                if start is None
                else DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=start,
                inactive_threshold=self.inactive_threshold,
                mem_storage=True,
                num_replicas=1,
            ),
            timeout=timeout,
        )
        self.consumer, self._lost = info.name, False
        await self._unsubscribe()
        self._inbox = self.nc.new_inbox()
        self._subscription = await self.nc.subscribe(f"{self._inbox}.*", cb=self._collect)

    async def _unsubscribe(self) -> None:
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
            self._subscription = None

    async def _recreate(self) -> None:
        """Replace a lost consumer, trying for `recreate_patience` seconds: a broker
        that has just come back may not serve JetStream requests yet."""
        old = self.consumer
        deadline = time.monotonic() + self.recreate_patience
        delay = 0.02
        while True:
            try:
                await self._create(timeout=max(0.1, min(2.0, deadline - time.monotonic())))
                break
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                if time.monotonic() + delay > deadline:
                    raise BrokerError(
                        f"read {self.subject}", f"the consumer was lost; remaking it: {exc!r}"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.25)
        self.recreated += 1
        log.info("reading %s again from #%s on a new consumer", self.subject, self._next or 1)
        if old is not None:
            # Usually gone with the broker that held it; if not, it is not needed.
            task = asyncio.create_task(self._delete_quietly(old))
            self._cleanup.add(task)
            task.add_done_callback(self._cleanup.discard)

    async def _delete_quietly(self, consumer: str) -> None:
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error, TimeoutError):
            await self.js.delete_consumer(self.stream, consumer)

    def _reconnected(self) -> None:
        if self.nc.stats.get("reconnects", 0) == self._made_at_reconnects:
            return  # the consumer was made on this very connection: nothing was lost
        # The broker may have restarted and forgotten the consumer; a pull in flight
        # will never be answered. End it now with what it has.
        self._lost = True
        done = self._done
        if done is not None and not done.done():
            done.set_result("reconnected")

    async def _collect(self, msg: Msg) -> None:
        # A message keeps its own subject; a status comes on the pull's reply subject.
        # Pulls never overlap (one is abandoned only by closing the reader or by a lost
        # consumer, whose inbox is dropped), so every message belongs to the pull in
        # progress.
        done = self._done
        if done is None or done.done():
            return
        # By subject, never by header alone: a publisher may put a `Status` header on
        # an event, and that event must still be read.
        ours = msg.subject.startswith(f"{self._inbox}.")
        status = msg.headers.get(Header.STATUS) if ours and msg.headers else None
        if status is None:
            self._batch.append(msg)
            if len(self._batch) >= self._wanted:
                done.set_result("full")
        elif status != "100" and msg.subject == f"{self._inbox}.{self._request}":
            # 100 is an idle heartbeat; others end the pull
            self._status = (msg.headers or {}).get(Header.DESCRIPTION, "")
            done.set_result(status)

    async def _pull_once(self, batch: int, wait: float | None) -> str:
        assert self.consumer is not None, "open() the reader first"
        self._request += 1
        self._batch, self._wanted, self._status = [], batch, ""
        self._done = asyncio.get_running_loop().create_future()
        request: dict[str, object] = {"batch": batch}
        if wait is None:
            request["no_wait"] = True
        else:
            request["expires"] = int(wait * 1e9)
        try:
            await self.nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.consumer}",
                json.dumps(request).encode(),
                reply=f"{self._inbox}.{self._request}",
            )
            # The server always answers: messages, then a status unless the batch
            # filled. Waiting longer than it promised means the pull is lost.
            return await asyncio.wait_for(self._done, (wait or 0) + 5.0)
        except TimeoutError:
            if self.nc.is_connected and (
                self.nc.stats.get("reconnects", 0) != self._made_at_reconnects
            ):
                return "reconnected"  # a client that does not tell us it reconnected
            return "timeout"
        except nats.errors.Error as exc:
            raise BrokerError(f"read {self.subject}", f"pull failed: {exc!r}") from exc

    def _consumer_lost(self, outcome: str) -> bool:
        if outcome in ("reconnected", "503"):  # 503: no consumer answers the pull
            return True
        description = self._status.lower()
        return outcome == "409" and ("deleted" in description or "leadership" in description)

    async def _pull(self, batch: int, wait: float | None) -> list[Msg]:
        for _ in range(3):
            if self._lost:
                await self._recreate()
            outcome = await self._pull_once(batch, wait)
            if outcome in ("full", "404", "408"):
                return self._taken()
            if not self._consumer_lost(outcome):
                break
            self._lost = True
            if self._batch:
                return self._taken()  # what came before it was lost, in order
        if outcome == "timeout":
            raise BrokerError(f"read {self.subject}", "pull got no answer")
        raise BrokerError(
            f"read {self.subject}", f"the server answered status {outcome} {self._status}"
        )

    def _taken(self) -> list[Msg]:
        found = self._batch
        if found:
            self._next = found[-1].metadata.sequence.stream + 1
        return found

    async def next_batch(self, batch: int, wait: float) -> list[Msg]:
        """Up to `batch` messages in order; an empty list if none came within `wait`."""
        found = await self._pull(batch, None)
        if found:
            return found
        first = await self._pull(1, wait)
        if not first:
            return []
        return first + await self._pull(batch - 1, None) if batch > 1 else first

    async def pending(self) -> int:
        """Messages left after those read so far."""
        assert self.consumer is not None
        try:
            info = await self.js.consumer_info(self.stream, self.consumer)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError(f"read {self.subject}", repr(exc)) from exc
        return info.num_pending or 0


async def read_raw(
    js: JetStreamContext,
    stream: str,
    subject: str,
    *,
    up_to: int | None = None,
    batch: int = 256,
) -> AsyncIterator[list[RawMessage]]:
    """Every message on `subject` (up to stream sequence `up_to`), in stream order, in
    batches. Nothing on the broker remembers the read."""
    async with StreamReader(client_of(js), stream, subject) as reader:
        remaining = await reader.pending()
        while remaining > 0:
            messages = await reader.next_batch(min(batch, remaining), wait=5.0)
            if not messages:
                raise BrokerError(f"read {subject}", f"{remaining} messages announced, none came")
            found: list[RawMessage] = []
            for msg in messages:
                metadata = msg.metadata
                remaining = metadata.num_pending
                sequence = metadata.sequence.stream
                if up_to is not None and sequence > up_to:
                    remaining = 0
                    break
                found.append(
                    RawMessage(
                        sequence=sequence,
                        subject=msg.subject,
                        body=msg.data,
                        headers=dict(msg.headers or {}),
                        stored_at=metadata.timestamp,
                    )
                )
            if found:
                yield found
