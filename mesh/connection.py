"""Connecting to NATS: reconnect forever with backoff, and log every state change."""

from __future__ import annotations

import logging

import nats
import nats.errors
from nats.aio.client import Client

from mesh.errors import BrokerError
from mesh.identity import Identity

log = logging.getLogger(__name__)


async def connect(
    url: str,
    *,
    name: str,
    identity: Identity | None = None,
    connect_timeout: float = 5.0,
) -> Client:
    """Connect with reconnect handling. With an identity, authenticate by its nkey."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats %s: %r", name, exc)

    async def on_disconnected() -> None:
        log.info("nats %s: disconnected from %s", name, url)

    async def on_reconnected() -> None:
        log.info("nats %s: reconnected", name)

    async def on_closed() -> None:
        log.info("nats %s: connection closed", name)

    options: dict[str, object] = {}
    if identity is not None:
        options["nkeys_seed_str"] = identity.seed
    try:
        return await nats.connect(
            url,
            name=name,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            max_reconnect_attempts=-1,  # a long-running agent waits out a broker restart
            reconnect_time_wait=0.5,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            **options,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        raise BrokerError(f"connect to {url}", repr(exc)) from exc
