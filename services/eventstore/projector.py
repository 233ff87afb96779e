"""The projector: reads the case stream in order and applies it to the views, a batch
per transaction.

Its position lives in the database, beside the views, not in a durable consumer: on
every (re)start it reads the stream from the sequence after the one the views hold.
The consumer is an ephemeral, ack-less pull consumer — nothing on the broker to keep
in step with the database, so nothing that can disagree with it. A gap or a repeat in
the sequences it receives is refused (the views are never written around a hole) and
the consumer is recreated from the stored position.

The consumer lives in the broker's memory and goes with a restarted broker: the reader
notices the reconnect at once and makes a new one from where it was (see
`mesh._broker.stream_reader.StreamReader`). Whatever else stops the projection (a database away, a
broker down longer than a pull waits) it waits out with backoff, but stops waiting the
moment the connection is back, and the backoff starts small again once it projects.

Fetching, verifying and writing run as a pipeline: while a thread checks and applies
one batch, a worker process verifies the signatures of the next (ed25519 costs ~40 µs
of CPU a message, and a process does not contend for the GIL) and the event loop
fetches the one after.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from datetime import datetime

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from mesh.service import KeyDirectory, MeshError, StreamReader, Topology, on_reconnect
from services.eventstore.checking import MessageChecker, Sealed, seal_all
from services.eventstore.views import (
    LeaseLost,
    Position,
    ProjectionConflict,
    ViewStore,
    WriterLease,
)

log = logging.getLogger(__name__)

_AHEAD = 3  # batches read and being verified ahead of the one being written
_FIRST_DELAY = 0.1  # after a failure, the first pause before trying again
_MAX_DELAY = 5.0

OnProgress = Callable[[Position, bool], Awaitable[None]]


class Projector:
    def __init__(
        self,
        js: JetStreamContext,
        topology: Topology,
        store: ViewStore,
        keys: KeyDirectory | None,
        *,
        batch: int = 500,
        fetch_wait: float = 0.5,
        verify_processes: int = 1,
        on_progress: OnProgress | None = None,
        lease: WriterLease | None = None,
    ) -> None:
        self.js = js
        self.topology = topology
        self.store = store
        # With a lease, every batch is written as its holder (and the projection ends
        # with LeaseLost once it is not); without one (a rebuild), straight to the store.
        self.lease = lease
        self.keys = keys
        self.checker = MessageChecker(topology.subjects, keys)
        self.batch = batch
        self.fetch_wait = fetch_wait
        self.on_progress = on_progress
        self.position: Position | None = None
        self.moved = asyncio.Condition()
        self.verify_processes = verify_processes
        self._verifiers: Executor | None = None
        self._reconnected = asyncio.Event()  # the connection came back since we began
        self._working = False  # the current attempt has projected (or caught up)

    async def run(self, stop_at: int | None = None) -> Position:
        """Project until cancelled, or until the views hold sequence `stop_at`."""
        if self.verify_processes > 0:
            self._verifiers = ProcessPoolExecutor(
                self.verify_processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=die_with_parent,
                initargs=(os.getpid(),),
            )
        else:
            self._verifiers = ThreadPoolExecutor(1, thread_name_prefix="verify")
        stop_watching = on_reconnect(self.js._nc, self._reconnected.set)
        try:
            return await self._run(stop_at)
        finally:
            stop_watching()
            if self._verifiers is not None:
                self._verifiers.shutdown(wait=False, cancel_futures=True)
                self._verifiers = None

    async def _run(self, stop_at: int | None) -> Position:
        self.position = await asyncio.to_thread(self.store.position)
        delay = _FIRST_DELAY
        while True:
            if stop_at is not None and self.position.last_sequence >= stop_at:
                return self.position
            self._reconnected.clear()
            self._working = False
            try:
                await self._follow(stop_at)
            except LeaseLost:
                raise  # another instance writes now: the service stands by
            except ProjectionConflict as exc:
                log.warning("projection resyncs from the database: %s", exc)
                delay = await self._pause(delay)  # a conflict that repeats must not spin
                self.position = await asyncio.to_thread(self.store.position)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("reading the case stream failed (%r); resubscribing", exc)
                delay = await self._pause(delay)
            except MeshError as exc:
                # A database that went away, a broker down for longer than a pull
                # waits: keep the position, try again.
                log.warning("projection paused: %s", exc)
                delay = await self._pause(delay)
            except Exception:
                # A bug met on some message: say so loudly and try again, never stop
                # projecting silently (the position has not moved past it).
                log.exception("projection failed; retrying from the stored position")
                delay = await self._pause(delay)
                self.position = await asyncio.to_thread(self.store.position)
            else:
                return self.position

    async def _pause(self, delay: float) -> float:
        """Wait `delay` seconds before trying again, or less if the broker connection
        comes back meanwhile (or came back during the attempt that failed); the next
        delay: doubled, or the first one again if that attempt had been projecting."""
        if self._working:
            delay = _FIRST_DELAY
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reconnected.wait(), delay)
        return min(delay * 2, _MAX_DELAY)

    async def wait_for(self, sequence: int, timeout: float) -> Position:
        """Until the views hold `sequence` (for a checkpoint or a query that must
        see everything published before it)."""
        async with asyncio.timeout(timeout), self.moved:
            await self.moved.wait_for(
                lambda: self.position is not None and self.position.last_sequence >= sequence
            )
        assert self.position is not None
        return self.position

    async def _follow(self, stop_at: int | None) -> None:
        assert self.position is not None
        reader = StreamReader(
            self.js._nc,  # the client the JetStream context was made from
            self.topology.cases_stream,
            self.topology.subjects.family_all("case"),
            start_sequence=self.position.last_sequence + 1,
        )
        await reader.open()
        # A pipeline: the event loop reads ahead and hands each batch to a worker
        # process that verifies its signatures, while the batch before it is checked
        # against the registry's keys and written. At most `_AHEAD` batches wait, so
        # memory stays flat however long the stream.
        ahead: asyncio.Queue[tuple[list[Msg], asyncio.Future[list[Sealed]] | None]]
        ahead = asyncio.Queue(maxsize=_AHEAD)
        reading = asyncio.create_task(self._read_ahead(reader, ahead), name="read-ahead")
        try:
            while True:
                messages, sealing = await self._next(ahead, reading)
                if sealing is not None:
                    results = await sealing
                    if self.keys is not None:
                        # Never judge a message by a registry snapshot older than it:
                        # a revocation (or a registration) just before it must count.
                        await self.keys.ensure_current(messages[-1].metadata.timestamp)
                    # In a thread: the event loop keeps reading ahead and answering.
                    self.position = await asyncio.to_thread(
                        self._check_and_apply, messages, results, self.position
                    )
                caught_up = not messages or messages[-1].metadata.num_pending == 0
                self._working = True  # applied a batch, or found nothing new: healthy
                await self._progress(caught_up)
                if stop_at is not None and self.position.last_sequence >= stop_at:
                    return
        finally:
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            while not ahead.empty():
                _, pending = ahead.get_nowait()
                if pending is not None:
                    pending.cancel()
            await reader.close()

    async def _progress(self, caught_up: bool) -> None:
        assert self.position is not None
        async with self.moved:
            self.moved.notify_all()
        if self.on_progress is not None:
            await self.on_progress(self.position, caught_up)

    @staticmethod
    async def _next(
        ahead: asyncio.Queue[tuple[list[Msg], asyncio.Future[list[Sealed]] | None]],
        reading: asyncio.Task[None],
    ) -> tuple[list[Msg], asyncio.Future[list[Sealed]] | None]:
        """The next batch read; if reading failed instead, its error."""
        getting = asyncio.ensure_future(ahead.get())
        done, _ = await asyncio.wait([getting, reading], return_when=asyncio.FIRST_COMPLETED)
        if getting in done:
            return getting.result()
        getting.cancel()
        reading.result()  # raises what stopped it
        raise MeshError("reading the case stream stopped")  # pragma: no cover

    async def _read_ahead(
        self,
        reader: StreamReader,
        ahead: asyncio.Queue[tuple[list[Msg], asyncio.Future[list[Sealed]] | None]],
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            messages = await reader.next_batch(self.batch, self.fetch_wait)
            if not messages:
                await ahead.put(([], None))  # idle: the applier reports it caught up
                continue
            items = [(m.subject, m.data, m.headers or {}) for m in messages]
            sealing = loop.run_in_executor(self._verifiers, seal_all, items)
            await ahead.put((messages, sealing))

    def _check_and_apply(
        self, messages: list[Msg], sealed: list[Sealed], position: Position
    ) -> Position:
        records = []
        for msg, seal_result in zip(messages, sealed, strict=True):
            sequence, stored_at = _sequence_and_time(msg)
            records.append(
                self.checker.check(
                    sequence,
                    msg.subject,
                    msg.data,
                    msg.headers or {},  # read, never changed: no copy
                    stored_at,
                    seal_result,
                )
            )
        if self.lease is not None:
            return self.lease.apply(records, position)
        return self.store.apply(records, position)


def die_with_parent(parent: int) -> None:
    """In a verifier process: exit as soon as the event store that started it is gone.
    A pool's workers outlive a parent killed with SIGKILL (nobody tells them), and would
    stay behind, orphaned, holding memory."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _sequence_and_time(msg: Msg) -> tuple[int, datetime]:
    metadata = msg.metadata
    return metadata.sequence.stream, metadata.timestamp
