"""Who may sign what, and when: the registry's key history, held by every consumer.

A check answers: was `signer` a key of `actor`, valid at the time the event entered
the log, and was the actor neither revoked nor suspended then? The directory follows
the registry: a snapshot on start, and a fresh one whenever a registry event appears
(subscribed on `<root>.registry.>`), so a revocation reaches every consumer within a
round trip. The check is a dictionary look-up; it does not re-verify the signature
(that is `verify_signatures`, ~45 µs an event, and what auditors do offline).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.codec import decode
from contracts.errors import ContractError
from contracts.registry_api import PrincipalKeys
from contracts.subjects import Subjects
from mesh.errors import MeshError, SignatureError
from mesh.registry_client import RegistryClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _KeyPeriod:
    agent_id: str
    valid_from: datetime
    valid_until: datetime | None


class KeyDirectory:
    def __init__(self) -> None:
        self._keys: dict[str, _KeyPeriod] = {}
        self._principals: dict[str, PrincipalKeys] = {}
        self._subscription: Subscription | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._registry: RegistryClient | None = None
        self._last_refresh = 0.0
        self._refresh_lock = asyncio.Lock()
        self.loaded = asyncio.Event()
        # When the registry snapshot held was asked for: it knows every change before.
        self.snapshot_at: datetime | None = None

    def load(self, principals: list[PrincipalKeys]) -> None:
        keys = {}
        for principal in principals:
            for key in principal.key_history:
                keys[key.public_key] = _KeyPeriod(
                    principal.agent_id, key.valid_from, key.valid_until
                )
        self._keys = keys
        self._principals = {p.agent_id: p for p in principals}
        self.loaded.set()

    def knows(self, signer: str) -> bool:
        return signer in self._keys

    async def refresh(self, signer: str | None = None, min_interval: float = 0.5) -> None:
        """Reload now (say, for a signer registered a moment ago); at most once per
        `min_interval`, so a flood of unknown signers cannot flood the registry.
        Concurrent callers wait for the reload in flight rather than skip it."""
        async with self._refresh_lock:
            if signer is not None and signer in self._keys:
                return  # the reload we waited for found it
            if self._registry is None or time.monotonic() - self._last_refresh < min_interval:
                return
            self._last_refresh = time.monotonic()
            try:
                await self._reload(self._registry)
            except MeshError as exc:
                log.warning("could not refresh the key directory: %s", exc)

    async def _reload(self, registry: RegistryClient) -> None:
        asked_at = datetime.now(UTC)
        self.load(await registry.keys())
        self.snapshot_at = asked_at

    async def current_as_of(self, at: datetime, skew: float = 0.5) -> None:
        """Make sure the snapshot was asked for after `at` (allowing `skew` seconds
        between the registry's clock and the broker's), so checking a message stored at
        `at` sees every lifecycle change made before it — a revocation the follower has
        not heard of yet included. Raises MeshError if the registry cannot answer: a
        check against a snapshot that may be stale would not be a check."""
        if self._registry is None:
            return
        wanted = at + timedelta(seconds=skew)
        async with self._refresh_lock:
            if self.snapshot_at is not None and self.snapshot_at >= wanted:
                return
            await self._reload(self._registry)

    def check(self, signer: str, actor: str, at: datetime, subject: str = "") -> None:
        """Raise SignatureError unless `signer` could sign for `actor` at time `at`."""
        period = self._keys.get(signer)
        if period is None:
            raise SignatureError(subject, f"signer key {signer} is not registered")
        if period.agent_id != actor:
            raise SignatureError(
                subject, f"signer key belongs to {period.agent_id}, not to actor {actor}"
            )
        principal = self._principals[actor]
        if principal.status == "revoked" and at >= principal.status_changed_at:
            raise SignatureError(
                subject,
                f"signed by revoked agent {actor} after its revocation at "
                f"{principal.status_changed_at.isoformat()}",
            )
        for suspension in principal.suspensions:
            if at >= suspension.start and (suspension.end is None or at < suspension.end):
                until = suspension.end.isoformat() if suspension.end else "now"
                raise SignatureError(
                    subject,
                    f"signed by agent {actor} while suspended "
                    f"({suspension.start.isoformat()} to {until})",
                )
        if at < period.valid_from or (period.valid_until is not None and at >= period.valid_until):
            until = period.valid_until.isoformat() if period.valid_until else "now"
            raise SignatureError(
                subject,
                f"key {signer} of {actor} was not valid at {at.isoformat()} "
                f"(valid {period.valid_from.isoformat()} to {until})",
            )

    async def follow(
        self,
        nc: Client,
        subjects: Subjects,
        registry: RegistryClient,
        refresh_every: float = 30.0,
    ) -> None:
        """Load a snapshot now, and a new one whenever the registry's history moves.

        A snapshot can be served while the registry is still applying the event that
        announced it, so the reload repeats until every announced change shows."""
        pending: dict[str, datetime] = {}  # principal -> newest announced change
        changed = asyncio.Event()

        def caught_up() -> bool:
            return all(
                agent_id in self._principals and self._principals[agent_id].updated_at >= at
                for agent_id, at in pending.items()
            )

        async def reload() -> None:
            while changed.is_set():
                changed.clear()
                deadline = time.monotonic() + 10.0
                while True:
                    try:
                        await self._reload(registry)
                    except MeshError as exc:
                        log.warning(
                            "could not refresh the key directory (%s); keeping the last", exc
                        )
                    if caught_up():
                        pending.clear()
                        break
                    if time.monotonic() > deadline:
                        log.error("key directory still behind the registry: %s", pending)
                        break
                    await asyncio.sleep(0.05)

        async def on_registry_event(msg: Msg) -> None:
            try:
                event = decode(msg.data)
                key = event.subject_key()
            except (ContractError, ValueError):
                log.warning("unreadable registry event on %s; reloading anyway", msg.subject)
            else:
                pending[key] = max(event.occurred_at, pending.get(key, event.occurred_at))
            changed.set()
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(reload())

        async def watchdog() -> None:
            # Registry events travel over core NATS: one sent while we were
            # disconnected is gone. Reload after every reconnect, and now and then.
            reconnects = nc.stats.get("reconnects", 0)
            last = time.monotonic()
            while True:
                await asyncio.sleep(1.0)
                now_reconnects = nc.stats.get("reconnects", 0)
                if now_reconnects != reconnects or time.monotonic() - last > refresh_every:
                    reconnects, last = now_reconnects, time.monotonic()
                    changed.set()
                    if self._refresh is None or self._refresh.done():
                        self._refresh = asyncio.create_task(reload())

        try:
            self._subscription = await nc.subscribe(
                subjects.family_all("registry"), cb=on_registry_event
            )
        except nats.errors.Error as exc:
            raise MeshError(f"cannot follow the registry: {exc!r}") from exc
        self._registry = registry
        await self._reload(registry)
        self._watchdog = asyncio.create_task(watchdog())

    async def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        if self._refresh is not None:
            self._refresh.cancel()
            await asyncio.gather(self._refresh, return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
