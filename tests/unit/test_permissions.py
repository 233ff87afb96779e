"""The generated authorization: exactly the card's scope, nothing for inactive agents.
(That nats-server accepts and enforces it is tested in tests/integration/test_registry.py.)"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from contracts import AgentCard, AgentKey
from contracts.cards import AgentRecord, AgentStatus
from mesh._broker.permissions import authorization_config
from mesh._broker.topology import Topology
from mesh._trust.identity import Identity
from mesh._trust.principals import StaticPrincipal

T0 = datetime(2026, 11, 1, tzinfo=UTC)
TOPOLOGY = Topology("mesh")


def record(agent_id: str, status: AgentStatus, key: Identity) -> AgentRecord:
    card = AgentCard(
        agent_id=agent_id,
        name=agent_id,
        version="1",
        owner="claims-team",
        purpose="p",
        consumes=["case_opened"],
        produces=["case_step_completed", "action_requested"],
    )
    return AgentRecord(
        card=card,
        status=status,
        registered_at=T0,
        updated_at=T0,
        status_changed_at=T0,
        key_history=[AgentKey(public_key=key.public_key, valid_from=T0)],
    )


def users(text: str) -> list[dict[str, object]]:
    body = re.search(r"authorization (\{.*\})\n", text, re.S)
    assert body is not None
    parsed: list[dict[str, object]] = json.loads(body.group(1))["users"]
    return parsed


def test_an_active_agent_may_publish_only_what_its_card_produces() -> None:
    key = Identity.generate()
    [_, agent] = users(authorization_config([record("intake", "active", key)], [], TOPOLOGY))
    assert agent["nkey"] == key.public_key
    publish = agent["permissions"]["publish"]["allow"]  # type: ignore[index]
    case_subjects = [s for s in publish if s.startswith("mesh.case.")]
    assert sorted(case_subjects) == [
        "mesh.case.*.action_requested",
        "mesh.case.*.case_step_completed",
    ]
    assert ">" not in publish
    # The registry's reads under its own name only (answered on its own inbox).
    for op in ("get", "list", "keys"):
        assert f"mesh.svc.registry.{op}.intake" in publish
        assert f"mesh.svc.registry.{op}" not in publish
    # Its partition consumers on the work stream, each of them, and none on the log.
    for k in range(TOPOLOGY.partitions):
        assert f"$JS.API.CONSUMER.MSG.NEXT.MESH_WORK.intake_p{k}" in publish
        assert f"$JS.ACK.MESH_WORK.intake_p{k}.>" in publish
    assert f"$JS.API.CONSUMER.MSG.NEXT.MESH_WORK.intake_p{TOPOLOGY.partitions}" not in publish
    assert not any(".MESH_CASES.intake" in s and "CONSUMER" in s for s in publish)
    assert not any(s.startswith("$JS.API.STREAM.CREATE") for s in publish)
    assert not any(s.startswith("$JS.API.CONSUMER.CREATE") for s in publish)
    subscribe = agent["permissions"]["subscribe"]["allow"]  # type: ignore[index]
    assert subscribe == ["_INBOX.intake.>", "mesh.registry.>"]


def test_inactive_agents_get_no_credentials() -> None:
    records = [
        record(name, status, Identity.generate())
        for name, status in (("a", "registered"), ("s", "suspended"), ("r", "revoked"))
    ]
    [onboarding] = users(authorization_config(records, [], TOPOLOGY))
    assert onboarding["user"] == "onboarding"
    assert onboarding["permissions"] == {
        "publish": {"allow": ["mesh.svc.registry.register"]},
        "subscribe": {"allow": ["_INBOX.onboarding.>"]},
    }


def test_services_and_unknown_clients() -> None:
    registry, operator = Identity.generate(), Identity.generate()
    text = authorization_config(
        [],
        [
            StaticPrincipal("registry", registry.public_key, "registry"),
            StaticPrincipal("operator", operator.public_key, "operator"),
        ],
        TOPOLOGY,
    )
    assert text.rstrip().endswith("no_auth_user: onboarding")
    by_key = {u.get("nkey"): u for u in users(text)}
    registry_publish = by_key[registry.public_key]["permissions"]["publish"]["allow"]  # type: ignore[index]
    assert "mesh.registry.>" in registry_publish
    assert "mesh.case.>" not in registry_publish
    assert by_key[operator.public_key]["permissions"]["publish"]["allow"] == [">"]  # type: ignore[index]


def test_the_event_store_ingress_and_external_systems_write_only_their_own() -> None:
    store, ingress, crm = Identity.generate(), Identity.generate(), Identity.generate()
    text = authorization_config(
        [],
        [
            StaticPrincipal("eventstore", store.public_key, "eventstore"),
            StaticPrincipal("ingress", ingress.public_key, "ingress"),
            StaticPrincipal("crm", crm.public_key, "external"),
        ],
        TOPOLOGY,
    )
    by_key = {u.get("nkey"): u["permissions"] for u in users(text)}

    def allowed(identity: Identity) -> list[str]:
        permissions = by_key[identity.public_key]
        return permissions["publish"]["allow"]  # type: ignore[index,no-any-return]

    store_may = allowed(store)
    assert "mesh.ops.eventstore.log_checkpointed" in store_may
    assert not [s for s in store_may if s.startswith(("mesh.case.", ">"))]
    ingress_may = allowed(ingress)
    assert "mesh.case.*.case_opened" in ingress_may
    assert "mesh.dlq.MESH_INGRESS.ingress" in ingress_may
    assert "mesh.case.*.evidence_received" in ingress_may
    assert not [
        s
        for s in ingress_may
        if s.startswith("mesh.case.") and not s.endswith(("case_opened", "evidence_received"))
    ]
    assert allowed(crm) == [
        "mesh.svc.ingress.crm",
        "mesh.svc.ingress.status.crm",
        "mesh.svc.ingress.events.crm",
    ]
    assert by_key[crm.public_key]["subscribe"]["allow"] == ["_INBOX.crm.>"]  # type: ignore[index]
