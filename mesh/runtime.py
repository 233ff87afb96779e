"""Running an agent: provision what it needs, consume, dispatch, stop cleanly."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from contracts.envelope import Event
from contracts.events.operations import CircuitStateChanged, CircuitStateChangedPayload
from contracts.subjects import check_token
from mesh.agent import Agent
from mesh.consumer import PullConsumerLoop
from mesh.dead_letters import DeadLetterSink
from mesh.dispatch import EventDispatcher
from mesh.errors import BrokerError
from mesh.identity import Identity
from mesh.provisioning import ProvisionReport, ensure_consumer, ensure_stream
from mesh.publisher import EventPublisher, Receipt
from mesh.resilience import CircuitBreaker, retry_transient
from mesh.settings import MeshSettings
from mesh.topology import Topology

log = logging.getLogger(__name__)


def consumer_config(agent: Agent, topology: Topology, settings: MeshSettings) -> ConsumerConfig:
    """One durable consumer per agent over the case events it consumes. Agents scale
    out by running more processes on the same durable."""
    durable = check_token(agent.card.agent_id, "agent id")
    return ConsumerConfig(
        durable_name=durable,
        description=f"agent {agent.card.agent_id} v{agent.card.version}",
        filter_subjects=[topology.subjects.case_events_of_type(t) for t in agent.card.consumes],
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        # No consumer-level `backoff`: the retry schedule is the NAK delay the dispatcher
        # computes (exponential, jittered). With `backoff` set, nats-server 2.15 lets it
        # override NAK delays on later deliveries; a crashed agent's message still comes
        # back after ack_wait.
        max_ack_pending=max(settings.fetch_batch * 4, 256),
    )


class AgentRunner:
    def __init__(
        self,
        agent: Agent,
        *,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        topology: Topology | None = None,
    ) -> None:
        agent.check()
        self.agent = agent
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=settings.request_timeout)
        self.identity = identity
        self.settings = settings
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.publisher = EventPublisher(
            self.js, identity, self.topology, timeout=settings.request_timeout
        )
        self.dead_letters = DeadLetterSink(self.js, self.topology, settings.request_timeout)
        self.reports: list[ProvisionReport] = []
        self._loop: PullConsumerLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._breakers: dict[str, CircuitBreaker] = {}

    async def emit(self, event: Event, *, expected_case_sequence: int | None = None) -> Receipt:
        # A conflict is not retried here: the handler must re-read and decide again.
        return await retry_transient(
            lambda: self.publisher.publish(event, expected_case_sequence=expected_case_sequence),
            retry_on=lambda exc: isinstance(exc, BrokerError),
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
        for stream in self.topology.streams():
            self.reports.append(await ensure_stream(self.js, stream))
        config = consumer_config(self.agent, self.topology, self.settings)
        self.reports.append(await ensure_consumer(self.js, self.topology.cases_stream, config))
        assert config.durable_name is not None
        subscription = await self.js.pull_subscribe_bind(
            config.durable_name, stream=self.topology.cases_stream
        )
        dispatcher = EventDispatcher(
            self.agent,
            services=self,
            dead_letters=self.dead_letters,
            max_deliver=self.settings.max_deliver,
            retry_base_delay=self.settings.retry_base_delay,
            retry_max_delay=self.settings.retry_max_delay,
            verify_signatures=self.settings.verify_signatures,
        )
        self._loop = PullConsumerLoop(
            subscription,
            dispatcher,
            batch=self.settings.fetch_batch,
            fetch_wait=self.settings.fetch_wait,
            ack_wait=self.settings.ack_wait,
        )
        self._task = asyncio.create_task(self._loop.run(), name=f"agent:{config.durable_name}")
        log.info(
            "agent %s consuming %s as %s",
            self.agent.card.agent_id,
            self.agent.card.consumes,
            self.identity.public_key,
        )

    @property
    def loop(self) -> PullConsumerLoop | None:
        return self._loop

    @property
    def processed(self) -> int:
        return self._loop.processed if self._loop else 0

    async def wait(self) -> None:
        """Return when the loop ends (it only ends by stop(), or by raising)."""
        if self._task is not None:
            await self._task

    async def stop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, self.settings.fetch_wait + 30)
            except TimeoutError:
                self._task.cancel()
        self._task = None
