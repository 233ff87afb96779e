"""The key directory's contract (tests/unit/key_directory_suite.py) on the source every
running consumer uses: the registry's answer, read page by page over NATS by
`KeyDirectory.follow`. A stand-in answers the registry's `keys` request with the
suite's principals (the registry itself would stamp its own times), one per page, so
the paging is exercised too; and a change stored in the registry stream is applied
before a message stored after it is judged."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import msgspec
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.registry_api import PrincipalKeys, RegistryQuery, RegistryReply
from mesh._broker.topology import Topology
from mesh._trust.key_directory import KeyDirectory
from mesh._trust.registry_client import RegistryClient
from mesh.errors import SignatureError
from tests.unit.key_directory_suite import (
    NEW,
    T0,
    DirectoryOf,
    KeyDirectorySourceSuite,
    principals,
)


class RegistryStandIn:
    """Answers `<root>.svc.registry.keys` as the registry does: `RegistryReply` pages
    of one principal, `next_after` naming the last one, each page stamped with the
    registry sequence the answer reflects."""

    def __init__(self) -> None:
        self.principals: list[PrincipalKeys] = []
        self.registry_sequence = 0
        self.pages_served = 0

    async def answer(self, msg: Msg) -> None:
        query = msgspec.json.decode(msg.data, type=RegistryQuery)
        ordered = sorted(self.principals, key=lambda p: p.agent_id)
        rest = [p for p in ordered if query.after is None or p.agent_id > query.after]
        page, more = rest[:1], rest[1:]
        reply = RegistryReply(
            ok=True,
            keys=page,
            registry_sequence=self.registry_sequence,
            next_after=page[-1].agent_id if more else None,
        )
        self.pages_served += 1
        await msg.respond(msgspec.json.encode(reply))


@pytest.fixture
async def registry(nc: Client, topology: Topology) -> AsyncIterator[RegistryStandIn]:
    stand_in = RegistryStandIn()
    subscription = await nc.subscribe(
        topology.subjects.service("registry", "keys"), cb=stand_in.answer
    )
    yield stand_in
    await subscription.unsubscribe()


@pytest.fixture
async def followed(
    nc: Client, topology: Topology, registry: RegistryStandIn
) -> AsyncIterator[list[KeyDirectory]]:
    directories: list[KeyDirectory] = []
    yield directories
    for directory in directories:
        await directory.close()


class TestLoadedFromTheRegistrysAnswer(KeyDirectorySourceSuite):
    @pytest.fixture
    def directory_of(
        self,
        nc: Client,
        topology: Topology,
        registry: RegistryStandIn,
        followed: list[KeyDirectory],
    ) -> DirectoryOf:
        async def from_registry(
            principals: list[PrincipalKeys], registry_sequence: int
        ) -> KeyDirectory:
            registry.principals, registry.registry_sequence = principals, registry_sequence
            keys = KeyDirectory()
            followed.append(keys)
            await keys.follow(nc, topology, RegistryClient(nc, topology.subjects))
            return keys

        return from_registry

    async def test_every_page_of_the_answer_is_read(
        self, directory_of: DirectoryOf, registry: RegistryStandIn
    ) -> None:
        await directory_of(principals(), 7)
        assert registry.pages_served == len(principals())


async def test_a_change_in_the_registry_stream_is_applied_before_a_later_message(
    nc: Client,
    provisioned: Topology,
    registry: RegistryStandIn,
    followed: list[KeyDirectory],
) -> None:
    keys = KeyDirectory()
    followed.append(keys)
    await keys.follow(nc, provisioned, RegistryClient(nc, provisioned.subjects))
    with pytest.raises(SignatureError, match="not registered"):
        keys.check(NEW, "fraud", T0.replace(hour=3))

    # The registry applies a change (here: the suite's principals appear) and stores
    # its event in the registry stream; a message stored after it may not be judged
    # by the directory as it was.
    registry.principals, registry.registry_sequence = principals(), 1
    await nc.jetstream().publish(
        provisioned.subjects.family_event("registry", "fraud", "agent_suspended"), b"{}"
    )
    await keys.ensure_current(datetime.now(UTC))
    assert keys.registry_sequence == 1
    keys.check(NEW, "fraud", T0.replace(hour=3))
