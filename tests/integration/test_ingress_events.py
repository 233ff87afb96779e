"""Outside systems continue their cases through the ingress, against a real nats-server
under the registry's enforcement: the opener or a party it named adds evidence, once
per event id; everything else is refused with its reasons and kept."""

from __future__ import annotations

import json
from typing import Any

import httpx
import msgspec
import nats.errors
import pytest

from contracts.events.case import CaseClosed, CaseClosedPayload, EvidenceReceived
from contracts.ingress import IngressReply
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._runtime.dead_letters import read_dead_letters
from tests.integration.test_ingress import (
    ERP_TOKEN,
    TOKEN,
    SecuredIngress,
    claim,
    dead_letter_count,
    secured,
)

__all__ = ["secured"]  # the fixture, used by name

REPORT = {
    "report_number": "PD-20261001",
    "police_force": "Politie Amsterdam",
    "filed_on": "2026-10-02",
    "summary": "rear-ended at a red light",
}


def event(event_id: str, data: dict[str, Any] | None = None, *, case: Any = None) -> bytes:
    body: dict[str, Any] = {**(case or {}), "event_id": event_id, "kind": "police_report"}
    body["data"] = REPORT if data is None else data
    return json.dumps(body).encode()


async def add(secured: SecuredIngress, source: str, body: bytes) -> IngressReply:
    subject = secured.topology.subjects.service_as("ingress", "events", source)
    msg = await secured.systems[source].request(subject, body, timeout=10)
    return msgspec.json.decode(msg.data, type=IngressReply)


async def post(secured: SecuredIngress, path: str, body: bytes, token: str) -> httpx.Response:
    base = f"http://127.0.0.1:{secured.service.http_port}"
    async with httpx.AsyncClient(base_url=base) as http:
        return await http.post(
            path, content=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


async def open_claim(secured: SecuredIngress, ref: str, parties: list[str]) -> str:
    body = json.loads(claim(ref))
    body["parties"] = parties
    msg = await secured.systems["crm"].request(
        secured.topology.subjects.service("ingress", "crm"), json.dumps(body).encode(), timeout=10
    )
    reply = msgspec.json.decode(msg.data, type=IngressReply)
    assert reply.ok, reply.errors
    assert reply.case_id is not None
    return reply.case_id


async def evidence(secured: SecuredIngress, case_id: str) -> list[EvidenceReceived]:
    history = await read_case(secured.harness.jetstream(), secured.topology, case_id)
    return [s.event for s in history if isinstance(s.event, EvidenceReceived)]


async def test_the_opener_and_a_named_party_add_evidence_once_per_event_id(
    secured: SecuredIngress,
) -> None:
    case_id = await open_claim(secured, "EV-1", parties=["erp"])
    ours = {"case_source": "crm", "external_ref": "EV-1"}
    added = await add(secured, "crm", event("R-1", case=ours))
    assert added.ok, added.errors
    assert (added.case_id, added.duplicate) == (case_id, False)
    again = await add(secured, "crm", event("R-1", case=ours))
    assert (again.ok, again.duplicate, again.event_id) == (True, True, added.event_id)

    # The party, over HTTP with its own token, on the opener's URL of the case.
    reply = await post(secured, "/v1/cases/crm/EV-1/events", event("ERP-7"), ERP_TOKEN)
    assert reply.status_code == 201, reply.text
    retried = await post(secured, "/v1/cases/crm/EV-1/events", event("ERP-7"), ERP_TOKEN)
    assert retried.status_code == 200, retried.text
    assert retried.json()["event_id"] == reply.json()["event_id"]

    [first, second] = await evidence(secured, case_id)
    assert first.actor == second.actor == "ingress"
    assert (first.payload.source, first.payload.external_event_id) == ("crm", "R-1")
    assert (second.payload.source, second.payload.external_event_id) == ("erp", "ERP-7")
    assert first.payload.kind == "police_report"
    assert first.payload.data == REPORT
    assert first.correlation_id == second.correlation_id
    assert await dead_letter_count(secured.harness, secured.topology) == 0


async def test_what_a_case_does_not_take_is_refused_with_reasons_and_kept(
    secured: SecuredIngress,
) -> None:
    case_id = await open_claim(secured, "EV-2", parties=[])
    ours = {"case_source": "crm", "external_ref": "EV-2"}
    assert (await add(secured, "crm", event("R-1", case=ours))).ok
    refusals = {
        "conflict": await add(secured, "crm", event("R-1", {**REPORT, "summary": "x"}, case=ours)),
        "bad data": await add(
            secured, "crm", event("R-2", {**REPORT, "report_number": "1"}, case=ours)
        ),
        "no party": await add(secured, "erp", event("E-1", case=ours)),
        "no case": await add(
            secured, "crm", event("R-3", case={"case_source": "crm", "external_ref": "NONE"})
        ),
        "bad kind": await add(
            secured,
            "crm",
            json.dumps({**ours, "event_id": "R-4", "kind": "x", "data": {}}).encode(),
        ),
    }
    codes = {name: [(p.path, p.code) for p in r.problems] for name, r in refusals.items()}
    assert codes == {
        "conflict": [("$.event_id", "conflict")],
        "bad data": [("$.data.report_number", "pattern")],
        "no party": [("$.external_ref", "not_found")],
        "no case": [("$.external_ref", "not_found")],
        "bad kind": [("$.kind", "unknown_kind")],
    }
    # Not a party and no such case read the same: no oracle of others' cases.
    assert refusals["no party"].errors[0].replace("EV-2", "NONE") == refusals["no case"].errors[0]
    assert all(r.dead_letter is not None for r in refusals.values())
    letters = await read_dead_letters(secured.harness.jetstream(), secured.topology)
    assert any("sent before with other content" in letter.reason for letter in letters)

    # The URL names the case; the body may not name another.
    smuggled = await post(
        secured, "/v1/cases/crm/EV-2/events", event("R-5", case={"case_source": "erp"}), TOKEN
    )
    assert smuggled.status_code == 422
    assert smuggled.json()["problems"][0]["path"] == "$.case_source"
    stranger = await post(secured, "/v1/cases/crm/EV-2/events", event("R-6"), "wrong")
    assert stranger.status_code == 401

    # A closed case takes nothing more.
    await EventPublisher(
        secured.harness.jetstream(), secured.harness_identity, secured.topology, timeout=5
    ).publish(
        CaseClosed(case_id=case_id, actor="harness", payload=CaseClosedPayload(outcome="paid"))
    )
    late = await post(secured, "/v1/cases/crm/EV-2/events", event("R-7"), TOKEN)
    assert late.status_code == 409
    assert late.json()["problems"][0]["code"] == "case_closed"
    assert len(await evidence(secured, case_id)) == 1

    # The broker refuses erp the subject of crm's events: it cannot send as crm.
    with pytest.raises(nats.errors.Error):
        await secured.systems["erp"].request(
            secured.topology.subjects.service_as("ingress", "events", "crm"),
            event("R-8", case=ours),
            timeout=1,
        )
