from __future__ import annotations

import dataclasses

import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, StorageType

from mesh._broker.provisioning import Outcome, ensure_consumer, ensure_key_value, ensure_stream
from mesh._broker.stream_provisioning import provision_streams
from mesh._broker.topology import Topology
from mesh.errors import ConfigDrift, ConfigurationError
from mesh.testing import eventually


async def test_streams_are_created_once_then_left_alone(nc: Client, topology: Topology) -> None:
    js = nc.jetstream()
    first = [await ensure_stream(js, config) for config in topology.streams()]
    again = [await ensure_stream(js, config) for config in topology.streams()]
    assert {r.outcome for r in first} == {Outcome.CREATED}
    assert {r.outcome for r in again} == {Outcome.UNCHANGED}
    info = await js.stream_info(topology.cases_stream)
    assert info.config.deny_delete
    assert info.config.deny_purge
    assert info.config.storage == StorageType.FILE


async def test_a_drifted_stream_is_reported_not_silently_kept(
    nc: Client, topology: Topology
) -> None:
    js = nc.jetstream()
    declared = topology.streams()[0]
    await ensure_stream(js, declared)
    # Someone changes the live stream by hand.
    live = (await js.stream_info(declared.name or "")).config
    await js.update_stream(dataclasses.replace(live, max_msgs=1000, duplicate_window=30))

    report = await ensure_stream(js, declared)
    assert report.outcome is Outcome.DRIFTED
    assert any(d.startswith("max_msgs:") for d in report.differences)
    assert any(d.startswith("duplicate_window:") for d in report.differences)
    with pytest.raises(ConfigDrift, match="max_msgs"):
        await ensure_stream(js, declared, strict=True)
    # Reported, not overwritten: the operator decides.
    assert (await js.stream_info(declared.name or "")).config.max_msgs == 1000


async def test_consumers_are_provisioned_and_drift_is_reported(
    nc: Client, provisioned: Topology
) -> None:
    js = nc.jetstream()
    config = ConsumerConfig(
        durable_name="worker",
        filter_subject=provisioned.subjects.case_events_of_type("case_opened"),
        ack_policy=AckPolicy.EXPLICIT,
        max_deliver=5,
        ack_wait=10.0,
    )
    stream = provisioned.cases_stream
    assert (await ensure_consumer(js, stream, config)).outcome is Outcome.CREATED
    assert (await ensure_consumer(js, stream, config)).outcome is Outcome.UNCHANGED
    changed = dataclasses.replace(config, max_deliver=9)
    report = await ensure_consumer(js, stream, changed)
    assert report.outcome is Outcome.DRIFTED
    assert report.differences == ["max_deliver: declared 9, server has 5"]


async def test_key_value_buckets_are_provisioned_idempotently(
    nc: Client, topology: Topology
) -> None:
    js = nc.jetstream()
    config = KeyValueConfig(bucket=f"{topology.root}_agents", history=5)
    assert (await ensure_key_value(js, config)).outcome is Outcome.CREATED
    assert (await ensure_key_value(js, config)).outcome is Outcome.UNCHANGED
    report = await ensure_key_value(js, dataclasses.replace(config, history=2))
    assert report.outcome is Outcome.DRIFTED
    assert report.differences == ["history: declared 2, server has 5"]


async def test_the_case_log_refuses_deletes(nc: Client, provisioned: Topology) -> None:
    js = nc.jetstream()
    await js.publish(provisioned.subjects.case_event("c-1", "case_opened"), b"{}")
    with pytest.raises(nats.js.errors.APIError):
        await js.delete_msg(provisioned.cases_stream, 1)
    with pytest.raises(nats.js.errors.APIError):
        await js.purge_stream(provisioned.cases_stream)


# --- the work stream on a mesh whose case log predates it ---------------------------


async def _log_with_history(nc: Client, topology: Topology, events: int) -> None:
    """A case log as a previous version left it: events, no work stream."""
    js = nc.jetstream()
    await ensure_stream(js, topology.streams()[0])
    for n in range(events):
        await js.publish(topology.subjects.case_event(f"old-{n}", "case_opened"), b"{}")


async def _old_agent_durable(nc: Client, topology: Topology, handled: int) -> None:
    """The previous version's agent durable on the case log, having settled `handled`."""
    js = nc.jetstream()
    await js.add_consumer(
        topology.cases_stream,
        ConsumerConfig(
            durable_name="claims-fraud",
            filter_subject=topology.subjects.family_all("case"),
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    if handled:
        subscription = await js.pull_subscribe_bind("claims-fraud", topology.cases_stream)
        for msg in await subscription.fetch(handled, timeout=5):
            await msg.ack_sync()


async def _work_count(nc: Client, topology: Topology) -> int:
    return (await nc.jetstream().stream_info(topology.work_stream)).state.messages


async def test_a_new_mesh_s_work_stream_copies_the_case_log_from_its_start(
    nc: Client, topology: Topology
) -> None:
    first = await provision_streams(nc.jetstream(), topology)
    await _log_with_history(nc, topology, 2)  # cases opened before any agent ran
    again = await provision_streams(nc.jetstream(), topology)
    assert {r.outcome for r in first} == {Outcome.CREATED}
    assert {r.outcome for r in again} == {Outcome.UNCHANGED}
    await eventually(lambda: _work_count(nc, topology), what="the copy")
    assert await _work_count(nc, topology) == 2


async def test_an_upgraded_mesh_waits_for_its_old_consumers_then_copies_only_what_is_new(
    nc: Client, topology: Topology
) -> None:
    await _log_with_history(nc, topology, 3)
    await _old_agent_durable(nc, topology, handled=1)
    with pytest.raises(ConfigurationError, match=r"claims-fraud \(2 to deliver, 0 to settle\)"):
        await provision_streams(nc.jetstream(), topology)
    with pytest.raises(nats.js.errors.NotFoundError):  # nothing created meanwhile
        await nc.jetstream().stream_info(topology.work_stream)

    subscription = await nc.jetstream().pull_subscribe_bind("claims-fraud", topology.cases_stream)
    for msg in await subscription.fetch(2, timeout=5):  # the old agents finish
        await msg.ack_sync()
    reports = await provision_streams(nc.jetstream(), topology)
    assert Outcome.CREATED in {r.outcome for r in reports}
    # History is not handed to the agents again: only what comes after.
    await nc.jetstream().publish(topology.subjects.case_event("new-1", "case_opened"), b"{}")
    await eventually(lambda: _work_count(nc, topology), what="the copy of the new event")
    assert await _work_count(nc, topology) == 1
    # The start it was created with is kept, not reported as drift.
    again = await provision_streams(nc.jetstream(), topology)
    assert {r.outcome for r in again} == {Outcome.UNCHANGED}
