"""Running an agent: provision what it needs, consume, dispatch, stop cleanly."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig
from nats.js.client import JetStreamContext

from contracts.envelope import Event
from contracts.events.actions import FactSource
from contracts.events.operations import CircuitStateChanged, CircuitStateChangedPayload
from contracts.subjects import check_token, key_of
from mesh._broker.provisioning import ProvisionReport, ensure_stream
from mesh._broker.publisher import EventPublisher, Receipt
from mesh._broker.reading import RawMessage, StoredEvent, decoded, read_case
from mesh._broker.topology import Topology
from mesh._runtime.consumer import OrderingKey, PullConsumerLoop, case_ordering_key
from mesh._runtime.dead_letters import ORIGINAL_SUBJECT, DeadLetterSink
from mesh._runtime.dispatch import EventDispatcher
from mesh._runtime.durables import (
    case_durable,
    check_agent_durables,
    provision_agent_durables,
    replay_durable,
)
from mesh._runtime.replays import resolve_replay
from mesh._runtime.resilience import CircuitBreaker, retry_transient
from mesh._sdk.agent import Agent
from mesh._sdk.case_reader import CaseReader
from mesh._trust.authorization import Authorization, require_authorization, signed_actor
from mesh._trust.facts import Statement, authoritative_facts
from mesh._trust.identity import Identity
from mesh._trust.key_directory import KeyDirectory
from mesh._trust.registry_client import RegistryClient
from mesh.errors import BrokerError, ConfigurationError, MeshError, SignatureError
from mesh.settings import MeshSettings

log = logging.getLogger(__name__)


def consumer_config(agent: Agent, topology: Topology, settings: MeshSettings) -> ConsumerConfig:
    return case_durable(agent.card, topology, settings)


def replay_consumer_config(
    agent: Agent, topology: Topology, settings: MeshSettings
) -> ConsumerConfig:
    return replay_durable(agent.card, topology, settings)


class AgentRunner:
    def __init__(
        self,
        agent: Agent,
        *,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        topology: Topology | None = None,
        key_directory: KeyDirectory | None = None,
        registry: RegistryClient | None = None,
        provision: bool = True,
        read_through_reader: bool = False,
    ) -> None:
        """`provision=False` under registry enforcement: the registry owns streams and
        durables; the runner binds to them and checks they match the card.
        `read_through_reader`: read cases through the case reader (an agent under
        enforcement may not read the stream itself)."""
        agent.check()
        self.provision = provision
        self.key_directory = key_directory
        self.registry = registry  # heartbeats go here when set
        self.agent = agent
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout)
        self.identity = identity
        self.settings = settings
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.publisher = EventPublisher(
            self.js, identity, self.topology, timeout=settings.request_timeout, nc=nc
        )
        self.dead_letters = DeadLetterSink(
            self.js,
            self.topology,
            settings.request_timeout,
            identity=identity,
            consumer=agent.card.agent_id,
        )
        # Under the registry's enforcement an agent reads cases through the reader, which
        # hands out only what its card reads of the cases it works on.
        self.reader = (
            CaseReader(nc, self.topology, agent.card.agent_id, timeout=settings.request_timeout)
            if read_through_reader
            else None
        )
        self.reports: list[ProvisionReport] = []
        self._loop: PullConsumerLoop | None = None
        self._replay_loop: PullConsumerLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._breakers: dict[str, CircuitBreaker] = {}

    @property
    def id_key(self) -> bytes:
        return self.identity.id_key

    async def emit(self, event: Event, *, expected_case_sequence: int | None = None) -> Receipt:
        def publish() -> Awaitable[Receipt]:
            return self.publisher.publish(event, expected_case_sequence=expected_case_sequence)

        try:
            return await publish()  # the common case, without a retry loop's set-up cost
        except BrokerError:
            # Same event id on every attempt, so a retry of a stored publish is a no-op.
            # A conflict is not retried here: the handler must re-read and decide again.
            return await retry_transient(publish, retry_on=lambda e: isinstance(e, BrokerError))

    async def _read(self, case_id: str) -> list[StoredEvent]:
        """The case as stored (through the reader under enforcement), not yet checked."""
        if self.reader is not None:
            return decoded(await self.reader.history(case_id))
        return await read_case(self.js, self.topology, case_id)

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

    async def history(self, case_id: str) -> list[StoredEvent]:
        return await self._verified(await self._read(case_id))

    async def authorize(self, case_id: str, request_id: str) -> Authorization:
        if self.key_directory is None:
            raise ConfigurationError(
                f"{self.agent.card.agent_id} executes actions: it must check signers "
                "(MESH_CHECK_SIGNERS=1) to prove an approval"
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

    async def start(self) -> None:
        ack_wait = self.settings.ack_wait
        if self.provision:
            for stream in self.topology.streams():
                self.reports.append(await ensure_stream(self.js, stream))
            self.reports += await provision_agent_durables(
                self.js, self.agent.card, self.topology, self.settings
            )
        else:
            live = await check_agent_durables(self.js, self.agent.card, self.topology)
            # Keep-alives follow the server's ack_wait, not our preference.
            ack_wait = min(c.ack_wait or ack_wait for c in live.values())
        dispatcher = EventDispatcher(
            self.agent,
            services=self,
            dead_letters=self.dead_letters,
            subjects=self.topology.subjects,
            max_deliver=self.settings.max_deliver,
            retry_base_delay=self.settings.retry_base_delay,
            retry_max_delay=self.settings.retry_max_delay,
            handler_timeout=self.settings.handler_timeout,
            verify_signatures=self.settings.verify_signatures,
            key_directory=self.key_directory,
        )
        main = consumer_config(self.agent, self.topology, self.settings)
        replays = replay_consumer_config(self.agent, self.topology, self.settings)
        self._loop = await self._consume(self.topology.cases_stream, main, dispatcher, ack_wait)
        self._replay_loop = await self._consume(
            self.topology.dead_letter_stream, replays, dispatcher, ack_wait, _original_case
        )
        if self.registry is not None:
            self._tasks.append(asyncio.create_task(self._heartbeats(), name="heartbeats"))
        log.info(
            "agent %s consuming %s as %s",
            self.agent.card.agent_id,
            self.agent.card.consumes,
            self.identity.public_key,
        )

    async def _heartbeats(self) -> None:
        assert self.registry is not None
        while True:
            try:
                await self.registry.heartbeat(self.agent.card.agent_id, self.identity)
            except MeshError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _consume(
        self,
        stream: str,
        config: ConsumerConfig,
        dispatcher: EventDispatcher,
        ack_wait: float,
        ordering: OrderingKey = case_ordering_key,
    ) -> PullConsumerLoop:
        assert config.durable_name is not None
        subscription = await self.js.pull_subscribe_bind(config.durable_name, stream=stream)
        loop = PullConsumerLoop(
            subscription,
            dispatcher,
            window=self.settings.fetch_batch,
            fetch_wait=self.settings.fetch_wait,
            ack_wait=ack_wait,
            ordering_key=ordering,
        )
        self._tasks.append(asyncio.create_task(loop.run(), name=f"consume:{config.durable_name}"))
        return loop

    @property
    def loop(self) -> PullConsumerLoop | None:
        return self._loop

    @property
    def processed(self) -> int:
        return self._loop.processed if self._loop else 0

    async def wait(self) -> None:
        """Return when a consumer loop ends (only by stop(), or by raising)."""
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()

    async def stop(self) -> None:
        """Stop consuming; never raises, so every runner and connection still closes."""
        for loop in (self._loop, self._replay_loop):
            if loop is not None:
                loop.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task.get_name() == "heartbeats":
                task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self.settings.handler_timeout + 5)
        for task in pending:
            task.cancel()
        for task in done:
            if task.cancelled():
                continue
            if task.exception() is not None:
                log.error("consumer loop %s had failed", task.get_name(), exc_info=task.exception())


def _original_case(msg: Msg) -> str:
    """Replayed dead letters are ordered by the case of their original subject."""
    original = (msg.headers or {}).get(ORIGINAL_SUBJECT, msg.subject)
    return key_of(original) or original
