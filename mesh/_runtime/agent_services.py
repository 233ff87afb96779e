"""What the runtime lends an agent's handlers: the mesh as a handler sees it.

A handler publishes, reads its case's verified history, proves an approval, learns
the case facts from their authorities, resolves a replayed dead letter and shares
circuit breakers (the `Services` protocol in `mesh._sdk.agent`). None of it depends
on how the agent is run, so it lives apart from the runner's lifecycle
(`mesh._runtime.runtime`), which extends it with provisioning and consuming.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.authorship import APPROVAL_CHAIN_TYPES
from contracts.envelope import Event
from contracts.events.actions import FactSource
from contracts.events.operations import CircuitStateChanged, CircuitStateChangedPayload
from contracts.events.timers import TimerCancelled, TimerSet
from contracts.subjects import check_token
from mesh._broker.publisher import EventPublisher, Receipt
from mesh._broker.reading import read_case
from mesh._broker.stored_messages import RawMessage, StoredEvent, decoded
from mesh._broker.topology import Topology, topology_for
from mesh._runtime.replays import resolve_replay
from mesh._runtime.resilience import CircuitBreaker, retry_transient
from mesh._runtime.timers import TimerSchedules
from mesh._sdk.agent import Agent
from mesh._sdk.case_reader import CaseReader
from mesh._trust.authorization import Authorization, require_authorization, signed_actor
from mesh._trust.facts import Statement, authoritative_facts
from mesh._trust.identity import Identity
from mesh._trust.key_directory import KeyDirectory
from mesh.errors import BrokerError, ConfigurationError, SignatureError
from mesh.settings import MeshSettings

log = logging.getLogger(__name__)


class AgentServices:
    def __init__(
        self,
        agent: Agent,
        *,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        topology: Topology | None,
        key_directory: KeyDirectory | None,
        read_through_reader: bool,
    ) -> None:
        self.key_directory = key_directory
        self.agent = agent
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout)
        self.identity = identity
        self.settings = settings
        self.topology = topology or topology_for(settings)
        self.publisher = EventPublisher(
            self.js, identity, self.topology, timeout=settings.request_timeout, nc=nc
        )
        # Under the registry's enforcement an agent reads cases through the reader, which
        # hands out only what its card reads of the cases it works on.
        self.reader = (
            CaseReader(nc, self.topology, agent.card.agent_id, timeout=settings.request_timeout)
            if read_through_reader
            else None
        )
        self._breakers: dict[str, CircuitBreaker] = {}
        self.timers = TimerSchedules(self.js, self.topology.subjects, agent.card.agent_id)

    @property
    def id_key(self) -> bytes:
        return self.identity.id_key

    @property
    def clock_rate(self) -> float:
        return self.settings.clock_rate

    async def set_timer(self, event: TimerSet) -> Receipt:
        # The schedule first: a crash before the record leaves a firing the log does not
        # know (dropped when it comes), never a record without its schedule — the
        # handler runs again on redelivery and writes both again.
        await self.timers.schedule(event)
        return await self.emit(event)

    async def cancel_timer(self, event: TimerCancelled) -> Receipt:
        await self.timers.withdraw(event)
        return await self.emit(event)

    async def emit(self, event: Event, *, expected_case_sequence: int | None = None) -> Receipt:
        def publish() -> Awaitable[Receipt]:
            return self.publisher.publish(event, expected_case_sequence=expected_case_sequence)

        try:
            return await publish()  # the common case, without a retry loop's set-up cost
        except BrokerError:
            # Same event id on every attempt, so a retry of a stored publish is a no-op.
            # A conflict is not retried here: the handler must re-read and decide again.
            return await retry_transient(publish, retry_on=lambda e: isinstance(e, BrokerError))

    async def _read(self, case_id: str, at_least: int = 0) -> list[StoredEvent]:
        """The case as stored (through the reader under enforcement), not yet checked;
        reaching sequence `at_least` (see `read_direct`)."""
        if self.reader is not None:
            return decoded(await self.reader.history(case_id, at_least))
        return await read_case(self.js, self.topology, case_id, at_least=at_least)

    async def _verified(self, events: list[StoredEvent]) -> list[StoredEvent]:
        """With a key directory, only what verifies (signature, key, and the author's
        card producing the type, when stored): a handler never builds on an event a
        peer forged."""
        if self.key_directory is None or not events:
            return events
        await self.key_directory.ensure_current(events[-1].stored_at)
        verified = []
        for stored in events:
            try:
                signed_actor(stored, self.key_directory)
            except SignatureError as exc:
                log.warning(
                    "case %s: #%d left out: %s", stored.event.case_id, stored.sequence, exc.reason
                )
                continue
            verified.append(stored)
        return verified

    async def history(self, case_id: str, at_least: int = 0) -> list[StoredEvent]:
        return _first_copies(await self._verified(await self._read(case_id, at_least)))

    async def authorize(self, case_id: str, request_id: str) -> Authorization:
        if self.key_directory is None:
            raise ConfigurationError(
                f"{self.agent.card.agent_id} executes actions: it must check signers "
                "(MESH_CHECK_SIGNERS=1) to prove an approval"
            )
        card = self.agent.card
        unread = [t for t in APPROVAL_CHAIN_TYPES if t not in card.readable]
        if unread:
            # The reader hands an agent only what its card reads: proving an approval on
            # part of the chain (no escalation, say) would check the wrong role.
            raise ConfigurationError(
                f"{card.agent_id} executes actions, but its card does not read "
                f"{', '.join(unread)}: it cannot prove an approval"
            )
        stored = await self._read(case_id)
        # Every event of the chain is verified there, and the copies under one id counted.
        proof = await require_authorization(stored, self.key_directory, request_id=request_id)
        return dataclasses.replace(proof, history=await self._verified(stored))

    async def facts(
        self, case_id: str, history: list[StoredEvent] | None = None
    ) -> dict[str, FactSource]:
        if self.key_directory is None:
            raise ConfigurationError(
                f"{self.agent.card.agent_id} reads case facts: it must check signers "
                "(MESH_CHECK_SIGNERS=1) to know who is the authority for what"
            )
        events = history if history is not None else await self.history(case_id)
        statements = [
            statement
            for stored in events  # verified events only
            if (statement := Statement.of(stored.sequence, stored.stored_at, stored.event))
        ]
        return authoritative_facts(statements, self.key_directory.authoritative)

    async def replayed(self, dead_letter_sequence: int) -> RawMessage:
        if self.reader is not None:
            return await self.reader.replayed(dead_letter_sequence)
        return await resolve_replay(
            self.nc,
            self.topology,
            self.agent.card.agent_id,
            dead_letter_sequence,
            self.key_directory,
        )

    def breaker(self, name: str) -> CircuitBreaker:
        """The agent's breaker for dependency `name`; its state changes are published
        as ops events. Thresholds come from settings."""
        if name not in self._breakers:
            self._breakers[name] = self._new_breaker(name)
        return self._breakers[name]

    def _new_breaker(self, name: str) -> CircuitBreaker:

        async def publish_change(change: CircuitStateChangedPayload) -> None:
            await self.emit(CircuitStateChanged(actor=self.agent.card.agent_id, payload=change))

        return CircuitBreaker(
            check_token(name, "breaker name"),
            failure_threshold=self.settings.breaker_failure_threshold,
            reset_timeout=self.settings.breaker_reset_timeout,
            on_change=publish_change,
        )


def _first_copies(events: list[StoredEvent]) -> list[StoredEvent]:
    """Each event id once, as first stored: a later copy (a replay under a fresh message
    id) is not a second event, and two events under one id prove nothing new."""
    seen: set[str] = set()
    first = []
    for stored in events:
        if stored.event.event_id in seen:
            log.warning(
                "case %s: #%d repeats event %s; left out",
                stored.event.case_id,
                stored.sequence,
                stored.event.event_id,
            )
            continue
        seen.add(stored.event.event_id)
        first.append(stored)
    return first
