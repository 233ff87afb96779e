"""The status an outside system reads of a case it opened: folded from the log, only of
its own cases, and nothing but the status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jsonschema
import msgspec
import pytest

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    ApprovalRequiredPayload,
    CaseClosed,
    CaseClosedPayload,
    CaseEscalated,
    CaseEscalatedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
    DecisionProvenance,
)
from contracts.codec import encode
from contracts.envelope import Event
from contracts.ingress import CASE_STATES, CaseStatusReply, CaseStatusRequest
from contracts.schema_export import SCHEMA_DIR
from contracts.subjects import Subjects
from mesh._broker.stored_messages import RawMessage
from services.ingress.domain import DEFAULT_LIMITS
from services.ingress.http import http_app
from services.ingress.problems import Refusal
from services.ingress.status import Trusted, case_status, not_found, status_request
from services.ingress.tokens import BearerTokens

SUBJECTS = Subjects("mesh")
T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
PROVENANCE = DecisionProvenance(policy_bundle_hash="sha256:00")


def opened(case_id: str = "crm-CLM-7", **changes: Any) -> CaseOpened:
    payload = {"kind": "insurance_claim", "source": "crm", "external_ref": "CLM-7"}
    actor = changes.pop("actor", "ingress")
    return CaseOpened(
        case_id=case_id,
        actor=actor,
        payload=CaseOpenedPayload(**{**payload, **changes}, data={"claimant": "A. Jansen"}),
    )


def log(*events: Event | tuple[str, bytes]) -> list[RawMessage]:
    """The messages of a case in log order, a minute apart; a (subject, bytes) pair is
    a message that is not a readable event."""
    messages = []
    for number, item in enumerate(events, start=1):
        if isinstance(item, tuple):
            subject, body = item
        else:
            assert item.case_id is not None
            subject, body = SUBJECTS.case_event(item.case_id, item.event_name()), encode(item)
        at = T0 + timedelta(minutes=number - 1)
        messages.append(RawMessage(number, subject, body, {}, at))
    return messages


def trust_all(_: RawMessage, __: Event) -> bool:
    return True


def status(
    *events: Event | tuple[str, bytes], source: str = "crm", trusted: Trusted = trust_all
) -> CaseStatusReply:
    return case_status(source, "CLM-7", log(*events), "ingress", trusted)


def requested() -> ActionRequested:
    payload = ActionRequestedPayload(
        action_type="issue_payment",
        parameters={"amount_cents": 42_001},
        evidence={"fraud_score": 0.9},
        rationale="internal reasoning",
    )
    return ActionRequested(case_id="crm-CLM-7", actor="adjudicator", payload=payload)


def approval_required(request_id: str) -> ApprovalRequired:
    payload = ApprovalRequiredPayload(
        request_id=request_id,
        action_type="issue_payment",
        provenance=PROVENANCE,
        approver_role="claims_manager",
        deadline=T0 + timedelta(days=1),
    )
    return ApprovalRequired(case_id="crm-CLM-7", actor="policy", payload=payload)


def approved(request_id: str) -> ActionApproved:
    payload = ActionDecisionPayload(
        request_id=request_id, action_type="issue_payment", provenance=PROVENANCE
    )
    return ActionApproved(case_id="crm-CLM-7", actor="policy", payload=payload)


def closed(outcome: str = "paid") -> CaseClosed:
    payload = CaseClosedPayload(outcome=outcome, summary="payment PAY-1 to DE89")
    return CaseClosed(case_id="crm-CLM-7", actor="payment", payload=payload)


def escalated() -> CaseEscalated:
    payload = CaseEscalatedPayload(step="payment", reason="the gateway is down")
    return CaseEscalated(case_id="crm-CLM-7", actor="payment", payload=payload)


def step() -> CaseStepCompleted:
    payload = CaseStepCompletedPayload(
        step="fraud_screening", outcome="high risk", evidence={"fraud_score": 0.9}
    )
    return CaseStepCompleted(case_id="crm-CLM-7", actor="screener", payload=payload)


def test_a_case_just_opened_is_open() -> None:
    reply = status(opened())
    assert reply.ok
    assert (reply.case_id, reply.external_ref, reply.kind) == (
        "crm-CLM-7",
        "CLM-7",
        "insurance_claim",
    )
    assert (reply.status, reply.outcome) == ("open", None)
    assert reply.opened_at == reply.updated_at == T0
    assert (reply.errors, reply.problems) == ([], [])


def test_the_status_follows_the_case_through_approval_to_its_close() -> None:
    request = requested()
    history: list[Event] = [opened(), step(), request]
    assert status(*history).status == "open"
    history.append(approval_required(request.event_id))
    assert status(*history).status == "awaiting_approval"
    history.append(approved(request.event_id))
    assert status(*history).status == "open"
    history.append(closed())
    reply = status(*history)
    assert (reply.status, reply.outcome) == ("closed", "paid")
    assert reply.opened_at == T0
    assert reply.updated_at == T0 + timedelta(minutes=len(history) - 1)


def test_an_escalated_case_stays_escalated_until_closed_and_the_first_close_stands() -> None:
    assert status(opened(), escalated()).status == "escalated"
    reply = status(opened(), escalated(), closed("denied"), closed("paid"), escalated())
    assert (reply.status, reply.outcome) == ("closed", "denied")


def test_an_event_that_does_not_hold_up_moves_nothing() -> None:
    """A close by an agent whose card does not let it close (or whose signature fails)
    is skipped, as the event store flags it: the case stays open, and the real close
    after it is the one that counts."""
    forged = CaseClosed(
        case_id="crm-CLM-7", actor="intruder", payload=CaseClosedPayload(outcome="paid")
    )

    def only_real(_: RawMessage, event: Event) -> bool:
        return event.actor != "intruder"

    assert status(opened(), forged, trusted=only_real).status == "open"
    reply = status(opened(), forged, closed("rejected"), trusted=only_real)
    assert (reply.status, reply.outcome) == ("closed", "rejected")
    # An opening that does not hold up opens nothing.
    assert not status(opened(), trusted=lambda _m, e: e.event_name() != "case_opened").ok


def test_only_the_policys_decision_ends_a_wait_for_a_person() -> None:
    request = requested()
    waiting = [opened(), request, approval_required(request.event_id)]
    granted = ApprovalGranted(
        case_id="crm-CLM-7",
        actor="clerk",
        payload=ApprovalGrantedPayload(
            request_id=request.event_id, approver="clerk", request_digest="x"
        ),
    )
    # A person's answer the policy has not (or not yet) accepted leaves it waiting.
    assert status(*waiting, granted).status == "awaiting_approval"
    assert status(*waiting, granted, approved(request.event_id)).status == "open"


def test_nothing_but_the_status_leaves_the_mesh() -> None:
    request = requested()
    reply = status(opened(), step(), request, approval_required(request.event_id), closed())
    document = json.loads(msgspec.json.encode(reply))
    assert set(document) == set(CaseStatusReply.__struct_fields__)
    text = json.dumps(document)
    for internal in ("fraud", "0.9", "internal reasoning", "adjudicator", "PAY-1", "Jansen"):
        assert internal not in text
    assert document["status"] in CASE_STATES


def test_another_sources_case_is_not_found_as_if_there_were_none() -> None:
    nothing = case_status("crm", "CLM-7", [], "ingress", trust_all)
    assert nothing == not_found("CLM-7")
    assert not nothing.ok
    assert [(p.path, p.code) for p in nothing.problems] == [("$.external_ref", "not_found")]
    assert nothing.errors == [nothing.problems[0].message]
    assert nothing.case_id is None
    assert nothing.status is None
    # erp-CLM-7 exists, opened for crm (a forged id prefix): not erp's to read.
    foreign = [opened("erp-CLM-7")]
    assert case_status("erp", "CLM-7", log(*foreign), "ingress", trust_all) == nothing
    opened_elsewhere = [
        opened(actor="harness"),  # not opened by the ingress
        opened(source="erp"),  # the ingress opened it for another source
        opened(external_ref="CLM-8"),  # for another reference
    ]
    for opening in opened_elsewhere:
        assert status(opening) == nothing, opening


def test_only_the_first_message_on_the_opening_subject_opens_the_case() -> None:
    garbage = (SUBJECTS.case_event("crm-CLM-7", "case_opened"), b"{not an event")
    assert status(garbage, opened()) == not_found("CLM-7")
    assert status(opened(actor="harness"), opened()) == not_found("CLM-7")
    # An opening's bytes under another event's subject are not an opening.
    misfiled = (SUBJECTS.case_event("crm-CLM-7", "case_step_completed"), encode(opened()))
    assert status(misfiled) == not_found("CLM-7")


def test_what_was_written_before_the_opening_or_cannot_be_read_moves_nothing() -> None:
    noise = (SUBJECTS.case_event("crm-CLM-7", "case_closed"), b"[]")
    reply = status(closed("squatted"), opened(), noise)
    assert (reply.status, reply.outcome) == ("open", None)
    assert reply.opened_at == reply.updated_at == T0 + timedelta(minutes=1)
    # An event of another case, stored under this one's subject, moves nothing either.
    other = CaseClosed(case_id="crm-CLM-9", actor="payment", payload=CaseClosedPayload(outcome="x"))
    misplaced = (SUBJECTS.case_event("crm-CLM-7", "case_closed"), encode(other))
    assert status(opened(), misplaced).status == "open"


def refused(source: str, asked: bytes | dict[str, Any]) -> list[tuple[str, str]]:
    outcome = status_request(source, asked, DEFAULT_LIMITS)
    assert isinstance(outcome, Refusal), asked
    assert len(outcome.errors) == len(outcome.problems)
    return [(p.path, p.code) for p in outcome.problems]


def test_a_status_request_is_read_as_strictly_as_its_schema() -> None:
    assert status_request("crm", b'{"external_ref": "CLM-7"}', DEFAULT_LIMITS) == (
        CaseStatusRequest(external_ref="CLM-7")
    )
    assert status_request("crm", {"external_ref": "CLM-7"}, DEFAULT_LIMITS) == (
        CaseStatusRequest(external_ref="CLM-7")
    )
    assert refused("crm", b"{not json") == [("$", "not_json")]
    assert refused("crm", b"[]") == [("$", "type")]
    assert refused("crm", b"{}") == [("$.external_ref", "required")]
    assert refused("crm", b'{"external_ref": "a b"}') == [("$.external_ref", "pattern")]
    assert refused("crm", b'{"external_ref": "CLM-7\\n"}') == [("$.external_ref", "pattern")]
    assert refused("crm", b'{"external_ref": 7}') == [("$.external_ref", "type")]
    assert refused("crm", b'{"external_ref": "C", "case_id": "x"}') == [
        ("$.case_id", "unknown_field")
    ]
    assert refused("crm", {"external_ref": "x" * 65}) == [("$.external_ref", "pattern")]
    assert refused("a.b", b'{"external_ref": "CLM-7"}') == [("$", "invalid_source")]
    assert refused("crm", b"[" * 100 + b"]" * 100) == [("$", "too_deep")]


SCHEMAS = {
    name: json.loads((SCHEMA_DIR / f"{name}.json").read_text())
    for name in ("ingress_case_status_request", "ingress_case_status_reply")
}


@pytest.mark.parametrize(
    "reply",
    [
        status(opened(), closed()),
        status(opened()),
        not_found("CLM-7"),
    ],
)
def test_every_reply_validates_against_the_committed_schema(reply: CaseStatusReply) -> None:
    jsonschema.validate(
        json.loads(msgspec.json.encode(reply)), SCHEMAS["ingress_case_status_reply"]
    )


def test_the_request_schema_accepts_what_the_ingress_accepts() -> None:
    schema = SCHEMAS["ingress_case_status_request"]
    jsonschema.validate({"external_ref": "CLM-7"}, schema)
    for bad in ({}, {"external_ref": "a b"}, {"external_ref": "C", "extra": 1}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def http_client(answer: CaseStatusReply) -> tuple[httpx.AsyncClient, list[tuple[str, str]]]:
    """The HTTP app in-process (no socket), answering every status with `answer`."""
    asked: list[tuple[str, str]] = []

    async def submit(*_: object) -> Any:
        raise AssertionError("a status request opens nothing")

    async def case_status_of(source: str, external_ref: str) -> CaseStatusReply:
        asked.append((source, external_ref))
        return answer

    app = http_app(
        submit,
        BearerTokens({"crm": "crm-token", "erp": "erp-token"}),
        status=case_status_of,
        max_body_bytes=1024,
        drain_bytes=1024,
        healthy=lambda: True,
    )
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://ingress"), asked


async def test_over_http_the_status_needs_the_sources_token() -> None:
    client, asked = http_client(status(opened()))
    crm = {"Authorization": "Bearer crm-token"}
    async with client:
        found = await client.get("/v1/cases/crm/CLM-7", headers=crm)
        assert found.status_code == 200
        assert msgspec.json.decode(found.content, type=CaseStatusReply).status == "open"
        for headers in ({}, {"Authorization": "Bearer erp-token"}, {"Authorization": "crm-token"}):
            refused_answer = await client.get("/v1/cases/crm/CLM-7", headers=headers)
            assert refused_answer.status_code == 401, headers
            assert refused_answer.json()["problems"][0]["code"] == "unauthorized"
        assert (await client.get("/v1/cases/nobody/CLM-7", headers=crm)).status_code == 401
    assert asked == [("crm", "CLM-7")]  # nobody unauthorized got as far as the log


@pytest.mark.parametrize(
    ("code", "http_status"),
    [("not_found", 404), ("pattern", 422), ("unavailable", 503), ("internal", 500)],
)
async def test_over_http_a_refusal_has_its_status(code: str, http_status: int) -> None:
    found = not_found("CLM-7").problems[0]
    answer = CaseStatusReply(
        ok=False, errors=["x"], problems=[msgspec.structs.replace(found, code=code)]
    )
    client, _ = http_client(answer)
    async with client:
        headers = {"Authorization": "Bearer crm-token"}
        response = await client.get("/v1/cases/crm/CLM-7", headers=headers)
    assert response.status_code == http_status
    assert response.json()["problems"][0]["code"] == code
