"""`broker_errors`: nats-py's exceptions leave a block as the mesh's (the permission
case, which needs a broker that refuses, is in tests/integration/test_registry.py)."""

from __future__ import annotations

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from mesh.errors import BrokerError, ConcurrencyConflict
from mesh.service import broker_errors


@pytest.mark.parametrize(
    "raised",
    [
        nats.errors.TimeoutError(),
        TimeoutError(),
        nats.errors.NoRespondersError(),
        nats.errors.ConnectionClosedError(),
        nats.js.errors.APIError(code=503, description="jetstream unavailable"),
        nats.js.errors.NoKeysError(),
    ],
)
async def test_a_nats_error_becomes_a_retryable_broker_error(raised: Exception) -> None:
    with pytest.raises(BrokerError) as caught, broker_errors("read pending approval r-1"):
        raise raised
    assert caught.value.operation == "read pending approval r-1"
    assert caught.value.reason == repr(raised)
    assert caught.value.retryable
    assert caught.value.__cause__ is raised


async def test_a_timeout_nobody_refused_is_a_broker_error_not_a_refusal() -> None:
    timeout = pytest.raises(BrokerError, match=r"publish to mesh\.x: TimeoutError")
    with timeout, broker_errors("publish to mesh.x", nc=Client(), subject="mesh.x"):
        raise nats.errors.TimeoutError


async def test_what_the_block_handles_or_already_mapped_passes_through() -> None:
    def missing() -> None:
        raise nats.js.errors.KeyNotFoundError

    def lookup() -> str:
        with broker_errors("read key"):
            try:
                missing()
            except nats.js.errors.KeyNotFoundError:
                return "absent"
        return "present"

    assert lookup() == "absent"
    with pytest.raises(ConcurrencyConflict), broker_errors("swap"):
        raise ConcurrencyConflict("r-1", 3, "approval changed")
    with pytest.raises(ValueError, match="not ours"), broker_errors("decode"):
        raise ValueError("not ours")
