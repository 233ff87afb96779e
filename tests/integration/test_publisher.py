from __future__ import annotations

import pytest
from nats.aio.client import Client

from contracts import CaseClosed, CaseClosedPayload, CaseOpened, CaseOpenedPayload, decode
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._broker.topology import Topology
from mesh._trust.identity import Identity, verify_headers
from mesh.errors import ConcurrencyConflict


def _opened(case_id: str) -> CaseOpened:
    return CaseOpened(
        case_id=case_id, actor="ingress", payload=CaseOpenedPayload(kind="claim", source="crm")
    )


def _closed(case_id: str) -> CaseClosed:
    return CaseClosed(
        case_id=case_id, actor="adjudicator", payload=CaseClosedPayload(outcome="paid")
    )


async def test_a_republished_event_is_stored_once(nc: Client, provisioned: Topology) -> None:
    publisher = EventPublisher(nc.jetstream(), Identity.generate(), provisioned)
    event = _opened("c-1")
    first = await publisher.publish(event)
    second = await publisher.publish(event)
    assert not first.duplicate
    assert second.duplicate
    assert second.sequence == first.sequence
    assert len(await read_case(nc.jetstream(), provisioned, "c-1")) == 1


async def test_stored_events_are_signed_over_subject_and_body(
    nc: Client, provisioned: Topology
) -> None:
    identity = Identity.generate()
    publisher = EventPublisher(nc.jetstream(), identity, provisioned)
    await publisher.publish(_opened("c-2"))
    [stored] = await read_case(nc.jetstream(), provisioned, "c-2")
    assert verify_headers(stored.subject, stored.body, stored.headers) == identity.public_key
    assert decode(stored.body) == stored.event


async def test_a_stale_writer_gets_a_conflict(nc: Client, provisioned: Topology) -> None:
    publisher = EventPublisher(nc.jetstream(), Identity.generate(), provisioned)
    assert await publisher.last_case_sequence("c-3") == 0
    opened = await publisher.publish(_opened("c-3"), expected_case_sequence=0)
    # Another case moving on does not conflict with this one.
    await publisher.publish(_opened("c-4"))
    assert await publisher.last_case_sequence("c-3") == opened.sequence

    # Two writers read the case at the same point; the second one loses.
    await publisher.publish(_closed("c-3"), expected_case_sequence=opened.sequence)
    with pytest.raises(ConcurrencyConflict, match="c-3 changed since sequence") as caught:
        await publisher.publish(
            _closed("c-3").with_envelope(), expected_case_sequence=opened.sequence
        )
    assert caught.value.retryable
    assert [s.event.event_name() for s in await read_case(nc.jetstream(), provisioned, "c-3")] == [
        "case_opened",
        "case_closed",
    ]


async def test_a_retried_conditional_publish_is_a_duplicate_not_a_conflict(
    nc: Client, provisioned: Topology
) -> None:
    publisher = EventPublisher(nc.jetstream(), Identity.generate(), provisioned)
    opened = _opened("c-5")
    first = await publisher.publish(opened, expected_case_sequence=0)
    await publisher.publish(_closed("c-5"))  # the case moves on after our write
    again = await publisher.publish(opened, expected_case_sequence=0)
    assert again.duplicate
    assert again.sequence == first.sequence
