"""An agent's durable consumers: declared from its card, provisioned by whoever holds
the right to create consumers.

An agent consumes case events through one pinned consumer per partition of the work
stream (`<agent>_p<k>`), so that its replicas share the partitions and each partition
(and each case in it) is handled by one replica at a time; and dead letters sent back to
it through one replay durable.

In an open mesh the agent's runtime provisions its own durables. Under registry
enforcement only the registry may create consumers (a consumer config is free-form:
an agent allowed to create one could filter on anything or push into another
principal's inbox), so it provisions them from the card on activation, and the agent
only binds and checks that they match its card.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from contracts.cards import AgentCard
from contracts.subjects import check_token
from mesh._broker.connection import client_of
from mesh._broker.pinned import (
    PinnedConsumer,
    consumer_info,
    delete_consumer,
    ensure_pinned_consumer,
)
from mesh._broker.provisioning import ProvisionReport, ensure_consumer, ensure_stream
from mesh._broker.topology import Topology
from mesh._runtime.resilience import retry_transient
from mesh.errors import BrokerError, ConfigurationError
from mesh.settings import MeshSettings


def _durable(
    name: str, description: str, filters: list[str], settings: MeshSettings
) -> ConsumerConfig:
    if not filters:
        # A consumer without a filter reads the whole stream: never create one.
        raise ConfigurationError(f"durable {name} would filter nothing, so read everything")
    return ConsumerConfig(
        durable_name=name,
        description=description,
        filter_subjects=filters,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait,
        # Unlimited on the server: the dispatcher counts deliveries and dead-letters at
        # MESH_MAX_DELIVER, so a last delivery that crashes the agent is not lost.
        max_deliver=-1,
        # No `backoff`: the retry schedule is the dispatcher's NAK delay. With `backoff`
        # set, nats-server 2.15 lets it override NAK delays on later deliveries.
        # Room for the window plus the messages held behind a case's retry.
        max_ack_pending=max(settings.fetch_batch * 4, 256),
    )


def partition_durables(
    card: AgentCard, topology: Topology, settings: MeshSettings
) -> list[PinnedConsumer]:
    """One pinned consumer per partition of the work stream, over the case event types
    the card consumes (none for a card that consumes nothing)."""
    if not card.consumes:
        return []
    return [
        PinnedConsumer(
            topology.work_stream,
            _durable(
                name,
                f"agent {card.agent_id}, partition {k} of {topology.partitions}",
                [topology.subjects.work_of_type(k, t) for t in card.consumes],
                settings,
            ),
            settings.pin_timeout,
        )
        for k, name in enumerate(topology.partition_durables(card.agent_id))
    ]


def replay_durable(card: AgentCard, topology: Topology, settings: MeshSettings) -> ConsumerConfig:
    """Dead letters sent back to this agent (and to no one else) after a fix."""
    agent_id = check_token(card.agent_id, "agent id")
    return _durable(
        f"{agent_id}_replay",
        f"replayed dead letters for agent {agent_id}",
        [topology.subjects.replay(topology.cases_stream, agent_id)],
        settings,
    )


def timer_durable(card: AgentCard, topology: Topology, settings: MeshSettings) -> ConsumerConfig:
    """The firings of this agent's own timers (see mesh._runtime.timers)."""
    return _durable(
        topology.timer_durable(card.agent_id),
        f"timer firings for agent {card.agent_id}",
        [topology.subjects.timers_of("due", card.agent_id)],
        settings,
    )


def agent_durables(
    card: AgentCard, topology: Topology, settings: MeshSettings
) -> list[tuple[str, ConsumerConfig]]:
    """(stream, config) of the agent's plain durables: its replay durable and, if it
    sets timers, its timer durable (none for a card that consumes nothing: a human
    approver, a producer-only agent)."""
    if not card.consumes:
        return []
    durables = [(topology.dead_letter_stream, replay_durable(card, topology, settings))]
    if card.sets_timers:
        durables.append(
            (topology.timers_stream(card.agent_id), timer_durable(card, topology, settings))
        )
    return durables


async def provision_agent_durables(
    js: JetStreamContext, card: AgentCard, topology: Topology, settings: MeshSettings
) -> list[ProvisionReport]:
    """Create or bring in line the agent's durables (the agent's or registry's job); a
    card that no longer consumes anything loses the durables it had."""
    nc = client_of(js)
    agent_id = check_token(card.agent_id, "agent id")
    if not card.consumes:
        for name in topology.partition_durables(agent_id):
            await delete_consumer(nc, topology.work_stream, name)
        try:
            await js.delete_consumer(topology.dead_letter_stream, f"{agent_id}_replay")
        except nats.js.errors.NotFoundError:
            pass
        except nats.errors.Error as exc:
            raise BrokerError(f"remove durable {agent_id}_replay", repr(exc)) from exc
        return []
    reports = [
        await ensure_pinned_consumer(nc, consumer)
        for consumer in partition_durables(card, topology, settings)
    ]
    if card.sets_timers:
        reports.append(await ensure_stream(js, topology.timers_stream_config(agent_id)))
    for stream, config in agent_durables(card, topology, settings):
        reports.append(await ensure_consumer(js, stream, config, update=True))
    return reports


@dataclass(frozen=True)
class LiveDurables:
    configs: dict[str, ConsumerConfig]  # by durable name
    pin_timeout: float  # the shortest the server applies to the partition consumers


async def check_agent_durables(
    js: JetStreamContext, card: AgentCard, topology: Topology, settings: MeshSettings
) -> LiveDurables:
    """Under registry enforcement: the durables exist, filter what the card says and
    (the partition consumers) pin one client at a time. Returns what the server applies:
    the consumer's timeouts are the registry's, not this process's preference."""
    live: dict[str, ConsumerConfig] = {}
    pin_timeout = settings.pin_timeout
    declared_all = [
        (consumer.stream, consumer.config, consumer)
        for consumer in partition_durables(card, topology, settings)
    ] + [(stream, config, None) for stream, config in agent_durables(card, topology, settings)]
    nc = client_of(js)
    for stream, declared, pinned in declared_all:
        name = declared.durable_name or ""
        # Patient: a replica starting while the cluster elects leaders (a member just
        # died) is answered late, not refused; giving up would only restart it into
        # the same wait.
        raw = await retry_transient(
            functools.partial(consumer_info, nc, stream, name),
            attempts=8,
            maximum=4.0,
            deadline=45.0,
        )
        if raw is None:
            raise ConfigurationError(
                f"durable {stream}/{name} does not exist: the registry provisions it when "
                f"agent {card.agent_id} is activated (with {topology.partitions} partitions: "
                "do the registry and this agent agree on MESH_PARTITIONS?)"
            )
        config = ConsumerConfig.from_response(dict(raw.get("config", {})))
        filters = sorted(config.filter_subjects or [config.filter_subject or ""])
        if filters != sorted(declared.filter_subjects or []):
            raise ConfigurationError(
                f"durable {stream}/{name} filters {filters}, but the card consumes "
                f"{card.consumes}: register the current card"
            )
        problems = pinned.pin_problems(raw.get("config", {})) if pinned is not None else []
        if any(p.startswith(("priority_policy", "priority_groups")) for p in problems):
            raise ConfigurationError(
                f"durable {stream}/{name} does not pin one client at a time: " + "; ".join(problems)
            )
        if pinned is not None:
            timeout = raw.get("config", {}).get("priority_timeout") or 0
            pin_timeout = min(pin_timeout, timeout / 1e9) if timeout else pin_timeout
        live[name] = config
    return LiveDurables(live, pin_timeout)
