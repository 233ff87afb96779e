"""Pull consumers with an ADR-42 `pinned_client` priority group, over the raw
JetStream API (nats-py 2.16 knows neither the config fields nor the pull fields).

The server delivers a pinned consumer's messages to one client at a time: the first
pull it serves picks the pinned client and stamps every message with a `Nats-Pin-Id`;
pulls carrying another id are answered 423; a pinned client that has not pulled for
`priority_timeout` loses the pin to another waiting pull. The server does *not* wait for
the old client's unacknowledged messages before serving the new one: keeping a case in
order across that switch is the consumer's job (`mesh._runtime.partitions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from mesh._broker.provisioning import Outcome, ProvisionReport, differences
from mesh.errors import BrokerError, ConfigDrift, ProvisioningError

PIN_GROUP = "mesh"  # one group per consumer (ADR-42 allows no more today)
PINNED_POLICY = "pinned_client"
API = "$JS.API"
NOT_FOUND = 10014  # consumer not found


@dataclass(frozen=True)
class PinnedConsumer:
    """A durable pull consumer whose messages go to one pinned client at a time."""

    stream: str
    config: ConsumerConfig
    pin_timeout: float

    @property
    def name(self) -> str:
        assert self.config.durable_name is not None
        return self.config.durable_name

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.config.as_dict(),
            "priority_groups": [PIN_GROUP],
            "priority_policy": PINNED_POLICY,
            "priority_timeout": int(self.pin_timeout * 1e9),
        }

    def pin_problems(self, live: dict[str, Any]) -> list[str]:
        """How a live consumer's priority settings differ from this declaration."""
        found = []
        if live.get("priority_policy") != PINNED_POLICY:
            found.append(
                f"priority_policy: declared {PINNED_POLICY!r}, server has "
                f"{live.get('priority_policy')!r}"
            )
        if live.get("priority_groups") != [PIN_GROUP]:
            found.append(
                f"priority_groups: declared {[PIN_GROUP]!r}, server has "
                f"{live.get('priority_groups')!r}"
            )
        if live.get("priority_timeout") != int(self.pin_timeout * 1e9):
            found.append(
                f"priority_timeout: declared {int(self.pin_timeout * 1e9)}, server "
                f"has {live.get('priority_timeout')!r}"
            )
        return found


class ConsumerApiError(BrokerError):
    def __init__(self, operation: str, error: dict[str, Any]) -> None:
        self.code = int(error.get("code", 0))
        self.err_code = int(error.get("err_code", 0))
        super().__init__(operation, str(error.get("description", error)))


async def api_request(
    nc: Client, subject: str, body: dict[str, Any] | None, timeout: float, operation: str
) -> dict[str, Any]:
    """One JetStream API request; its error answer raised as `ConsumerApiError`."""
    payload = json.dumps(body).encode() if body is not None else b""
    try:
        reply = await nc.request(subject, payload, timeout=timeout)
    except (nats.errors.Error, TimeoutError) as exc:
        raise BrokerError(operation, repr(exc)) from exc
    try:
        answer: dict[str, Any] = json.loads(reply.data)
    except ValueError as exc:
        raise BrokerError(operation, f"unreadable answer {reply.data[:200]!r}") from exc
    if "error" in answer:
        raise ConsumerApiError(operation, answer["error"])
    return answer


async def consumer_info(
    nc: Client, stream: str, name: str, timeout: float = 5.0
) -> dict[str, Any] | None:
    """The raw consumer info (config, num_ack_pending, num_waiting, priority_groups…),
    or None when the consumer does not exist."""
    try:
        return await api_request(
            nc,
            f"{API}.CONSUMER.INFO.{stream}.{name}",
            None,
            timeout,
            f"inspect consumer {stream}/{name}",
        )
    except ConsumerApiError as exc:
        if exc.err_code == NOT_FOUND:
            return None
        raise


async def ensure_pinned_consumer(
    nc: Client, consumer: PinnedConsumer, timeout: float = 5.0
) -> ProvisionReport:
    """Create the consumer, or bring a drifted one in line (the server updates filters
    and timeouts in place). A consumer that exists without the pinned policy cannot be
    switched to it (ADR-42): that is reported as drift, never silently recreated, since
    recreating would forget what its agent has acknowledged."""
    resource = f"consumer {consumer.stream}/{consumer.name}"
    live = await consumer_info(nc, consumer.stream, consumer.name, timeout)
    request = {"stream_name": consumer.stream, "config": consumer.as_dict()}
    create = f"{API}.CONSUMER.CREATE.{consumer.stream}.{consumer.name}"
    if live is None:
        try:
            await api_request(nc, create, request, timeout, f"create {resource}")
        except ConsumerApiError as exc:
            raise ProvisioningError(resource, str(exc)) from exc
        return ProvisionReport(resource, Outcome.CREATED)
    config = live.get("config", {})
    policy = consumer.pin_problems(config)
    if any(p.startswith(("priority_policy", "priority_groups")) for p in policy):
        raise ConfigDrift(resource, policy)
    found = differences(consumer.config, ConsumerConfig.from_response(dict(config))) + policy
    if not found:
        return ProvisionReport(resource, Outcome.UNCHANGED)
    try:
        await api_request(nc, create, request, timeout, f"update {resource}")
    except ConsumerApiError as exc:
        raise ConfigDrift(resource, [*found, f"update refused: {exc}"]) from exc
    return ProvisionReport(resource, Outcome.UPDATED, found)


async def delete_consumer(nc: Client, stream: str, name: str, timeout: float = 5.0) -> bool:
    """Delete it; False when there was none."""
    try:
        await api_request(
            nc,
            f"{API}.CONSUMER.DELETE.{stream}.{name}",
            None,
            timeout,
            f"remove consumer {stream}/{name}",
        )
    except ConsumerApiError as exc:
        if exc.err_code == NOT_FOUND:
            return False
        raise
    return True
