"""A case's history read by direct gets reaches the event being handled: a replicated
stream answers from any replica, a follower behind the newest writes included, so a
read that must reach a sequence it knows is stored asks again until it does — and says
so, rather than answering with less, when no replica catches up."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client

from contracts import CaseOpened, CaseOpenedPayload, CaseStepCompleted, CaseStepCompletedPayload
from contracts.reader_api import HistoryRequest
from mesh import Identity
from mesh._broker import direct_get
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._broker.topology import Topology
from mesh.errors import BrokerError


async def _case_of_two(nc: Client, topology: Topology, case_id: str) -> int:
    publisher = EventPublisher(nc.jetstream(), Identity.generate(), topology)
    opened = CaseOpened(
        case_id=case_id, actor="harness", payload=CaseOpenedPayload(kind="claim", source="t")
    )
    await publisher.publish(opened)
    step = CaseStepCompleted(
        case_id=case_id,
        actor="harness",
        causation_id=opened.event_id,
        payload=CaseStepCompletedPayload(step="intake", outcome="ok"),
    )
    return (await publisher.publish(step)).sequence


async def test_a_read_that_reaches_the_event_being_handled_answers_at_once(
    nc: Client, provisioned: Topology
) -> None:
    newest = await _case_of_two(nc, provisioned, "c-1")
    history = await read_case(nc.jetstream(), provisioned, "c-1", at_least=newest)
    assert [s.sequence for s in history][-1] == newest
    assert len(history) == 2


async def test_a_read_that_no_replica_brings_up_to_the_event_says_so(
    nc: Client, provisioned: Topology, monkeypatch: pytest.MonkeyPatch
) -> None:
    newest = await _case_of_two(nc, provisioned, "c-2")
    monkeypatch.setattr(direct_get, "CATCH_UP_ATTEMPTS", 3)
    with pytest.raises(BrokerError, match=rf"no replica of .* answered with #{newest + 7} yet"):
        await read_case(nc.jetstream(), provisioned, "c-2", at_least=newest + 7)


async def test_the_wait_for_a_replica_to_catch_up_is_the_asker_s_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The case reader serves everyone from one subscription: it answers what it read,
    once, and the agent that needs a later sequence asks again — so an agent naming a
    sequence from the future costs the reader one read, not a wait that holds the
    others (`HistoryRequest` has no such field: it would be refused as unknown)."""
    monkeypatch.setattr(direct_get, "CATCH_UP_ATTEMPTS", 3)
    asked: list[int] = []

    async def read() -> tuple[list[str], int]:
        asked.append(1)
        return ["#1", "#2"], 2

    assert await direct_get.read_until(read, 2, "read c", "replica") == ["#1", "#2"]
    with pytest.raises(BrokerError, match="no case reader answered with #9 yet"):
        await direct_get.read_until(read, 9, "reader history", "case reader")
    assert len(asked) == 1 + 3
    with pytest.raises(msgspec.ValidationError, match="at_least"):
        msgspec.json.decode(b'{"case_id": "c", "at_least": 9}', type=HistoryRequest)
