"""Connecting to NATS: reconnect forever with backoff, log every state change, tell
whoever asked when the connection is back, and remember what the broker refused (so a
publish that times out on a permissions violation is reported as that, not as a slow
server).

Reconnecting: the first attempt comes at once, the next after tens of milliseconds (a
broker restarted by a supervisor is back within a second or two, and every service
waits on it), spreading out to one every quarter second, and after about half a minute
of outage to one every two seconds, with jitter, so a broker that stays down is not
hammered by every client in step. nats-py's own `reconnect_time_wait` is one fixed
pause (it still spaces the first connection's attempts).
"""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client, Server
from nats.js.client import JetStreamContext

from mesh._trust.identity import Identity
from mesh.errors import BrokerError

log = logging.getLogger(__name__)

_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]+)"', re.I)
_REFUSAL_MEMORY = 60.0  # seconds a refusal is remembered
_refusals: weakref.WeakKeyDictionary[Client, deque[tuple[float, str, str]]] = (
    weakref.WeakKeyDictionary()
)
_reconnect_listeners: weakref.WeakKeyDictionary[Client, list[Callable[[], None]]] = (
    weakref.WeakKeyDictionary()
)

# Attempts in a row to one server -> the pause before the next (before jitter).
_FIRST_PAUSE = 0.025
_SHORT_CAP = 0.25  # while the outage is young: a restart is what we expect
_LONG_CAP = 2.0  # once it is not (about half a minute down): an outage, so spread out
_SHORT_ATTEMPTS = 120


def client_of(js: JetStreamContext) -> Client:
    """The client a JetStream context was made from. nats-py keeps it private and offers
    no accessor; this is the one place that reaches for it, so that readers given a
    context (the common currency of our APIs) can also use core requests (direct gets,
    reconnect callbacks) on the very same connection."""
    client: Client = js._nc
    return client


def reconnect_pause(attempts: int) -> float:
    """How long to wait before trying a server again after `attempts` failures in a
    row: none before the first retry, then 25 ms doubling to 0.25 s, and 2 s once the
    server has been down for about half a minute; every pause is jittered (down to
    3/4) so clients that lost the same server do not come back in step."""
    if attempts <= 0:
        return 0.0
    cap = _SHORT_CAP if attempts <= _SHORT_ATTEMPTS else _LONG_CAP
    pause: float = min(cap, _FIRST_PAUSE * 2.0 ** min(attempts - 1, 16))
    return pause * random.uniform(0.75, 1.0)


def _next_server(servers: list[Server], _info: dict[str, Any]) -> tuple[Server | None, float]:
    """nats-py's reconnect hook: the server tried least often in a row (in a cluster
    every member is tried before any is tried twice), after its pause."""
    if not servers:
        return None, 0.0
    server = min(servers, key=lambda s: s.reconnects)
    return server, reconnect_pause(server.reconnects)


def _reconnect_handler(
    nc: Client,
) -> Callable[[list[Server], dict[str, Any]], tuple[Server | None, float]]:
    """`_next_server`, after closing what the previous attempt left open: nats-py keeps
    one transport object across attempts and, when an attempt's socket opened but its
    CONNECT failed (a broker still starting, a refusal), opens the next socket over it
    without closing the last — a file descriptor lost per failed attempt."""

    def handler(servers: list[Server], info: dict[str, Any]) -> tuple[Server | None, float]:
        transport = nc._transport
        if transport is not None and not nc.is_connected:
            with contextlib.suppress(Exception):
                transport.close()  # type: ignore[no-untyped-call]
        return _next_server(servers, info)

    return handler


def on_reconnect(nc: Client, callback: Callable[[], None]) -> Callable[[], None]:
    """Call `callback` (in the event loop, synchronously) every time `nc` is connected
    again after losing its server — resubscribed and flushed, so a request made from it
    reaches the server. Returns what stops the calls. Only connections made by
    `connect` report; for another client nothing is ever called."""
    listeners = _reconnect_listeners.setdefault(nc, [])
    listeners.append(callback)

    def stop() -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(callback)

    return stop


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
    lost_at: float | None = None  # when the connection was lost, until it is back
    failed_attempts = 0  # reconnect attempts since

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
        elif lost_at is not None and isinstance(exc, OSError | TimeoutError):
            # Reconnecting: say it once, not at every attempt.
            nonlocal failed_attempts
            failed_attempts += 1
            level = logging.WARNING if failed_attempts == 1 else logging.DEBUG
            log.log(level, "nats %s: broker unreachable, reconnecting: %r", name, exc)
        else:
            log.warning("nats %s: %r", name, exc)

    async def on_disconnected() -> None:
        nonlocal lost_at, failed_attempts
        if connected and lost_at is None:
            lost_at, failed_attempts = time.monotonic(), 0
        log.info("nats %s: disconnected from %s", name, url)

    async def on_reconnected() -> None:
        nonlocal lost_at
        lasted = time.monotonic() - lost_at if lost_at is not None else 0.0
        lost_at = None
        log.info(
            "nats %s: reconnected after %.2f s (%d failed attempts)", name, lasted, failed_attempts
        )
        for listener in list(_reconnect_listeners.get(nc, ())):
            try:
                listener()
            except Exception:
                log.exception("nats %s: a reconnect listener failed", name)

    async def on_closed() -> None:
        log.info("nats %s: connection closed", name)

    options: dict[str, Any] = {
        "connect_timeout": connect_timeout,
        # Spaces the first connection's attempts only; reconnects follow _next_server.
        "reconnect_time_wait": 0.5,
        # A broker that vanished without closing the socket (a host gone, a network
        # cut) is noticed after two unanswered pings: within ~30 s, not nats-py's 6 min.
        "ping_interval": 10,
        "max_outstanding_pings": 2,
    }
    if identity is not None:
        options["nkeys_seed_str"] = identity.seed
    if inbox_prefix is not None:
        options["inbox_prefix"] = inbox_prefix
    if user is not None:
        options["user"] = user
        options["password"] = password or ""
    nc = Client()
    options["reconnect_to_server_handler"] = _reconnect_handler(nc)
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
