"""The projector: reads the case stream in order and applies it to the views, a batch
per transaction.

Its position lives in the database, beside the views, not in a durable consumer: on
every (re)start it reads the stream from the sequence after the one the views hold.
The consumer is an ephemeral, ack-less pull consumer — nothing on the broker to keep
in step with the database, so nothing that can disagree with it. A gap or a repeat in
the sequences it receives is refused (the views are never written around a hole) and
the consumer is recreated from the stored position.

While the database applies a batch (in a worker thread), the next fetch is already in
flight. Decoding and signature checks run in the worker thread too: PyNaCl and the
database drivers release the GIL, so the second core does real work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from mesh.errors import MeshError
from mesh.key_directory import KeyDirectory
from mesh.topology import Topology
from services.eventstore.checking import MessageChecker
from services.eventstore.domain import LogRecord
from services.eventstore.views import Position, ProjectionConflict, ViewStore

log = logging.getLogger(__name__)

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
        on_progress: OnProgress | None = None,
    ) -> None:
        self.js = js
        self.topology = topology
        self.store = store
        self.keys = keys
        self.checker = MessageChecker(topology.subjects, keys)
        self.batch = batch
        self.fetch_wait = fetch_wait
        self.on_progress = on_progress
        self.position: Position | None = None
        self.moved = asyncio.Condition()

    async def run(self, stop_at: int | None = None) -> Position:
        """Project until cancelled, or until the views hold sequence `stop_at`."""
        self.position = await asyncio.to_thread(self.store.position)
        delay = 0.1
        while True:
            if stop_at is not None and self.position.last_sequence >= stop_at:
                return self.position
            try:
                await self._follow(stop_at)
            except ProjectionConflict as exc:
                log.warning("projection resyncs from the database: %s", exc)
                self.position = await asyncio.to_thread(self.store.position)
            except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                log.warning("reading the case stream failed (%r); resubscribing", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except MeshError as exc:
                # A database that went away: keep the position, try again.
                log.warning("projection paused: %s", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                return self.position

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
        subscription = await self.js.pull_subscribe(
            self.topology.subjects.family_all("case"),
            stream=self.topology.cases_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.NONE,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.position.last_sequence + 1,
                inactive_threshold=60.0,
                mem_storage=True,
            ),
        )

        async def fetch() -> list[Msg]:
            try:
                return await subscription.fetch(self.batch, timeout=self.fetch_wait)
            except nats.errors.TimeoutError:
                return []

        prefetch = asyncio.ensure_future(fetch())
        try:
            while True:
                messages = await prefetch
                if not messages:
                    await self._progress(caught_up=True)
                    prefetch = asyncio.ensure_future(fetch())
                    continue
                prefetch = asyncio.ensure_future(fetch())  # in flight while we apply
                if self.keys is not None:
                    # Never judge a message by a registry snapshot older than it: a
                    # revocation (or a registration) just before it must count.
                    await self.keys.current_as_of(messages[-1].metadata.timestamp)
                records = await asyncio.to_thread(self._check, messages)
                self.position = await asyncio.to_thread(self.store.apply, records, self.position)
                pending = messages[-1].metadata.num_pending
                await self._progress(caught_up=pending == 0)
                if stop_at is not None and self.position.last_sequence >= stop_at:
                    return
        finally:
            prefetch.cancel()
            with contextlib.suppress(BaseException):
                await prefetch
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()

    async def _progress(self, caught_up: bool) -> None:
        assert self.position is not None
        async with self.moved:
            self.moved.notify_all()
        if self.on_progress is not None:
            await self.on_progress(self.position, caught_up)

    def _check(self, messages: list[Msg]) -> list[LogRecord]:
        return [
            self.checker.check(
                msg.metadata.sequence.stream,
                msg.subject,
                msg.data,
                dict(msg.headers or {}),
                msg.metadata.timestamp,
            )
            for msg in messages
        ]
