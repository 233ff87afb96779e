"""An agent's durable consumers: declared from its card, provisioned by whoever holds
the right to create consumers.

In an open mesh the agent's runtime provisions its own durables. Under registry
enforcement only the registry may create consumers (a consumer config is free-form:
an agent allowed to create one could filter on anything or push into another
principal's inbox), so it provisions them from the card on activation, and the agent
only binds and checks that they match its card.
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from contracts.cards import AgentCard
from contracts.subjects import check_token
from mesh._broker.provisioning import ProvisionReport, ensure_consumer
from mesh._broker.topology import Topology
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


def case_durable(card: AgentCard, topology: Topology, settings: MeshSettings) -> ConsumerConfig:
    """One durable per agent over the case events it consumes. Agents scale out by
    running more processes on the same durable."""
    return _durable(
        check_token(card.agent_id, "agent id"),
        f"agent {card.agent_id}",
        [topology.subjects.case_events_of_type(t) for t in card.consumes],
        settings,
    )


def replay_durable(card: AgentCard, topology: Topology, settings: MeshSettings) -> ConsumerConfig:
    """Dead letters sent back to this agent (and to no one else) after a fix."""
    agent_id = check_token(card.agent_id, "agent id")
    return _durable(
        f"{agent_id}_replay",
        f"replayed dead letters for agent {agent_id}",
        [topology.subjects.replay(topology.cases_stream, agent_id)],
        settings,
    )


def agent_durables(
    card: AgentCard, topology: Topology, settings: MeshSettings
) -> list[tuple[str, ConsumerConfig]]:
    """(stream, config) of every durable the agent consumes from: none for a card that
    consumes nothing (a human approver, a producer-only agent)."""
    if not card.consumes:
        return []
    return [
        (topology.cases_stream, case_durable(card, topology, settings)),
        (topology.dead_letter_stream, replay_durable(card, topology, settings)),
    ]


async def provision_agent_durables(
    js: JetStreamContext, card: AgentCard, topology: Topology, settings: MeshSettings
) -> list[ProvisionReport]:
    """Create or bring in line the agent's durables (the agent's or registry's job); a
    card that no longer consumes anything loses the durables it had."""
    declared = agent_durables(card, topology, settings)
    if not declared:
        agent_id = check_token(card.agent_id, "agent id")
        for stream, name in (
            (topology.cases_stream, agent_id),
            (topology.dead_letter_stream, f"{agent_id}_replay"),
        ):
            try:
                await js.delete_consumer(stream, name)
            except nats.js.errors.NotFoundError:
                continue
            except nats.errors.Error as exc:
                raise BrokerError(f"remove durable {stream}/{name}", repr(exc)) from exc
        return []
    return [await ensure_consumer(js, stream, config, update=True) for stream, config in declared]


async def check_agent_durables(
    js: JetStreamContext, card: AgentCard, topology: Topology
) -> dict[str, ConsumerConfig]:
    """Under registry enforcement: the durables exist and filter what the card says.
    Returns the live configs by durable name."""
    live: dict[str, ConsumerConfig] = {}
    for stream, declared in agent_durables(card, topology, MeshSettings()):
        name = declared.durable_name or ""
        try:
            info = await js.consumer_info(stream, name)
        except nats.js.errors.NotFoundError:
            raise ConfigurationError(
                f"durable {stream}/{name} does not exist: the registry provisions it when "
                f"agent {card.agent_id} is activated"
            ) from None
        except nats.errors.Error as exc:
            raise BrokerError(f"inspect durable {stream}/{name}", repr(exc)) from exc
        filters = sorted(info.config.filter_subjects or [info.config.filter_subject or ""])
        if filters != sorted(declared.filter_subjects or []):
            raise ConfigurationError(
                f"durable {stream}/{name} filters {filters}, but the card consumes "
                f"{card.consumes}: register the current card"
            )
        live[name] = info.config
    return live
