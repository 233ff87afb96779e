"""Auditing: an exported bundle verifies offline with `mesh audit verify --bundle`, and
each kind of tampering — a flipped byte, a dropped event, a reordered pair, a forged
signature — is detected and the event named. Policy violations in a live log (an action
executed without approval, a self-approval, a revoked agent's key used after its
revocation) are named too, and a forged event is flagged by the projection, not
applied."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts import (
    ActionCompleted,
    ActionCompletedPayload,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    CaseClosed,
    CaseClosedPayload,
)
from contracts.cards import AgentCard
from contracts.eventstore_api import CaseRequest
from mesh import Identity
from mesh._broker.publisher import EventPublisher
from mesh.cli import app
from services.eventstore.audit import verify_bundle
from services.eventstore.export import build_bundle, store_request, write_bundle
from tests.integration.claims_flow import (
    approve,
    claims_manager,
    open_case,
    open_claim,
    screen,
    start_claims,
    wait_for,
)
from tests.integration.databases import Databases
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh, secured_mesh

cli = CliRunner()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as secured:
        yield secured


def verify_file(path: Path) -> tuple[int, str]:
    result = cli.invoke(app, ["audit", "verify", "--bundle", str(path)])
    return result.exit_code, result.output


def tampered(original: dict[str, Any], path: Path, change: Any) -> Path:
    data = json.loads(json.dumps(original))
    change(data["events"])
    path.write_text(json.dumps(data))
    return path


def flip_byte(events: list[dict[str, Any]], index: int) -> None:
    body = bytearray(base64.b64decode(events[index]["body_b64"]))
    position = body.index(b'"amount":') + len(b'"amount":')
    body[position] = ord("9") if body[position] != ord("9") else ord("8")
    events[index]["body_b64"] = base64.b64encode(bytes(body)).decode()


async def test_a_tampered_bundle_is_caught_and_the_event_named(
    mesh: SecuredMesh, databases: Databases, tmp_path: Path
) -> None:
    await mesh.start_eventstore(databases.new("sqlite"), checkpoint_every=3)
    await start_claims(mesh)
    manager = await claims_manager(mesh)
    await open_claim(mesh, "large", 250_000)
    await approve(mesh, "large", manager)
    await wait_for(mesh, "large", CaseClosed)
    assert mesh.harness_nc is not None
    bundle = await build_bundle(mesh.harness_nc, mesh.topology, "large")
    exported = tmp_path / "large.json"
    write_bundle(bundle, exported)

    code, output = verify_file(exported)
    assert code == 0, output
    assert "verified" in output

    original = json.loads(exported.read_text())
    events = original["events"]
    sequences = [e["sequence"] for e in events]
    ids = [json.loads(base64.b64decode(e["body_b64"]))["event_id"] for e in events]
    requested = next(i for i, e in enumerate(events) if e["subject"].endswith(".action_requested"))

    # A flipped byte in the payment's amount: its signature and its sealed hash fail.
    code, output = verify_file(
        tampered(original, tmp_path / "flipped.json", lambda ev: flip_byte(ev, requested))
    )
    assert code == 1
    assert f"sequence {sequences[requested]}" in output
    assert "signature does not match" in output
    assert "bytes differ from the sealed record" in output

    # A dropped event is named by sequence and id.
    code, output = verify_file(tampered(original, tmp_path / "dropped.json", lambda ev: ev.pop(3)))
    assert code == 1
    assert f"sequence {sequences[3]} (event {ids[3]}" in output
    assert "missing from the bundle" in output

    # A reordered pair: named as out of order, and the hash chain breaks there.
    def swap(ev: list[dict[str, Any]]) -> None:
        ev[4], ev[5] = ev[5], ev[4]

    code, output = verify_file(tampered(original, tmp_path / "reordered.json", swap))
    assert code == 1
    assert f"event {ids[4]}" in output
    assert "out of order" in output
    assert "hash chain breaks" in output

    # Swapped contents under the original sequence numbers: the seal names both.
    def relabel(ev: list[dict[str, Any]]) -> None:
        ev[4]["body_b64"], ev[5]["body_b64"] = ev[5]["body_b64"], ev[4]["body_b64"]
        ev[4]["headers"], ev[5]["headers"] = ev[5]["headers"], ev[4]["headers"]
        ev[4]["subject"], ev[5]["subject"] = ev[5]["subject"], ev[4]["subject"]

    code, output = verify_file(tampered(original, tmp_path / "relabelled.json", relabel))
    assert code == 1
    assert f"the seal puts event {ids[4]} at this sequence" in output
    assert f"the seal puts event {ids[5]} at this sequence" in output

    # A forged signature: the bytes re-signed by a key that is not the actor's.
    forger = Identity.generate()

    def forge(ev: list[dict[str, Any]]) -> None:
        body = base64.b64decode(ev[requested]["body_b64"])
        ev[requested]["headers"].update(forger.signature_headers(ev[requested]["subject"], body))

    code, output = verify_file(tampered(original, tmp_path / "forged.json", forge))
    assert code == 1
    assert f"sequence {sequences[requested]} (event {ids[requested]}" in output
    assert f"signer key {forger.public_key} is not registered" in output

    # The forged signature with the forger's key slipped into the actor's key history:
    # the keys that count are the ones the store sealed, and the signature the message
    # was stored with is sealed too.
    data = json.loads(json.dumps(original))
    forge(data["events"])
    actor = json.loads(base64.b64decode(data["events"][requested]["body_b64"]))["actor"]
    for principal in data["principals"]:
        if principal["keys"]["agent_id"] == actor:
            principal["keys"]["key_history"].append(
                {"public_key": forger.public_key, "valid_from": "2000-01-01T00:00:00Z"}
            )
    (tmp_path / "rekeyed.json").write_text(json.dumps(data))
    code, output = verify_file(tmp_path / "rekeyed.json")
    assert code == 1
    assert f"principal {actor}: differs from the sealed record in key_history" in output
    assert "its signature differs from the one it was stored with: re-signed" in output

    # A bundle verified against a pinned key that is not the store's fails.
    assert verify_bundle(bundle, store_key=forger.public_key).violations


async def test_policy_violations_in_the_log_are_named(
    mesh: SecuredMesh, databases: Databases
) -> None:
    store = await mesh.start_eventstore(databases.new("sqlite"))
    await start_claims(mesh)
    manager_identity, manager_nc = await claims_manager(mesh)
    assert mesh.harness_nc is not None
    harness = EventPublisher(mesh.harness_nc.jetstream(), mesh.harness, mesh.topology)

    # 1. An executor reports a payment that policy never approved (it was denied).
    await open_claim(mesh, "rogue", 30_000, fraudulent=True)
    request = await wait_for(mesh, "rogue", ActionRequested)
    await wait_for(mesh, "rogue", CaseClosed)
    await harness.publish(
        ActionCompleted(
            case_id="rogue",
            actor="harness",
            payload=ActionCompletedPayload(
                request_id=request.event_id, action_type="issue_payment"
            ),
        )
    )

    # 2. A manager asks for a payment and grants it herself.
    # A claim and its screening, but no adjudication (the step is named otherwise).
    await open_case(mesh, "selfie", 500_000)
    await screen(mesh, "selfie", 1, step="fraud_check")
    own = ActionRequested(
        case_id="selfie",
        actor="maria",
        payload=ActionRequestedPayload(
            action_type="issue_payment",
            parameters={"amount": 250_000, "currency": "EUR", "payee_account": "DE89-0001"},
            evidence={"fraud_score": 1},
        ),
    )
    maria = EventPublisher(manager_nc.jetstream(), manager_identity, mesh.topology, nc=manager_nc)
    await maria.publish(own)
    required = await wait_for(mesh, "selfie", ApprovalRequired)
    await maria.publish(
        ApprovalGranted(
            case_id="selfie",
            actor="maria",
            payload=ApprovalGrantedPayload(
                request_id=own.event_id,
                approver="maria",
                request_digest=required.payload.request_digest,  # type: ignore[attr-defined]
            ),
        )
    )

    # 3. A revoked agent's key, stolen, signs an event after the revocation.
    stolen = Identity.generate()
    card = idle_card("adjudicator-2")
    await mesh.enrol(card, stolen)
    operators = await mesh.operator_client()
    await operators.change_status("revoke", "adjudicator-2", "key leaked", mesh.operator)
    injected = CaseClosed(
        case_id="rogue", actor="adjudicator-2", payload=CaseClosedPayload(outcome="forged")
    )
    await EventPublisher(mesh.harness_nc.jetstream(), stolen, mesh.topology).publish(injected)

    report = verify_bundle(await build_bundle(mesh.harness_nc, mesh.topology, None))
    problems = [str(v) for v in report.violations]
    assert any(
        f"executed request {request.event_id} without an approving decision" in p for p in problems
    ), problems
    assert any("maria approves its own request (self-approval)" in p for p in problems)
    assert any(
        f"event {injected.event_id}" in p and "signed by revoked agent adjudicator-2" in p
        for p in problems
    )
    assert len(problems) == 3, problems

    # The projection flags the forged event and does not let it close anything.
    detail = (await store_request(mesh.harness_nc, mesh.topology, "case", _case("rogue"))).detail
    assert detail is not None
    assert detail.case.outcome == "denied"
    assert detail.case.flagged_events == 1
    timeline = await store_request(mesh.harness_nc, mesh.topology, "timeline", _case("rogue"))
    flagged = [e for e in timeline.timeline if not e.verified]
    assert [e.event_id for e in flagged] == [injected.event_id]
    assert "revoked" in (flagged[0].problem or "")
    assert store.last_checkpoint > 0


def _case(case_id: str) -> CaseRequest:
    return CaseRequest(case_id=case_id)


def idle_card(agent_id: str) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=agent_id,
        version="1",
        owner=KNOWN_OWNER,
        purpose="closes cases",
        produces=["case_closed"],
    )
