"""Who may sign what, and when: the registry's keys and cards, held by every consumer.

A check answers: was `signer` a key of `actor`, valid at the time the event entered
the log; was the actor neither revoked nor suspended then; and did the card the actor
held then let it produce this type of event? A fact check answers whether a card in
force at that time made the actor the authority for a case fact. The checks are
dictionary look-ups; they do not re-verify the signature (that is `verify_headers`,
~45 µs an event, which the component acting on an approval chain and auditors do).

Nobody acts on a message with a directory older than the message. Every registry
change takes effect at the broker time its event was stored in the registry stream,
so `ensure_current(at)` asks the broker for the registry stream's newest sequence
(one direct get, answered from the server's memory) and reloads from the registry
only if a change was stored, at or before `at`, that this directory has not applied.
Concurrent callers share one such look-up: it covers every message delivered before
it was sent. Besides, the directory follows the registry's events as they are
published and reloads at once, so the look-up rarely finds it behind.

So the registry service itself is needed only to learn a change: while it is down or
restarting, messages are checked as before against what the directory holds, as long
as the registry stream (read from the broker, not the registry) shows nothing newer
than the message. A message stored at or after a change the directory has not yet
applied waits for the registry (MeshError): it is never judged by the older state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.cards import AgentCard
from contracts.codec import decode
from contracts.delegation import DelegationRecord
from contracts.errors import ContractError
from contracts.registry_api import PrincipalKeys
from mesh._broker.direct_get import first_stored_at, last_sequence
from mesh._broker.topology import Topology
from mesh._trust.registry_client import RegistryClient
from mesh.errors import MeshError, SignatureError

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
        self._delegations: dict[str, DelegationRecord] = {}
        self._subscription: Subscription | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._registry: RegistryClient | None = None
        self._nc: Client | None = None
        self._registry_stream = ""
        self._registry_subjects = ""
        self._reload_lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        self.loaded = asyncio.Event()
        # The registry stream sequence the loaded snapshot reflects.
        self.registry_sequence = 0
        # Every registry event stored before this broker time is applied.
        self._confirmed: datetime | None = None
        self._wanted: datetime | None = None

    def load(self, principals: list[PrincipalKeys], registry_sequence: int = 0) -> None:
        keys = {}
        for principal in principals:
            for key in principal.key_history:
                keys[key.public_key] = _KeyPeriod(
                    principal.agent_id, key.valid_from, key.valid_until
                )
        self._keys = keys
        self._principals = {p.agent_id: p for p in principals}
        self._delegations = {
            record.delegation.delegation_id: record
            for principal in principals
            for record in principal.delegations
        }
        self.registry_sequence = registry_sequence
        self.loaded.set()

    def card_at(self, actor: str, at: datetime) -> AgentCard | None:
        """The card `actor` held at `at`, if any was in force."""
        principal = self._principals.get(actor)
        if principal is None:
            return None
        return next((p.card for p in principal.cards if p.covers(at)), None)

    def in_good_standing(self, actor: str, at: datetime) -> bool:
        """Was `actor` a principal in force at `at`: a card in force, neither revoked nor
        suspended then?"""
        principal = self._principals.get(actor)
        if principal is None or self.card_at(actor, at) is None:
            return False
        if principal.status == "revoked" and at >= principal.status_changed_at:
            return False
        return not any(
            at >= s.start and (s.end is None or at < s.end) for s in principal.suspensions
        )

    def delegation(self, delegation_id: str) -> DelegationRecord | None:
        """A delegation as the registry's history holds it (revoked ones too)."""
        return self._delegations.get(delegation_id)

    def authoritative(self, actor: str, fact: str, at: datetime) -> bool:
        """Did a card in force at `at` make `actor` the authority for `fact`?"""
        card = self.card_at(actor, at)
        return card is not None and fact in card.facts

    def authorities(self, fact: str, at: datetime) -> list[str]:
        """Who held a card naming them the authority for `fact` at `at`."""
        return sorted(
            agent_id for agent_id in self._principals if self.authoritative(agent_id, fact, at)
        )

    def check(
        self,
        signer: str,
        actor: str,
        at: datetime,
        subject: str = "",
        event_type: str | None = None,
    ) -> None:
        """Raise SignatureError unless `signer` could sign for `actor` at time `at` (and,
        given `event_type`, the card `actor` held then let it produce that type)."""
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
        if event_type is None:
            return
        card = self.card_at(actor, at)
        if card is None:
            raise SignatureError(subject, f"no card of {actor} was in force at {at.isoformat()}")
        if event_type not in card.produces:
            raise SignatureError(
                subject,
                f"{actor}'s card in force at {at.isoformat()} (version {card.version}) does "
                f"not produce {event_type}",
            )

    # ------------------------------------------------------------------ keeping current

    async def ensure_current(self, at: datetime) -> None:
        """Return once every registry change stored at or before broker time `at` is
        applied here. Raises MeshError if that cannot be established: a check against a
        directory that may be stale would not be a check."""
        if self._nc is None:
            return  # a fixed directory (an auditor's, a test's): nothing to follow
        if self._confirmed is not None and at <= self._confirmed:
            return
        self._wanted = at if self._wanted is None else max(self._wanted, at)
        async with self._sync_lock:
            if self._confirmed is not None and at <= self._confirmed:
                return
            # Every caller waiting now holds a message the broker stored before this
            # look-up is sent, so the look-up covers all of them.
            covering = self._wanted
            newest = await self._newest_registry_sequence()
            if newest > self.registry_sequence and covering >= await self._next_change_at():
                await self._reload_until(newest)
            if self._confirmed is None or covering > self._confirmed:
                self._confirmed = covering

    async def _next_change_at(self) -> datetime:
        """When the first registry event this directory has not applied was stored
        (one direct get): a message stored before it is judged right without it."""
        assert self._nc is not None
        return await first_stored_at(
            self._nc,
            self._registry_stream,
            self._registry_subjects,
            self.registry_sequence + 1,
            what=f"read registry event #{self.registry_sequence + 1}",
        )

    async def _newest_registry_sequence(self) -> int:
        assert self._nc is not None
        # 0 while there is no registry event at all yet
        return await last_sequence(
            self._nc,
            self._registry_stream,
            self._registry_subjects,
            what="read the registry stream's newest sequence",
        )

    async def _reload_until(self, sequence: int, patience: float = 10.0) -> None:
        """Reload until the registry has applied its history up to `sequence` (it
        answers between storing an event and applying it)."""
        deadline = time.monotonic() + patience
        while True:
            await self._reload()
            if self.registry_sequence >= sequence:
                return
            if time.monotonic() > deadline:
                raise MeshError(
                    f"the registry has not applied its history up to #{sequence} "
                    f"(it answers as of #{self.registry_sequence})"
                )
            await asyncio.sleep(0.02)

    async def _reload(self) -> None:
        assert self._registry is not None
        async with self._reload_lock:
            reply = await self._registry.keys_reply()
            if reply.registry_sequence >= self.registry_sequence or not self.loaded.is_set():
                self.load(reply.keys, reply.registry_sequence)

    async def follow(
        self,
        nc: Client,
        topology: Topology,
        registry: RegistryClient | None = None,
        refresh_every: float = 30.0,
    ) -> None:
        """Load a snapshot now, and a new one whenever the registry's history moves."""
        subjects = topology.subjects
        changed = asyncio.Event()

        async def reload() -> None:
            while changed.is_set():
                changed.clear()
                try:
                    newest = await self._newest_registry_sequence()
                    if newest > self.registry_sequence:
                        await self._reload_until(newest)
                except MeshError as exc:
                    log.warning("could not refresh the key directory (%s); keeping the last", exc)

        def poke() -> None:
            changed.set()
            if self._refresh is None or self._refresh.done():
                self._refresh = asyncio.create_task(reload())

        async def on_registry_event(msg: Msg) -> None:
            try:
                decode(msg.data)
            except ContractError:
                log.warning("unreadable registry event on %s; reloading anyway", msg.subject)
            poke()

        async def watchdog() -> None:
            # Registry events travel over core NATS: one sent while we were
            # disconnected is gone. Look again after every reconnect, and now and then.
            reconnects = nc.stats.get("reconnects", 0)
            last = time.monotonic()
            while True:
                await asyncio.sleep(1.0)
                now_reconnects = nc.stats.get("reconnects", 0)
                if now_reconnects != reconnects or time.monotonic() - last > refresh_every:
                    reconnects, last = now_reconnects, time.monotonic()
                    poke()

        self._nc = nc
        self._registry = registry or RegistryClient(nc, subjects)
        self._registry_stream = topology.registry_stream
        self._registry_subjects = subjects.family_all("registry")
        try:
            self._subscription = await nc.subscribe(
                subjects.family_all("registry"), cb=on_registry_event
            )
        except nats.errors.Error as exc:
            raise MeshError(f"cannot follow the registry: {exc!r}") from exc
        try:
            await self._reload()
        except BaseException:
            # A caller may try again (until the registry answers): leave nothing behind.
            subscription, self._subscription = self._subscription, None
            with contextlib.suppress(nats.errors.Error):
                await subscription.unsubscribe()
            raise
        self._watchdog = asyncio.create_task(watchdog())

    async def close(self) -> None:
        for task in (self._watchdog, self._refresh):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._subscription is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._subscription.unsubscribe()
