"""Stopping background tasks for sure.

A task is cancelled and awaited; if it is still running after `grace` seconds the
cancellation is repeated. nats-py swallows a CancelledError in places (a KV `keys()`
watcher, for one), and a task that ignores one cancellation must not hang a shutdown.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[object] | None, grace: float = 2.0, tries: int = 5) -> None:
    if task is None or task.done():
        return
    for _ in range(tries):
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=grace)
        if done:
            return
    log.error("task %s ignored %d cancellations; leaving it behind", task.get_name(), tries)
