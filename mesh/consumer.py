"""The pull-consumer loop: fetch a window, process it, repeat.

Messages in a window are processed concurrently *across* ordering keys (by default the
case id in the subject) and strictly in stream order *within* a key, so two events of
one case are never handled at the same time or out of order, while different cases
overlap their I/O. Settlement (ack / nak / term) is the job of the `process` callback;
the loop only keeps long windows alive with in-progress acks and stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

log = logging.getLogger(__name__)

Process = Callable[[Msg], Awaitable[None]]
OrderingKey = Callable[[Msg], str]


def case_ordering_key(msg: Msg) -> str:
    # <root>.<family>.<key>.<event_type>: the key token orders a case's events.
    parts = msg.subject.split(".")
    return parts[2] if len(parts) > 2 else msg.subject


class PullConsumerLoop:
    def __init__(
        self,
        subscription: JetStreamContext.PullSubscription,
        process: Process,
        *,
        batch: int,
        fetch_wait: float,
        ack_wait: float,
        ordering_key: OrderingKey = case_ordering_key,
    ) -> None:
        self.subscription = subscription
        self.process = process
        self.batch = batch
        self.fetch_wait = fetch_wait
        self.keepalive_interval = max(ack_wait / 3, 0.1)
        self.ordering_key = ordering_key
        self._stopping = asyncio.Event()
        self.processed = 0

    def stop(self) -> None:
        """Stop after the current window; nothing fetched is abandoned unsettled."""
        self._stopping.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            try:
                messages = await self.subscription.fetch(self.batch, timeout=self.fetch_wait)
            except (nats.errors.TimeoutError, TimeoutError):
                continue  # an idle long-poll: nothing to do
            except nats.errors.ConnectionClosedError:
                if self._stopping.is_set():
                    return
                raise
            except nats.errors.Error as exc:
                # Reconnecting, or the server is briefly unavailable: back off, try again.
                log.warning("fetch failed (%r); retrying", exc)
                await asyncio.sleep(min(self.fetch_wait, 1.0))
                continue
            if messages:
                await self._process_window(messages)

    async def _process_window(self, messages: list[Msg]) -> None:
        if len(messages) == 1:
            work: Awaitable[object] = self._process_one(messages[0])
        else:
            groups: dict[str, list[Msg]] = {}
            for msg in messages:
                groups.setdefault(self.ordering_key(msg), []).append(msg)
            work = asyncio.gather(*(self._process_in_order(group) for group in groups.values()))
        task = asyncio.ensure_future(work)
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.keepalive_interval)
            if done:
                task.result()
                return
            # A slow window: tell the server we are still working on what is unsettled.
            for msg in messages:
                if not msg._ackd:
                    with contextlib.suppress(nats.errors.Error):
                        await msg.in_progress()

    async def _process_in_order(self, group: list[Msg]) -> None:
        for msg in group:
            await self._process_one(msg)

    async def _process_one(self, msg: Msg) -> None:
        await self.process(msg)
        self.processed += 1
