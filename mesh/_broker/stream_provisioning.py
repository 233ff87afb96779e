"""Provisioning the mesh's streams as the topology declares them — and where the work
stream's copy of the case log begins.

On a mesh created with the work stream, the copy begins at the case log's first event.
On a mesh whose case log predates it (an upgrade from a version whose agents consumed
the log directly), copying from the first event would hand every agent the whole
history again — events handled weeks ago, whose repeats the stream no longer
de-duplicates. So the work stream then begins after the log's last event, and only
once the old consumers are drained: none of them may still have an event to deliver
or to settle, or that event would be handed to nobody. Until they are, provisioning
refuses with the names of those that are not, and nothing is created. Once created,
the work stream keeps the start it was created with (that is not drift).
"""

from __future__ import annotations

import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerInfo, StreamConfig
from nats.js.client import JetStreamContext

from mesh._broker.provisioning import ProvisionReport, ensure_stream
from mesh._broker.topology import Topology
from mesh.errors import BrokerError, ConfigurationError


async def provision_streams(
    js: JetStreamContext, topology: Topology, *, strict: bool = False
) -> list[ProvisionReport]:
    """Create the streams that are missing and report the ones that drifted (see
    `ensure_stream`), the work stream beginning where it must (the module doc)."""
    reports = []
    for config in topology.streams():
        if config.name == topology.work_stream:
            config = await _work_stream_as_provisioned(js, topology, config)
        reports.append(await ensure_stream(js, config, strict=strict))
    return reports


async def _work_stream_as_provisioned(
    js: JetStreamContext, topology: Topology, declared: StreamConfig
) -> StreamConfig:
    assert declared.sources, "the work stream is a copy of the case log"
    source = declared.sources[0]
    try:
        with_start = await js.stream_info(topology.work_stream)
    except nats.js.errors.NotFoundError:
        source.opt_start_seq = await _start_after_old_consumers(js, topology)
    except nats.errors.Error as exc:
        raise BrokerError(f"inspect stream {topology.work_stream}", repr(exc)) from exc
    else:
        live = with_start.config.sources or []
        source.opt_start_seq = live[0].opt_start_seq if live else None
    return declared


async def _start_after_old_consumers(js: JetStreamContext, topology: Topology) -> int | None:
    """None (from the first event) for a new case log, or one nobody consumed yet;
    after its last event once every durable consumer of it is drained."""
    stream = topology.cases_stream
    try:
        info = await js.stream_info(stream)
        last = info.state.last_seq
        consumers = await _all_consumers(js, stream) if last else []
    except nats.js.errors.NotFoundError:
        return None
    except nats.errors.Error as exc:
        raise BrokerError(f"inspect the consumers of {stream}", repr(exc)) from exc
    # (nats-py leaves the listed configs' enums as the server's strings)
    old = [
        c
        for c in consumers
        if c.config.durable_name and AckPolicy(c.config.ack_policy) is AckPolicy.EXPLICIT
    ]
    if not old:
        return None
    undrained = sorted(
        f"{c.name} ({c.num_pending} to deliver, {c.num_ack_pending} to settle)"
        for c in old
        if c.num_pending or c.num_ack_pending
    )
    if undrained:
        raise ConfigurationError(
            f"the case log {stream} predates the work stream, and its consumers "
            f"{', '.join(undrained)} have not handled all of it: let the agents of the "
            "previous version finish (stop opening cases until they have), then start "
            "this version again; the work stream will begin after the log's last event"
        )
    return last + 1


async def _all_consumers(js: JetStreamContext, stream: str) -> list[ConsumerInfo]:
    """Every consumer of the stream (the server lists them a page at a time)."""
    found: list[ConsumerInfo] = []
    while True:
        page = await js.consumers_info(stream, offset=len(found))
        found += page
        if not page:
            return found
