"""Running an agent: provision what it needs, consume, dispatch, stop cleanly.

What its handlers may call while it runs (publish, read, authorize, breakers) is
`mesh._runtime.agent_services.AgentServices`, which the runner extends.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from contracts.subjects import key_of
from mesh._broker.provisioning import ProvisionReport
from mesh._broker.stream_provisioning import provision_streams
from mesh._broker.topology import Topology
from mesh._runtime.agent_services import AgentServices
from mesh._runtime.consumer import (
    MessageSource,
    OrderingKey,
    Process,
    PullConsumerLoop,
    SubscriptionSource,
    case_ordering_key,
)
from mesh._runtime.dead_letters import ORIGINAL_SUBJECT, DeadLetterSink
from mesh._runtime.dispatch import EventDispatcher
from mesh._runtime.durables import (
    check_agent_durables,
    provision_agent_durables,
    replay_durable,
)
from mesh._runtime.partitions import PinnedPartitions, preferred_partitions
from mesh._runtime.timers import TimerFirings, sweep
from mesh._sdk.agent import Agent
from mesh._trust.identity import Identity
from mesh._trust.key_directory import KeyDirectory
from mesh._trust.registry_client import RegistryClient
from mesh.errors import MeshError
from mesh.settings import MeshSettings

log = logging.getLogger(__name__)


def replay_consumer_config(
    agent: Agent, topology: Topology, settings: MeshSettings
) -> ConsumerConfig:
    return replay_durable(agent.card, topology, settings)


class AgentRunner(AgentServices):
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
        super().__init__(
            agent,
            nc=nc,
            identity=identity,
            settings=settings,
            topology=topology,
            key_directory=key_directory,
            read_through_reader=read_through_reader,
        )
        self.provision = provision
        self.registry = registry  # heartbeats go here when set
        self.dead_letters = DeadLetterSink(
            self.js,
            self.topology,
            settings.request_timeout,
            identity=identity,
            consumer=agent.card.agent_id,
        )
        self.reports: list[ProvisionReport] = []
        self._loop: PullConsumerLoop | None = None
        self.partitions: PinnedPartitions | None = None
        self._replay_loop: PullConsumerLoop | None = None
        self._timer_loop: PullConsumerLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        ack_wait, pin_timeout = self.settings.ack_wait, self.settings.pin_timeout
        if self.provision:
            self.reports += await provision_streams(self.js, self.topology)
            self.reports += await provision_agent_durables(
                self.js, self.agent.card, self.topology, self.settings
            )
        else:
            live = await check_agent_durables(
                self.js, self.agent.card, self.topology, self.settings
            )
            # Keep-alives and pins follow the server's timeouts, not our preference.
            ack_wait = min(c.ack_wait or ack_wait for c in live.configs.values())
            pin_timeout = live.pin_timeout
        dispatcher = EventDispatcher(
            self.agent,
            services=self,
            dead_letters=self.dead_letters,
            subjects=self.topology.subjects,
            cases_stream=self.topology.cases_stream,
            max_deliver=self.settings.max_deliver,
            retry_base_delay=self.settings.retry_base_delay,
            retry_max_delay=self.settings.retry_max_delay,
            handler_timeout=self.settings.handler_timeout,
            verify_signatures=self.settings.verify_signatures,
            key_directory=self.key_directory,
        )
        agent_id = self.agent.card.agent_id
        self.partitions = PinnedPartitions(
            self.nc,
            self.topology.work_stream,
            self.topology.partition_durables(agent_id),
            window=self.settings.fetch_batch,
            fetch_wait=self.settings.fetch_wait,
            pin_timeout=pin_timeout,
            ack_wait=ack_wait,
            preferred=preferred_partitions(self.settings.replica, self.topology.partitions),
            request_timeout=self.settings.request_timeout,
        )
        await self.partitions.start()
        self._loop = self._consume("work", self.partitions, dispatcher, ack_wait)
        replays = replay_consumer_config(self.agent, self.topology, self.settings)
        assert replays.durable_name is not None
        subscription = await self.js.pull_subscribe_bind(
            replays.durable_name, stream=self.topology.dead_letter_stream
        )
        self._replay_loop = self._consume(
            replays.durable_name,
            SubscriptionSource(
                subscription, self.topology.dead_letter_stream, replays.durable_name
            ),
            dispatcher,
            ack_wait,
            _original_case,
        )
        if self.agent.card.sets_timers:
            await self._consume_timers(ack_wait)
        if self.registry is not None:
            self._tasks.append(asyncio.create_task(self._heartbeats(), name="heartbeats"))
        log.info(
            "agent %s consuming %s as %s",
            self.agent.card.agent_id,
            self.agent.card.consumes,
            self.identity.public_key,
        )

    async def _consume_timers(self, ack_wait: float) -> None:
        """Firings of this agent's timers, from its one durable: whichever replica is
        free takes one (they need no order: each becomes an event in its case's log)."""
        durable = self.topology.timer_durable(self.agent.card.agent_id)
        stream = self.topology.timers_stream(self.agent.card.agent_id)
        subscription = await self.js.pull_subscribe_bind(durable, stream=stream)
        firings = TimerFirings(
            self,
            self.topology.subjects,
            self.agent.card.agent_id,
            self.identity.id_key,
            retry_base_delay=self.settings.retry_base_delay,
            retry_max_delay=self.settings.retry_max_delay,
        )
        self._timer_loop = self._consume(
            durable,
            SubscriptionSource(subscription, stream, durable),
            firings,
            ack_wait,
            lambda msg: msg.subject,
        )
        self._tasks.append(asyncio.create_task(self._sweep_timers(stream), name="timer-sweep"))

    async def _sweep_timers(self, stream: str) -> None:
        while True:
            try:
                await sweep(self.timers, self, self.nc, stream, self.settings.request_timeout)
            except MeshError as exc:
                log.warning(
                    "timer sweep failed (%s); next in %ss", exc, self.settings.timer_sweep_every
                )
            await asyncio.sleep(self.settings.timer_sweep_every)

    async def _heartbeats(self) -> None:
        assert self.registry is not None
        while True:
            try:
                await self.registry.heartbeat(self.agent.card.agent_id, self.identity)
            except MeshError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_interval)

    def _consume(
        self,
        name: str,
        source: MessageSource,
        dispatcher: Process,
        ack_wait: float,
        ordering: OrderingKey = case_ordering_key,
    ) -> PullConsumerLoop:
        loop = PullConsumerLoop(
            source,
            dispatcher,
            window=self.settings.fetch_batch,
            fetch_wait=self.settings.fetch_wait,
            ack_wait=ack_wait,
            ordering_key=ordering,
        )
        self._tasks.append(asyncio.create_task(loop.run(), name=f"consume:{name}"))
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
        for loop in (self._loop, self._replay_loop, self._timer_loop):
            if loop is not None:
                loop.stop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            if task.get_name() in ("heartbeats", "timer-sweep"):
                task.cancel()
        if not tasks:
            return
        done, pending = await asyncio.wait(tasks, timeout=self.settings.handler_timeout + 5)
        for task in pending:
            task.cancel()
        if self.partitions is not None:
            await self.partitions.stop()
        for task in done:
            if task.cancelled():
                continue
            if task.exception() is not None:
                log.error("consumer loop %s had failed", task.get_name(), exc_info=task.exception())


def _original_case(msg: Msg) -> str:
    """Replayed dead letters are ordered by the case of their original subject."""
    original = (msg.headers or {}).get(ORIGINAL_SUBJECT, msg.subject)
    return key_of(original) or original
