"""Retries and circuit breaking.

- `retry_transient` retries a coroutine on retryable errors in-process (tenacity:
  exponential backoff with jitter), for short hiccups such as a publish timeout.
- `redelivery_delay` is the broker-side schedule: how long a NAK asks JetStream to
  wait before redelivering, growing with each delivery, capped, jittered;
  `redelivery_span` is about how long that schedule takes to run out.
- `RetryBudget` says when something that keeps failing transiently has been failing
  for too long: a handler redelivers until then, and takes its last resort after.
- `TokenBucket` bounds how often something may happen (say, anonymous registrations),
  so a flood is answered "later" instead of starving everything else.
- `CircuitBreaker` stops calling a dependency that keeps failing; each state change
  is handed to `on_change` (the runtime publishes it as a `circuit_state_changed`
  event, so the breaker's history is in the log like everything else).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from contracts.events.operations import BreakerState, CircuitStateChangedPayload
from mesh.errors import CircuitOpen, is_retryable

T = TypeVar("T")
log = logging.getLogger(__name__)


async def retry_transient(
    operation: Callable[[], Awaitable[T]],
    *,
    attempts: int = 4,
    initial: float = 0.05,
    maximum: float = 2.0,
    deadline: float = 10.0,
    retry_on: Callable[[BaseException], bool] = is_retryable,
) -> T:
    """Run `operation`, retrying errors `retry_on` accepts; the last error is re-raised."""
    retrying = AsyncRetrying(
        stop=stop_after_attempt(attempts) | stop_after_delay(deadline),
        wait=wait_exponential_jitter(multiplier=initial, max=maximum),
        retry=retry_if_exception(retry_on),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await operation()
    raise AssertionError("unreachable: tenacity re-raises the last error")


def redelivery_delay(
    delivery: int, *, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Full-jitter-ish exponential delay before delivery number `delivery + 1`."""
    exponential = min(cap, base * (2 ** max(0, delivery - 1)))
    return (rng or random).uniform(exponential / 2, exponential)


def redelivery_span(max_deliver: int, *, base: float, cap: float) -> float:
    """How long `redelivery_delay`'s backoff typically lasts (jitter at its mean) from
    the first delivery to delivery number `max_deliver`, the last: about how long an
    outage redelivery alone can ride out (an open breaker's delay can only add to it)."""
    return sum(0.75 * min(cap, base * 2.0 ** (delivery - 1)) for delivery in range(1, max_deliver))


class RetryBudget:
    """How long each piece of work (by key) may go on failing before its owner gives
    up: the clock starts at the key's first failure and stops at `settled`. Kept in
    the process: a restart starts every clock again (the runtime's max_deliver still
    bounds the retries). At most `limit` keys are tracked; the oldest go first."""

    def __init__(
        self, seconds: float, *, limit: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.limit = limit
        self.clock = clock
        self._since: dict[str, float] = {}

    def failed(self, key: str) -> float:
        """Record a failure of `key`; how long it has been failing (0 at the first)."""
        now = self.clock()
        if key not in self._since:
            while len(self._since) >= self.limit:
                del self._since[next(iter(self._since))]
            self._since[key] = now
        return now - self._since[key]

    def spent(self, key: str) -> bool:
        """Record a failure of `key`; True once it has been failing for the budget."""
        return self.failed(key) >= self.seconds

    def settled(self, key: str) -> None:
        """`key` succeeded or was given up: its next failure starts a new clock."""
        self._since.pop(key, None)


class TokenBucket:
    """`rate` events a second on average, bursts of up to `burst`."""

    def __init__(self, *, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> float:
        """0 if one event may happen now (and counts it); else how long until one may."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self.rate


StateListener = Callable[[CircuitStateChangedPayload], Awaitable[None]]


class CircuitBreaker:
    """closed → (threshold consecutive failures) → open → (reset_timeout) → half_open
    → one trial call: success closes it, failure opens it again."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        on_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.on_change = on_change
        self.clock = clock
        self.state: BreakerState = "closed"
        self.consecutive_failures = 0
        self._opened_at = 0.0
        self._trial_running = False

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        trial = await self._before_call()
        try:
            result = await operation()
        except Exception as exc:
            await self._on_failure(exc, trial)
            raise
        await self._on_success(trial)
        return result

    async def _before_call(self) -> bool:
        """Admit a call or raise CircuitOpen; True when the call is the half-open trial."""
        if self.state == "open":
            waited = self.clock() - self._opened_at
            if waited < self.reset_timeout:
                raise CircuitOpen(self.name, self.reset_timeout - waited)
            await self._transition("half_open", "reset timeout elapsed; trying one call")
        if self.state == "half_open":
            if self._trial_running:
                raise CircuitOpen(self.name, self.reset_timeout)
            self._trial_running = True
            return True
        return False

    async def _on_success(self, trial: bool) -> None:
        if trial:
            self._trial_running = False
            self.consecutive_failures = 0
            await self._transition("closed", "trial call succeeded")
        elif self.state == "closed":
            self.consecutive_failures = 0
        # A call admitted before the breaker opened that succeeds late proves little:
        # only the half-open trial may close an open breaker.

    async def _on_failure(self, exc: Exception, trial: bool) -> None:
        if trial:
            self._trial_running = False
            self.consecutive_failures += 1
            await self._open(f"trial call failed: {exc!r}")
        elif self.state == "closed":
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.failure_threshold:
                await self._open(f"{self.consecutive_failures} consecutive failures, last {exc!r}")

    async def _open(self, reason: str) -> None:
        self._opened_at = self.clock()
        await self._transition("open", reason)

    async def _transition(self, new_state: BreakerState, reason: str) -> None:
        previous, self.state = self.state, new_state
        if self.on_change is None:
            return
        try:
            await self.on_change(
                CircuitStateChangedPayload(
                    breaker=self.name,
                    previous=previous,
                    current=new_state,
                    reason=reason,
                    consecutive_failures=self.consecutive_failures,
                )
            )
        except Exception:
            # The state change happened whatever the log says: a failed publish must not
            # turn the guarded call's success (say, a payment) into an error and a retry.
            log.exception("breaker %s: could not publish %s -> %s", self.name, previous, new_state)
