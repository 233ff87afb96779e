from __future__ import annotations

import asyncio
import random

import pytest

from contracts.events.operations import CircuitStateChangedPayload
from mesh._runtime.resilience import CircuitBreaker, redelivery_delay, retry_transient
from mesh.errors import BrokerError, CircuitOpen, PermanentError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _fail() -> None:
    raise BrokerError("call gateway", "timeout")


async def _succeed() -> str:
    return "ok"


async def test_the_breaker_opens_half_opens_and_closes_with_events() -> None:
    clock = FakeClock()
    changes: list[CircuitStateChangedPayload] = []

    async def record(change: CircuitStateChangedPayload) -> None:
        changes.append(change)

    breaker = CircuitBreaker(
        "gateway", failure_threshold=2, reset_timeout=10, on_change=record, clock=clock
    )
    for _ in range(2):
        with pytest.raises(BrokerError):
            await breaker.call(_fail)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen, match="'gateway' is open"):
        await breaker.call(_succeed)
    clock.now = 10.5
    assert await breaker.call(_succeed) == "ok"
    assert breaker.state == "closed"
    assert [(c.previous, c.current) for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert changes[0].consecutive_failures == 2


async def test_a_failed_trial_reopens_the_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("gateway", failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(BrokerError):
        await breaker.call(_fail)
    clock.now = 6
    with pytest.raises(BrokerError):
        await breaker.call(_fail)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        await breaker.call(_succeed)


async def test_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker("gateway", failure_threshold=2)
    with pytest.raises(BrokerError):
        await breaker.call(_fail)
    await breaker.call(_succeed)
    with pytest.raises(BrokerError):
        await breaker.call(_fail)
    assert breaker.state == "closed"


async def test_retry_transient_retries_retryable_errors_only() -> None:
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise BrokerError("publish", "timeout")
        return "stored"

    assert await retry_transient(flaky, initial=0.001, maximum=0.002) == "stored"
    assert calls == 3

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise PermanentError("bad input")

    calls = 0
    with pytest.raises(PermanentError):
        await retry_transient(broken, initial=0.001)
    assert calls == 1


async def test_retry_transient_gives_up_with_the_last_error() -> None:
    with pytest.raises(BrokerError, match="timeout"):
        await retry_transient(_fail, attempts=3, initial=0.001, maximum=0.002)


def test_redelivery_delay_grows_and_is_capped() -> None:
    rng = random.Random(7)
    delays = [redelivery_delay(n, base=1.0, cap=8.0, rng=rng) for n in range(1, 8)]
    assert 0.5 <= delays[0] <= 1.0
    assert 1.0 <= delays[1] <= 2.0
    assert all(4.0 <= d <= 8.0 for d in delays[4:])


async def test_a_late_success_does_not_close_an_open_breaker() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("gateway", failure_threshold=1, reset_timeout=10, clock=clock)
    release = asyncio.Event()

    async def slow_success() -> str:
        await release.wait()
        return "ok"

    in_flight = asyncio.create_task(breaker.call(slow_success))
    await asyncio.sleep(0)
    with pytest.raises(BrokerError):
        await breaker.call(_fail)
    assert breaker.state == "open"
    release.set()
    assert await in_flight == "ok"
    assert breaker.state == "open"


async def test_a_failing_state_listener_does_not_fail_the_call() -> None:
    async def broken_listener(change: CircuitStateChangedPayload) -> None:
        raise BrokerError("publish", "no responders")

    breaker = CircuitBreaker("gateway", failure_threshold=1, on_change=broken_listener)
    with pytest.raises(BrokerError, match="timeout"):  # the call's own error, not the listener's
        await breaker.call(_fail)
    assert breaker.state == "open"
