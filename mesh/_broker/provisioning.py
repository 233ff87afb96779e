"""Idempotent provisioning of streams, consumers and KV buckets.

A missing resource is created. An existing one is compared with its declaration, field
by declared field; a difference is *reported* (logged, returned, or raised with
`strict=True`) and never silently kept or overwritten: changing a live audit stream is
an operator's decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, KeyValueConfig, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.manager import JetStreamManager

from mesh.errors import BrokerError, ConfigDrift, ProvisioningError

log = logging.getLogger(__name__)


class Outcome(Enum):
    CREATED = "created"
    UNCHANGED = "unchanged"
    DRIFTED = "drifted"
    UPDATED = "updated"


@dataclass(frozen=True)
class ProvisionReport:
    resource: str
    outcome: Outcome
    differences: list[str] = field(default_factory=list)


def _normalise(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    return value


def differences(declared: Any, actual: Any) -> list[str]:
    """Fields set in the declaration whose live value differs."""
    found = []
    wanted = declared.as_dict()
    live = actual.as_dict()
    for key, value in sorted(wanted.items()):
        if key in ("name", "durable_name"):
            continue
        if _normalise(live.get(key)) != _normalise(value):
            found.append(f"{key}: declared {value!r}, server has {live.get(key)!r}")
    return found


def _settle(resource: str, found: list[str], strict: bool) -> ProvisionReport:
    if not found:
        return ProvisionReport(resource, Outcome.UNCHANGED)
    if strict:
        raise ConfigDrift(resource, found)
    log.warning("%s drifted from its declaration: %s", resource, "; ".join(found))
    return ProvisionReport(resource, Outcome.DRIFTED, found)


async def ensure_stream(
    jsm: JetStreamManager, config: StreamConfig, *, strict: bool = False
) -> ProvisionReport:
    resource = f"stream {config.name}"
    assert config.name is not None
    try:
        info = await jsm.stream_info(config.name)
    except nats.js.errors.NotFoundError:
        try:
            await jsm.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            # Lost a race with another provisioner: compare with what it created.
            if exc.err_code != 10058:  # stream name already in use
                raise ProvisioningError(resource, exc.description or repr(exc)) from exc
            info = await jsm.stream_info(config.name)
        except (nats.js.errors.APIError, nats.errors.Error) as exc:
            raise ProvisioningError(resource, repr(exc)) from exc
        else:
            log.info("created %s", resource)
            return ProvisionReport(resource, Outcome.CREATED)
    except nats.errors.Error as exc:
        raise BrokerError(f"inspect {resource}", repr(exc)) from exc
    return _settle(resource, differences(config, info.config), strict)


async def ensure_consumer(
    jsm: JetStreamManager,
    stream: str,
    config: ConsumerConfig,
    *,
    strict: bool = False,
    update: bool = False,
) -> ProvisionReport:
    """With `update=True` (for a consumer its owner declares, e.g. an agent's durable
    after the agent's card changed) a drifted consumer is updated to the declaration;
    a change the server cannot make in place raises ConfigDrift."""
    name = config.durable_name or config.name
    assert name is not None
    resource = f"consumer {stream}/{name}"
    try:
        info = await jsm.consumer_info(stream, name)
    except nats.js.errors.NotFoundError:
        try:
            await jsm.add_consumer(stream, config)
        except (nats.js.errors.APIError, nats.errors.Error) as exc:
            raise ProvisioningError(resource, repr(exc)) from exc
        log.info("created %s", resource)
        return ProvisionReport(resource, Outcome.CREATED)
    except nats.errors.Error as exc:
        raise BrokerError(f"inspect {resource}", repr(exc)) from exc
    found = differences(config, info.config)
    if found and update:
        try:
            await jsm.add_consumer(stream, config)  # CONSUMER.CREATE updates in place
        except (nats.js.errors.APIError, nats.errors.Error) as exc:
            raise ConfigDrift(resource, [*found, f"update refused: {exc!r}"]) from exc
        log.info("updated %s: %s", resource, "; ".join(found))
        return ProvisionReport(resource, Outcome.UPDATED, found)
    return _settle(resource, found, strict)


async def ensure_key_value(
    js: JetStreamContext, config: KeyValueConfig, *, strict: bool = False
) -> ProvisionReport:
    resource = f"kv {config.bucket}"
    try:
        await js.key_value(config.bucket)
    except nats.js.errors.BucketNotFoundError:
        try:
            await js.create_key_value(config)
        except (nats.js.errors.APIError, nats.errors.Error) as exc:
            raise ProvisioningError(resource, repr(exc)) from exc
        log.info("created %s", resource)
        return ProvisionReport(resource, Outcome.CREATED)
    stream_config = (await js.stream_info(f"KV_{config.bucket}")).config
    found = []
    checks = {
        "history": (config.history, stream_config.max_msgs_per_subject),
        "ttl": (config.ttl, stream_config.max_age),
        "storage": (config.storage, stream_config.storage),
        "replicas": (config.replicas, stream_config.num_replicas),
    }
    for key, (wanted, live) in checks.items():
        if wanted is not None and _normalise(wanted) != _normalise(live):
            found.append(f"{key}: declared {wanted!r}, server has {live!r}")
    return _settle(resource, found, strict)
