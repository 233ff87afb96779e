"""Signed Merkle checkpoints of the case log: `log_checkpointed` events on the ops
stream (append-only, like the case log), signed with the store's key. One goes out
after every `checkpoint_every` new messages and, once caught up, at most every
`checkpoint_interval` seconds. They are published beside the projection, not in its
way: a publish whose ack was lost with a restarted broker waits out its timeout
without holding the views back.

One signer at a time. Only the active replica (the writer lease's holder, app.py)
projects, so only it publishes; replicas share one key, so whoever signed, a checkpoint
verifies as the store's. A checkpoint is a fact of the log (the root of its first n
messages), so even a stale one would be true; still, each publish is conditional on the
checkpoint subject's last message being the one this instance last saw
(`Nats-Expected-Last-Subject-Sequence`): an active that was frozen, replaced and
resumed cannot slip an old checkpoint in after its successor's — the broker refuses it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.client import JetStreamContext

from contracts.errors import ContractError
from contracts.events.operations import LogCheckpointed, LogCheckpointedPayload
from mesh.service import (
    ConcurrencyConflict,
    EventPublisher,
    Identity,
    MeshError,
    SignatureError,
    Topology,
    broker_errors,
    read_subject,
    stop_task,
    verify_headers,
)
from services.eventstore.export import checkpoint_subject
from services.eventstore.projector import Projector
from services.eventstore.settings import EventStoreSettings
from services.eventstore.views import Position

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(
        self,
        js: JetStreamContext,
        publisher: EventPublisher,
        identity: Identity,
        topology: Topology,
        settings: EventStoreSettings,
    ) -> None:
        self.js = js
        self.publisher = publisher
        self.identity = identity
        self.topology = topology
        self.settings = settings
        self.last = 0  # the largest tree size this store has signed a checkpoint of
        self._last_time = 0.0
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._due: tuple[Position, bool] | None = None  # a checkpoint waiting to go out
        self._publishing = 0  # the tree size of the checkpoint being published
        self._tail = 0  # the ops-stream sequence of the last message on the subject

    async def load(self) -> None:
        """Find the last checkpoint this store signed. Only its own signature counts:
        anything else on the subject (written by someone allowed to publish there) is
        named in the log and passed over."""

        tail = 0

        def unreadable(sequence: int, subject: str, exc: ContractError) -> None:
            nonlocal tail
            tail = max(tail, sequence)
            log.warning("ops stream #%d on %s is not a checkpoint: %s", sequence, subject, exc)

        signed = 0
        for stored in await read_subject(
            self.js,
            self.topology.ops_stream,
            checkpoint_subject(self.topology),
            on_unreadable=unreadable,
        ):
            tail = max(tail, stored.sequence)
            try:
                signer = verify_headers(stored.subject, stored.body, stored.headers)
            except SignatureError as exc:
                log.warning("checkpoint #%d does not verify: %s", stored.sequence, exc.reason)
                continue
            if signer != self.identity.public_key or not isinstance(stored.event, LogCheckpointed):
                log.warning("checkpoint #%d is not this store's; passed over", stored.sequence)
                continue
            signed = max(signed, stored.event.payload.tree_size)
        self.last = signed
        self._tail = tail

    async def stop(self) -> None:
        await stop_task(self._task)

    async def after_batch(self, position: Position, caught_up: bool) -> None:
        """The projector's progress callback: publish a checkpoint if one is due."""
        if not self._due_at(position, caught_up):
            return
        self._due = (position, caught_up)  # a publish in flight takes the newest next
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._publish_due(), name="checkpoint")

    def _due_at(self, position: Position, caught_up: bool) -> bool:
        # One being published counts as published: the same checkpoints as if the
        # projection had waited for it.
        grown = position.tree_size - max(self.last, self._publishing)
        if grown <= 0:
            return False
        return grown >= self.settings.checkpoint_every or (
            caught_up and time.monotonic() - self._last_time >= self.settings.checkpoint_interval
        )

    async def _publish_due(self) -> None:
        while self._due is not None:
            (position, caught_up), self._due = self._due, None
            if not self._due_at(position, caught_up):
                continue  # the one just published covers it closely enough
            self._publishing = position.tree_size
            try:
                await self.publish(position)
            except MeshError as exc:
                log.warning(
                    "checkpoint at %d not published (next batch retries): %s",
                    position.tree_size,
                    exc,
                )
                return
            finally:
                self._publishing = 0

    async def publish(self, position: Position) -> None:
        """Sign and publish a checkpoint of `position`, unless one as large is out."""
        async with self._lock:
            if position.tree_size <= self.last:
                return
            event = LogCheckpointed(
                actor=self.settings.service_id,
                payload=LogCheckpointedPayload(
                    stream=self.topology.cases_stream,
                    tree_size=position.tree_size,
                    root_hash=position.frontier.root().hex(),
                ),
            )
            try:
                receipt = await self.publisher.publish(
                    event,
                    expected_sequence=self._tail,
                    expected_scope=checkpoint_subject(self.topology),
                )
            except ConcurrencyConflict:
                # Someone published a checkpoint since this instance last looked: a
                # successor, if this one was replaced. Read again what is signed.
                log.warning("a checkpoint was published by another instance; re-reading")
                await self.load()
                raise
            self._tail = receipt.sequence
            self.last = position.tree_size
            self._last_time = time.monotonic()
            log.info("checkpoint %d %s", position.tree_size, event.payload.root_hash[:16])

    async def catch_up(self, projector: Projector, timeout: float = 30.0) -> None:
        """Wait until the views hold everything the stream holds now, and sign a
        checkpoint of it."""
        with broker_errors("read the case stream's state"):
            info = await self.js.stream_info(self.topology.cases_stream)
        try:
            position = await projector.wait_for(info.state.last_seq, timeout)
        except TimeoutError:
            raise MeshError(
                f"the projection did not reach sequence {info.state.last_seq} in {timeout}s"
            ) from None
        await self.publish(position)
