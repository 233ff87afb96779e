"""Know Your Agent, enforced by a real nats-server running the generated config."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import nats.errors
import nats.js.errors
import pytest
from nats.js.api import AckPolicy, ConsumerConfig

from contracts import (
    ActionGrant,
    AgentCard,
    AgentKey,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
)
from contracts.cards import card_digest
from contracts.registry_api import GRANT_HEADER, RegistryQuery
from mesh import Agent, Identity
from mesh._broker.cluster import NatsCluster
from mesh._broker.connection import close, connect
from mesh._broker.permissions import authorization_config
from mesh._broker.pinned import consumer_info
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case, read_subject
from mesh._broker.topology import Topology
from mesh._trust.key_directory import KeyDirectory
from mesh._trust.onboarding import card_with_key, connect_as, inbox_prefix, register
from mesh._trust.principals import StaticPrincipal
from mesh._trust.registry_client import RegistryRefused
from mesh.errors import BrokerError, PermissionDenied, ProvisioningError, SignatureError
from mesh.service import broker_errors
from mesh.testing import eventually, unique_root
from services.registry.broker_auth import BrokerAuthorization, ServerToReload
from tests.integration.agents import complete_step
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh, secured_mesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    async with secured_mesh(tmp_path) as secured:
        yield secured


def claims_card(agent_id: str = "intake", **changes: object) -> AgentCard:
    card = AgentCard(
        agent_id=agent_id,
        name="Claims intake",
        version="1.0.0",
        owner=KNOWN_OWNER,
        purpose="checks new claims",
        consumes=["case_opened"],
        produces=["case_step_completed"],
        actions=[ActionGrant(action_type="request_documents", limits={"per_case": 3})],
    )
    return msgspec.structs.replace(card, **changes)


def claims_agent(agent_id: str = "intake") -> Agent:
    agent = Agent(claims_card(agent_id))
    agent.on(CaseOpened)(complete_step)
    return agent


def harness_publisher(mesh: SecuredMesh) -> EventPublisher:
    assert mesh.harness_nc is not None
    return EventPublisher(mesh.harness_nc.jetstream(), mesh.harness, mesh.topology)


async def open_case(mesh: SecuredMesh, case_id: str) -> CaseOpened:
    opened = CaseOpened(
        case_id=case_id, actor="harness", payload=CaseOpenedPayload(kind="claim", source="crm")
    )
    await harness_publisher(mesh).publish(opened)
    return opened


async def test_an_agent_registers_and_works_with_the_credentials_it_is_granted(
    mesh: SecuredMesh,
) -> None:
    runner, _ = await mesh.run_agent(claims_agent())
    await open_case(mesh, "claim-1")
    assert mesh.harness_nc is not None

    async def stepped() -> bool:
        assert mesh.harness_nc is not None
        history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "claim-1")
        return any(isinstance(s.event, CaseStepCompleted) for s in history)

    await eventually(stepped, what="the agent's step")

    client = mesh.client(mesh.harness_nc)
    record = await client.get("intake")
    assert record.status == "active"
    assert record.card.owner == KNOWN_OWNER
    assert [k.public_key for k in record.key_history] == [runner.identity.public_key]
    await eventually(lambda: _alive(mesh, "intake"), what="a heartbeat")
    [found] = await client.find(RegistryQuery(action_type="request_documents"))
    assert found.card.agent_id == "intake"
    assert await client.find(RegistryQuery(event_type="case_closed")) == []


async def _alive(mesh: SecuredMesh, agent_id: str) -> bool:
    assert mesh.harness_nc is not None
    record = await mesh.client(mesh.harness_nc).get(agent_id)
    return record.last_heartbeat is not None and not record.stale


async def test_publishing_outside_the_card_is_refused_by_the_broker(mesh: SecuredMesh) -> None:
    runner, nc = await mesh.run_agent(claims_agent())
    publisher = EventPublisher(nc.jetstream(), runner.identity, mesh.topology, timeout=1, nc=nc)
    rogue = CaseClosed(case_id="claim-2", actor="intake", payload=CaseClosedPayload(outcome="paid"))
    with pytest.raises(PermissionDenied, match="permissions violation for publish"):
        await publisher.publish(rogue)  # case_closed is not on the intake card
    assert mesh.harness_nc is not None
    assert await read_case(mesh.harness_nc.jetstream(), mesh.topology, "claim-2") == []
    # Nor may it read another agent's consumer or write registry history.
    with pytest.raises(PermissionDenied):
        await EventPublisher(
            nc.jetstream(), runner.identity, mesh.topology, timeout=1, nc=nc
        ).publish_raw(mesh.topology.subjects.family_event("registry", "intake", "x"), b"{}", {})


async def test_broker_errors_names_a_subject_the_broker_refused(mesh: SecuredMesh) -> None:
    _, nc = await mesh.run_agent(claims_agent())
    forbidden = mesh.topology.subjects.family_event("registry", "intake", "x")
    refusal = pytest.raises(PermissionDenied, match="permissions violation for publish")
    with refusal as caught, broker_errors(f"ask on {forbidden}", nc=nc, subject=forbidden):
        await nc.request(forbidden, b"{}", timeout=1)
    assert not caught.value.retryable  # unlike a timeout nobody explained


async def test_a_forged_card_is_refused_with_a_clear_reason(mesh: SecuredMesh) -> None:
    owner, impostor = Identity.generate(), Identity.generate()
    card = card_with_key(claims_card(), owner)
    assert mesh.harness_nc is not None
    client = mesh.client(mesh.harness_nc)
    with pytest.raises(RegistryRefused, match=r"forged card: signed by .* not one of the card's"):
        await client.register(card, impostor, grant=mesh.grant(card))
    await mesh.enrol(card, owner)
    # Taking over a registered agent id with another key is forged too.
    hijack = card_with_key(claims_card(), impostor)
    with pytest.raises(RegistryRefused, match="not a current key of agent intake"):
        await client.register(hijack, impostor, grant=mesh.grant(hijack))


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        (
            {"produces": ["case_step_completed", "meteor_struck"]},
            "unknown event type 'meteor_struck'",
        ),
        ({"owner": "nobody-we-know"}, "unknown owner 'nobody-we-know'"),
        ({"agent_id": "has.dot"}, "agent id must be"),
    ],
)
async def test_an_invalid_card_is_refused(
    mesh: SecuredMesh, changes: dict[str, object], reason: str
) -> None:
    identity = Identity.generate()
    assert mesh.harness_nc is not None
    card = card_with_key(claims_card(**changes), identity)  # type: ignore[arg-type]
    with pytest.raises(RegistryRefused, match=reason):
        await mesh.client(mesh.harness_nc).register(card, identity, grant=mesh.grant(card))


async def test_widening_scope_needs_a_new_version_and_an_operator(
    mesh: SecuredMesh,
) -> None:
    identity = Identity.generate()
    assert mesh.harness_nc is not None
    client = mesh.client(mesh.harness_nc)
    await mesh.enrol(claims_card(), identity)
    wider = card_with_key(claims_card(produces=["case_step_completed", "case_closed"]), identity)
    with pytest.raises(RegistryRefused, match=r"widens its scope .* without a new version"):
        await client.register(wider, identity)
    wider = msgspec.structs.replace(wider, version="1.1.0")
    record = await client.register(wider, identity)
    # Proposed, not in force: the card the operator granted stays until one approves.
    assert record.card.produces == ["case_step_completed"]
    assert record.pending_card is not None
    operators = await mesh.operator_client()
    record = await operators.approve(
        "intake", card_digest(record.pending_card), "closing is fine", mesh.operator
    )
    assert record.card.produces == ["case_step_completed", "case_closed"]
    history = await read_subject(
        mesh.harness_nc.jetstream(),
        mesh.topology.registry_stream,
        mesh.topology.subjects.history("registry", "intake"),
    )
    names = [s.event.event_name() for s in history]
    assert names == [
        "agent_registered",
        "agent_activated",
        "agent_card_proposed",
        "agent_card_updated",
    ]
    update = history[-1].event
    assert update.payload.previous_version == "1.0.0"  # type: ignore[attr-defined]
    assert "produces added ['case_closed']" in update.payload.changes  # type: ignore[attr-defined]
    assert update.payload.approval.signer == mesh.operator.public_key  # type: ignore[attr-defined]
    # The same card again changes nothing.
    await client.register(wider, identity)
    assert (
        len(
            await read_subject(
                mesh.harness_nc.jetstream(),
                mesh.topology.registry_stream,
                mesh.topology.subjects.history("registry", "intake"),
            )
        )
        == 4
    )


async def test_revocation_is_a_kill_switch(mesh: SecuredMesh) -> None:
    identity = Identity.generate()
    _, agent_nc = await mesh.run_agent(claims_agent(), identity)
    await open_case(mesh, "before")
    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()

    async def stepped(case_id: str) -> list[object]:
        return [
            s
            for s in await read_case(js, mesh.topology, case_id)
            if isinstance(s.event, CaseStepCompleted)
        ]

    [before] = await eventually(lambda: stepped("before"), what="a step before revocation")

    operator_nc = await connect_as(mesh.url, "operator", mesh.operator)
    mesh.connections.append(operator_nc)
    record = await mesh.client(operator_nc).change_status(
        "revoke", "intake", "leaked key", mesh.operator
    )
    assert record.status == "revoked"

    # The broker drops the agent and will not take it back.
    await eventually(
        lambda: agent_nc.is_closed or not agent_nc.is_connected, what="the agent disconnected"
    )
    with pytest.raises(BrokerError, match="Authorization Violation"):
        await connect_as(mesh.url, "intake", identity, attempts=1)
    with pytest.raises(RegistryRefused, match="revoked"):
        await register(mesh.url, claims_card(), identity, mesh.topology.subjects, wait=1)

    # Its earlier events still verify, with the key valid when they were written...
    directory = KeyDirectory()
    directory.load(await mesh.client(mesh.harness_nc).keys())
    stored_before = before  # a StoredEvent
    signer = stored_before.headers["Mesh-Signer"]  # type: ignore[attr-defined]
    directory.check(signer, "intake", stored_before.stored_at)  # type: ignore[attr-defined]
    # ...and anything signed with its key after the revocation is refused.
    with pytest.raises(SignatureError, match="revoked agent intake after its revocation"):
        directory.check(signer, "intake", datetime.now(UTC))


async def test_a_consumer_dead_letters_events_signed_after_revocation(mesh: SecuredMesh) -> None:
    leaked = Identity.generate()
    await mesh.run_agent(claims_agent("payments"), leaked)
    watcher = Agent(claims_card("watcher", produces=[]))
    handled: list[str] = []

    async def watch(event: CaseOpened, ctx: object) -> None:
        handled.append(event.actor)

    watcher.on(CaseOpened)(watch)  # type: ignore[arg-type]
    await mesh.run_agent(watcher, check_signers=True)

    operator_nc = await connect_as(mesh.url, "operator", mesh.operator)
    mesh.connections.append(operator_nc)
    await mesh.client(operator_nc).change_status("revoke", "payments", "compromised", mesh.operator)
    # The revocation reaches the watcher's key directory within a round trip.
    watcher_keys = mesh.runners[-1].key_directory
    assert watcher_keys is not None

    def watcher_knows() -> bool:
        try:
            watcher_keys.check(leaked.public_key, "payments", datetime.now(UTC))
        except SignatureError:
            return True
        return False

    await eventually(watcher_knows, what="the watcher learning of the revocation")

    # Someone still holding the leaked key gets an event into the log by other means.
    assert mesh.harness_nc is not None
    forged = CaseOpened(
        case_id="after", actor="payments", payload=CaseOpenedPayload(kind="claim", source="x")
    )
    await EventPublisher(mesh.harness_nc.jetstream(), leaked, mesh.topology).publish(forged)
    await open_case(mesh, "legit")

    from mesh._runtime.dead_letters import read_dead_letters

    async def refused() -> list[object]:
        assert mesh.harness_nc is not None
        letters = await read_dead_letters(mesh.harness_nc.jetstream(), mesh.topology)
        return [letter for letter in letters if letter.consumer == "watcher"]

    [letter] = await eventually(refused, what="the forged event dead-lettered")
    assert letter.kind == "signature"  # type: ignore[attr-defined]
    assert "revoked agent payments" in letter.reason  # type: ignore[attr-defined]
    await eventually(lambda: handled == ["harness"], what="the legitimate event handled")


async def test_only_an_operator_changes_an_agent_s_status(mesh: SecuredMesh) -> None:
    await mesh.run_agent(claims_agent())
    assert mesh.harness_nc is not None
    with pytest.raises(RegistryRefused, match="needs an operator's signature"):
        await mesh.client(mesh.harness_nc).change_status(
            "suspend", "intake", "trying", mesh.harness
        )


async def test_suspension_removes_credentials_and_reinstatement_restores_them(
    mesh: SecuredMesh,
) -> None:
    identity = Identity.generate()
    _, agent_nc = await mesh.run_agent(claims_agent(), identity)
    operator_nc = await connect_as(mesh.url, "operator", mesh.operator)
    mesh.connections.append(operator_nc)
    client = mesh.client(operator_nc)
    await client.change_status("suspend", "intake", "incident review", mesh.operator)
    await eventually(lambda: not agent_nc.is_connected, what="the agent disconnected")
    with pytest.raises(BrokerError):
        await connect_as(mesh.url, "intake", identity, attempts=1)
    await client.change_status("activate", "intake", "review done", mesh.operator)
    back = await connect_as(mesh.url, "intake", identity)
    mesh.connections.append(back)
    assert back.is_connected


async def test_a_rotated_key_stays_valid_for_what_it_signed(mesh: SecuredMesh) -> None:
    old, new = Identity.generate(), Identity.generate()
    assert mesh.harness_nc is not None
    client = mesh.client(mesh.harness_nc)
    await mesh.enrol(claims_card(), old)
    rotated_card = msgspec.structs.replace(
        claims_card(), keys=[AgentKey(public_key=new.public_key, valid_from=datetime.now(UTC))]
    )
    with pytest.raises(RegistryRefused, match="no proof of possession"):
        await client.register(rotated_card, old)
    # Signed by the key being retired, and by the new key to prove it is held.
    record = await client.register(rotated_card, old, new)
    history = {k.public_key: k for k in record.key_history}
    assert history[old.public_key].valid_until is not None
    assert history[new.public_key].valid_until is None
    directory = KeyDirectory()
    directory.load(await client.keys())
    retired_at = history[old.public_key].valid_until
    assert retired_at is not None
    directory.check(old.public_key, "intake", history[old.public_key].valid_from)
    with pytest.raises(SignatureError, match="was not valid at"):
        directory.check(old.public_key, "intake", datetime.now(UTC))
    directory.check(new.public_key, "intake", datetime.now(UTC))


async def test_the_registry_restarts_without_losing_anything(mesh: SecuredMesh) -> None:
    identity = Identity.generate()
    await mesh.run_agent(claims_agent(), identity)
    assert mesh.harness_nc is not None
    client = mesh.client(mesh.harness_nc)
    second = Identity.generate()
    await mesh.enrol(claims_card("fraud"), second)
    before = await client.find()
    assert mesh.service is not None
    assert mesh.service.handlers is not None
    state_before = dict(mesh.service.handlers.state.records)

    await mesh.runners[0].stop()  # no more heartbeats: what survives was persisted
    last_beat = mesh.service.handlers.heartbeats["intake"]
    await mesh.stop_registry()
    # A crash between the history append and the view write: the view lost an entry.
    kv = await mesh.harness_nc.jetstream().key_value(f"{mesh.topology.root.upper()}_AGENTS")
    await kv.delete("fraud")
    await mesh.start_registry()

    assert mesh.service.handlers is not None
    assert mesh.service.handlers.state.records == state_before
    after = await client.find()
    assert [(r.card, r.status, r.key_history) for r in after] == [
        (r.card, r.status, r.key_history) for r in before
    ]
    entry = await kv.get("fraud")  # repaired from history
    assert entry.value is not None
    # Liveness survived too: read back from its bucket by the new registry.
    assert mesh.service.handlers.heartbeats["intake"] == last_beat
    await mesh.runners[0].start()
    await open_case(mesh, "after-restart")

    async def stepped() -> bool:
        assert mesh.harness_nc is not None
        history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "after-restart")
        return any(isinstance(s.event, CaseStepCompleted) for s in history)

    await eventually(stepped, what="work after the registry restarted")


async def test_the_registry_replies_only_to_inboxes(mesh: SecuredMesh) -> None:
    """A requester must not borrow the registry's permissions by naming a stream
    subject (or the KV view) as its reply subject."""
    onboarding = await connect(
        mesh.url, name="sneaky", inbox_prefix="_INBOX.onboarding", reconnect=False
    )
    mesh.connections.append(onboarding)
    identity = Identity.generate()
    card = card_with_key(claims_card(), identity)
    body = msgspec.json.encode(card)
    subject = mesh.topology.subjects.service("registry", "register")
    target = mesh.topology.subjects.family_event("registry", "intake", "agent_registered")
    headers = identity.signature_headers(subject, body)
    headers[GRANT_HEADER] = msgspec.json.encode(mesh.grant(card)).decode()
    await onboarding.publish(subject, body, reply=target, headers=headers)
    await onboarding.flush()
    assert mesh.harness_nc is not None
    client = mesh.client(mesh.harness_nc)
    await eventually(lambda: client.get("intake"), what="the registration served")
    history = await read_subject(
        mesh.harness_nc.jetstream(),
        mesh.topology.registry_stream,
        mesh.topology.subjects.family_all("registry"),
    )
    assert all(s.event.actor == "registry" for s in history)
    # And the registry still restarts.
    await mesh.stop_registry()
    await mesh.start_registry()
    assert (await client.get("intake")).status == "active"


async def test_an_agent_cannot_create_consumers_to_read_beyond_its_card(
    mesh: SecuredMesh,
) -> None:
    _, nc = await mesh.run_agent(claims_agent())
    spy = ConsumerConfig(
        durable_name="spy", deliver_subject="_INBOX.harness.spy", ack_policy=AckPolicy.NONE
    )
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream(timeout=1).add_consumer(mesh.topology.cases_stream, spy)
    assert mesh.harness_nc is not None
    with pytest.raises(nats.js.errors.NotFoundError):
        await mesh.harness_nc.jetstream().consumer_info(mesh.topology.cases_stream, "spy")
    # Its own durables exist all the same: the registry created them from the card, one
    # per partition of the work stream, each pinning one replica at a time.
    for k, name in enumerate(mesh.topology.partition_durables("intake")):
        info = await consumer_info(mesh.harness_nc, mesh.topology.work_stream, name)
        assert info is not None
        assert info["config"]["filter_subjects"] == [
            mesh.topology.subjects.work_of_type(k, "case_opened")
        ]
        assert info["config"]["priority_policy"] == "pinned_client"


# -- the authorization reload on a cluster: every member, each confirmed ------------------


def _operator(name: str) -> tuple[StaticPrincipal, Identity]:
    identity = Identity.generate()
    return StaticPrincipal(name, identity.public_key, "operator"), identity


async def _admitted(url: str, name: str, identity: Identity) -> bool:
    try:
        nc = await connect(
            url,
            name=name,
            identity=identity,
            inbox_prefix=inbox_prefix(name),
            reconnect=False,
            initial_attempts=1,
        )
    except BrokerError:
        return False
    await close(nc)
    return True


@pytest.fixture
async def secured_cluster(tmp_path: Path) -> AsyncIterator[tuple[NatsCluster, Path]]:
    """Three members, each including the one auth.conf beside their directories (as
    `mesh up --cluster 3` lays them out)."""
    auth_file = tmp_path / "nats" / "auth.conf"
    auth_file.parent.mkdir()
    first, _ = _operator("first")
    auth_file.write_text(authorization_config([], [first], Topology(unique_root())))
    nodes = NatsCluster(tmp_path / "nats", size=3, extra_config='include "../auth.conf"')
    await asyncio.to_thread(nodes.start)
    try:
        yield nodes, auth_file
    finally:
        await asyncio.to_thread(nodes.stop)


def _members(nodes: NatsCluster) -> list[ServerToReload]:
    return [
        ServerToReload(node.pid_path, f"http://127.0.0.1:{node.monitor_port}")
        for node in nodes.nodes
    ]


async def test_every_cluster_member_reloads_and_a_member_that_was_down_reads_it_on_start(
    secured_cluster: tuple[NatsCluster, Path],
) -> None:
    nodes, auth_file = secured_cluster
    principals = [_operator("first")[0]]
    authorization = BrokerAuthorization(
        auth_file, _members(nodes), principals, Topology(unique_root())
    )
    second, second_identity = _operator("second")
    authorization.principals = [*principals, second]
    assert await asyncio.to_thread(authorization.apply, [])
    for node in nodes.nodes:  # each member took it, not just one
        assert await _admitted(node.url, "second", second_identity), node.name

    # A member down as the authorization changes: the others are reloaded (no error),
    # and the member reads the file when it comes back.
    nodes.kill(2)
    third, third_identity = _operator("third")
    authorization.principals = [*authorization.principals, third]
    assert await asyncio.to_thread(authorization.apply, [])
    for node in nodes.nodes[:2]:
        assert await _admitted(node.url, "third", third_identity), node.name
    await asyncio.to_thread(nodes.restart, 2)
    assert await _admitted(nodes.nodes[2].url, "third", third_identity)
    assert await _admitted(nodes.nodes[2].url, "second", second_identity)

    # Nobody up: the change is on file but in force nowhere — an error, not a success.
    nodes.stop()
    fourth, _ = _operator("fourth")
    authorization.principals = [*authorization.principals, fourth]
    with pytest.raises(ProvisioningError, match="no server took"):
        await asyncio.to_thread(authorization.apply, [])


async def test_a_member_that_refuses_the_reload_is_an_error_naming_it(
    secured_cluster: tuple[NatsCluster, Path],
) -> None:
    nodes, auth_file = secured_cluster
    authorization = BrokerAuthorization(
        auth_file,
        _members(nodes),
        [_operator("first")[0]],
        Topology(unique_root()),
        confirm_timeout=1.5,
    )
    broken = nodes.nodes[1]
    broken.config_path.write_text("this is not { a config\n")  # its reload fails
    second, second_identity = _operator("second")
    authorization.principals = [*authorization.principals, second]
    with pytest.raises(ProvisioningError, match=f"{broken.monitor_port} did not load"):
        await asyncio.to_thread(authorization.apply, [])
    # The members before and after the broken one were signalled all the same.
    assert await _admitted(nodes.nodes[0].url, "second", second_identity)
    assert await _admitted(nodes.nodes[2].url, "second", second_identity)
    # The broken one is up (so a refusal is its old authorization, not its absence).
    async with httpx.AsyncClient() as client:
        health = await client.get(f"http://127.0.0.1:{broken.monitor_port}/healthz")
    assert health.status_code == 200, health.text
    assert not await _admitted(broken.url, "second", second_identity)
    # Nothing changed on file, but not every member has it: the next apply tries again.
    with pytest.raises(ProvisioningError, match=f"{broken.monitor_port} did not load"):
        await asyncio.to_thread(authorization.apply, [])
