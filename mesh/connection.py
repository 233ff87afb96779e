"""Connecting to NATS: reconnect forever with backoff, log every state change, and
remember what the broker refused (so a publish that times out on a permissions
violation is reported as that, not as a slow server)."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from mesh.errors import BrokerError
from mesh.identity import Identity

log = logging.getLogger(__name__)

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.I)
_REFUSAL_MEMORY = 60.0  # seconds a refusal is remembered
_refusals: weakref.WeakKeyDictionary[Client, deque[tuple[float, str, str]]] = (
    weakref.WeakKeyDictionary()
)


def refused(nc: Client, subject: str) -> str | None:
    """The broker's refusal of `subject` on this connection, if one arrived recently."""
    now = time.monotonic()
    for at, operation, refused_subject in reversed(_refusals.get(nc, ())):
        # nats-py lower-cases the server's error text, subject included.
        if now - at <= _REFUSAL_MEMORY and refused_subject.lower() == subject.lower():
            return f"permissions violation for {operation} to {subject!r}"
    return None


async def connect(
    url: str,
    *,
    name: str,
    identity: Identity | None = None,
    inbox_prefix: str | None = None,
    user: str | None = None,
    password: str | None = None,
    connect_timeout: float = 5.0,
    reconnect: bool = True,
    initial_attempts: int = 3,
    on_credentials_refused: Callable[[], None] | None = None,
) -> Client:
    """Connect with reconnect handling. With an identity, authenticate by its nkey;
    with an inbox prefix, receive replies only there (a private inbox the broker's
    permissions can reserve for this principal)."""
    connected = False  # refusals after this point mean our credentials were withdrawn
    recent: deque[tuple[float, str, str]] = deque(maxlen=64)
    initial_errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        if not connected:
            initial_errors.append(exc)
        match = _VIOLATION.search(str(exc))
        if "authorization violation" in str(exc).lower() and connected:
            # Connected once, refused now: our user was removed (suspended, revoked).
            log.error("nats %s: the broker no longer accepts our credentials", name)
            if on_credentials_refused is not None:
                on_credentials_refused()
        elif match:
            recent.append((time.monotonic(), match.group(1).lower(), match.group(2)))
            log.error("nats %s: broker refused: %s", name, exc)
        else:
            log.warning("nats %s: %r", name, exc)

    async def on_disconnected() -> None:
        log.info("nats %s: disconnected from %s", name, url)

    async def on_reconnected() -> None:
        log.info("nats %s: reconnected", name)

    async def on_closed() -> None:
        log.info("nats %s: connection closed", name)

    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        "reconnect_time_wait": 0.5,
    }
    if identity is not None:
        options["nkeys_seed_str"] = identity.seed
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    if user is not None:
        options["user"] = user
        options["password"] = password or ""
    nc = Client()
    try:
        await nc.connect(
            # A cluster is given as "nats://a:4222,nats://b:4222": the client fails over.
            [server.strip() for server in url.split(",") if server.strip()],
            name=name,
            allow_reconnect=reconnect,
            # Bounded while connecting (a refused key must fail, not spin); unbounded
            # once connected (a long-running agent waits out a broker restart).
            max_reconnect_attempts=initial_attempts if reconnect else 0,
            error_cb=on_error,
            disconnected_cb=on_disconnected,
            reconnected_cb=on_reconnected,
            closed_cb=on_closed,
            **options,
        )
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        # The server may reset the socket right after saying why: report the why.
        refusals = [e for e in initial_errors if "authorization violation" in str(e).lower()]
        cause = (refusals or initial_errors or [exc])[-1]
        # nats-py leaves the failed attempt's socket open; release it.
        with contextlib.suppress(Exception):
            await nc.close()
        raise BrokerError(f"connect to {url}", repr(cause)) from exc
    if reconnect:
        nc.options["max_reconnect_attempts"] = -1
    connected = True
    _refusals[nc] = recent
    return nc


async def close(nc: Client) -> None:
    """Close a connection that may already be gone (the broker dropped our credentials,
    or the server stopped): a dead socket is not an error at shutdown."""
    try:
        await nc.close()
    except (OSError, nats.errors.Error) as exc:
        log.info("closing a connection that was already lost: %r", exc)
