"""The ingress against a real nats-server: replies never land in the log, hostile input
is answered and kept, valid input opens its case once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats.errors
import pytest
from nats.aio.client import Client

from contracts.events.case import CaseClosed, CaseClosedPayload, CaseOpened, CaseOpenedPayload
from contracts.ingress import CaseStatusReply, IngressReply
from mesh._broker.connection import close, connect, refused
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.permissions import authorization_config
from mesh._broker.provisioning import ensure_stream
from mesh._broker.publisher import EventPublisher
from mesh._broker.reading import read_case
from mesh._broker.topology import Topology
from mesh._runtime.dead_letters import DeadLetter, read_dead_letters
from mesh._runtime.replies import is_inbox
from mesh._trust.identity import Identity
from mesh._trust.onboarding import inbox_prefix
from mesh._trust.principals import PrincipalRole, StaticPrincipal, write_principals
from mesh.settings import MeshSettings
from mesh.testing import eventually, unique_root
from services.ingress.body import CUT_OFF, DIGEST, SIZE, TRUNCATED
from services.ingress.service import IngressService
from services.ingress.settings import IngressSettings
from services.registry.app import RegistryService
from services.registry.settings import RegistrySettings

TOKEN = "crm-token-1"
MIB = 1024 * 1024


def claim(ref: str, **changes: Any) -> bytes:
    data = {
        "policy_number": "P-12345",
        "claimant": "A. Jansen",
        "claim_type": "auto",
        "amount_cents": 42_001,
        "incident_date": "2026-10-01",
        "payee_account": "DE89-12345678",
        **changes,
    }
    return json.dumps({"kind": "insurance_claim", "external_ref": ref, "data": data}).encode()


@pytest.fixture
async def ingress(nats_url: str, provisioned: Topology) -> AsyncIterator[IngressService]:
    nc = await connect(nats_url, name="ingress")
    service = IngressService(
        nc,
        Identity.generate(),
        MeshSettings(subject_root=provisioned.root),
        IngressSettings(http_port=0, http_tokens={"crm": TOKEN}),
        provisioned,
    )
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await nc.close()


async def ask(nc: Client, topology: Topology, body: bytes, source: str = "crm") -> IngressReply:
    subject = topology.subjects.service("ingress", source)
    msg = await nc.request(subject, body, timeout=10)
    return msgspec.json.decode(msg.data, type=IngressReply)


async def post(
    service: IngressService, body: bytes, token: str | None = TOKEN, source: str = "crm"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{service.http_port}") as http:
        return await http.post(f"/v1/cases/{source}", content=body, headers=headers, timeout=30)


async def kept(nc: Client, topology: Topology, sequence: int | None) -> DeadLetter:
    assert sequence is not None
    [letter] = await read_dead_letters(nc.jetstream(), topology, start=sequence, limit=1)
    assert letter.sequence == sequence
    assert letter.kind == "invalid_input"
    assert letter.reason
    return letter


async def dead_letter_count(nc: Client, topology: Topology) -> int:
    info = await nc.jetstream().stream_info(topology.dead_letter_stream)
    return int(info.state.messages)


def test_only_literal_inbox_subjects_take_replies() -> None:
    assert is_inbox("_INBOX.abc")
    assert is_inbox("_INBOX.crm.abc.1")
    for subject in ("mesh.case.c-1.case_opened", "_INBOX", "_INBOX.", "_INBOX.>", "_INBOX.a.*"):
        assert not is_inbox(subject), subject
    assert not is_inbox("_INBOX.a b")
    assert not is_inbox("x._INBOX.a")


async def test_a_reply_subject_in_the_log_gets_no_reply_and_nothing_lands_there(
    nc: Client, provisioned: Topology, ingress: IngressService, caplog: pytest.LogCaptureFixture
) -> None:
    subject = provisioned.subjects.service("ingress", "crm")
    own_case = provisioned.subjects.case_event("crm-CLM-9", "case_opened")
    other_case = provisioned.subjects.case_event("victim-1", "case_closed")
    caplog.set_level(logging.WARNING, logger="mesh._runtime.replies")
    # What an outside system might name as its reply subject, with what it sends.
    await nc.publish(subject, claim("CLM-9"), reply=own_case)
    await nc.publish(subject, claim("CLM-10"), reply=other_case)
    await nc.publish(subject, b"{not json", reply=own_case)
    await nc.publish(subject, claim("CLM-11"), reply="_INBOX.>")
    await nc.publish(subject, claim("CLM-12"))  # no reply subject: opened, not answered
    # Requests are taken in order: once this one is answered, the others were handled.
    assert (await ask(nc, provisioned, claim("CLM-13"))).ok

    info = await nc.jetstream().stream_info(provisioned.cases_stream, subjects_filter=">")
    opened = {
        provisioned.subjects.case_event(f"crm-CLM-{n}", "case_opened"): 1 for n in range(9, 14)
    }
    assert info.state.subjects == opened
    assert info.state.messages == len(opened)
    for number in range(9, 14):
        [stored] = await read_case(nc.jetstream(), provisioned, f"crm-CLM-{number}")
        assert stored.event.actor == "ingress"  # the signed event, not a reply
    refusals = [r.getMessage() for r in caplog.records if "not answering" in r.getMessage()]
    assert len(refusals) == 4  # CLM-9, CLM-10, the refused input, CLM-11
    assert await dead_letter_count(nc, provisioned) == 1  # the refused input, kept


async def test_deep_json_is_answered_and_kept(
    nc: Client, provisioned: Topology, ingress: IngressService
) -> None:
    deep = b'{"kind": "insurance_claim", "external_ref": "D-1", "data": ' + (
        b"[" * 5_000 + b"]" * 5_000 + b"}"
    )
    reply = await ask(nc, provisioned, deep)
    assert not reply.ok
    assert [p.code for p in reply.problems] == ["too_deep"]
    assert (await kept(nc, provisioned, reply.dead_letter)).body == deep

    response = await post(ingress, deep)
    assert response.status_code == 400
    answer = msgspec.json.decode(response.content, type=IngressReply)
    assert answer.problems[0].code == "too_deep"
    letter = await kept(nc, provisioned, answer.dead_letter)
    assert letter.body == deep
    assert letter.reason == "; ".join(answer.errors)


async def test_a_huge_http_body_is_413_and_kept_truncated_with_size_and_digest(
    nc: Client, provisioned: Topology, ingress: IngressService
) -> None:
    huge = claim("H-1", description="x" * (10 * MIB))
    response = await post(ingress, huge)
    assert response.status_code == 413
    answer = msgspec.json.decode(response.content, type=IngressReply)
    assert [p.code for p in answer.problems] == ["too_large"]
    letter = await kept(nc, provisioned, answer.dead_letter)
    assert letter.body == huge[: ingress.ingress.dead_letter_keep_bytes]
    assert letter.headers[SIZE] == str(len(huge))
    assert letter.headers[DIGEST] == f"sha256:{hashlib.sha256(huge).hexdigest()}"
    assert letter.headers[TRUNCATED] == "true"
    assert CUT_OFF not in letter.headers

    # Over NATS, the broker's max_payload (1 MB) is the bound; the ingress's is lower.
    large = claim("H-2", description="y" * 200_000)
    reply = await ask(nc, provisioned, large)
    assert [p.code for p in reply.problems] == ["too_large"]
    letter = await kept(nc, provisioned, reply.dead_letter)
    assert letter.body == large[: ingress.ingress.dead_letter_keep_bytes]
    assert letter.headers[SIZE] == str(len(large))


async def test_a_number_sent_as_a_string_is_refused_where_it_is(
    nc: Client, provisioned: Topology, ingress: IngressService
) -> None:
    body = claim("S-1", amount_cents="64250")
    reply = await ask(nc, provisioned, body)
    assert not reply.ok
    assert [(p.path, p.code) for p in reply.problems] == [("$.data.amount_cents", "type")]
    assert (await kept(nc, provisioned, reply.dead_letter)).body == body

    response = await post(ingress, body)
    assert response.status_code == 422
    assert response.json()["problems"][0]["path"] == "$.data.amount_cents"
    assert await read_case(nc.jetstream(), provisioned, "crm-S-1") == []


async def test_a_valid_claim_opens_its_case_once(
    nc: Client, provisioned: Topology, ingress: IngressService
) -> None:
    created = await post(ingress, claim("V-1"))
    assert created.status_code == 201
    assert created.json()["case_id"] == "crm-V-1"
    again = await post(ingress, claim("V-1"))
    assert again.status_code == 200
    assert again.json()["duplicate"] is True
    assert again.json()["event_id"] == created.json()["event_id"]
    over_nats = await ask(nc, provisioned, claim("V-1"))
    assert over_nats.duplicate
    assert over_nats.event_id == created.json()["event_id"]
    assert len(await read_case(nc.jetstream(), provisioned, "crm-V-1")) == 1
    assert await dead_letter_count(nc, provisioned) == 0


async def test_a_stranger_is_401_and_not_kept(
    nc: Client, provisioned: Topology, ingress: IngressService
) -> None:
    assert (await post(ingress, claim("X-1"), token=None)).status_code == 401
    assert (await post(ingress, claim("X-1"), token="guess")).status_code == 401
    assert (await post(ingress, claim("X-1"), source="erp")).status_code == 401
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ingress.http_port}") as http:
        bare = await http.post(
            "/v1/cases/crm", content=claim("X-1"), headers={"Authorization": TOKEN}
        )
        assert bare.status_code == 401  # a token without its scheme
        lower = await http.post(
            "/v1/cases/crm", content=claim("X-2"), headers={"Authorization": f"bearer {TOKEN}"}
        )
        assert lower.status_code == 201
    assert await dead_letter_count(nc, provisioned) == 0
    assert await read_case(nc.jetstream(), provisioned, "crm-X-1") == []


async def test_a_subject_tail_is_not_taken_for_a_source(
    nc: Client, provisioned: Topology, ingress: IngressService
) -> None:
    subject = provisioned.subjects.service("ingress", "evil") + ".crm"
    msg = await nc.request(subject, claim("E-1"), timeout=10)
    reply = msgspec.json.decode(msg.data, type=IngressReply)
    assert [p.code for p in reply.problems] == ["invalid_source"]
    assert (await kept(nc, provisioned, reply.dead_letter)).headers["Mesh-Dlq-Source"] == (
        "evil.crm"
    )
    assert await read_case(nc.jetstream(), provisioned, "crm-E-1") == []


async def test_only_a_mesh_that_cannot_store_is_503(
    nc: Client, provisioned: Topology, ingress: IngressService
) -> None:
    # Without its dead-letter stream the mesh cannot keep refused input: that is an
    # outage (retry later), not the sender's fault.
    await nc.jetstream().delete_stream(provisioned.dead_letter_stream)
    response = await post(ingress, b"{not json")
    assert response.status_code == 503
    assert response.json()["problems"][0]["code"] == "unavailable"
    reply = await ask(nc, provisioned, b"{not json")
    assert [p.code for p in reply.problems] == ["unavailable"]
    assert (await post(ingress, claim("O-1"))).status_code == 201  # the log still takes cases


# ---------------------------------------------------------------- the status of a case
# Under the registry's authorization, as an outside system meets the mesh: its own nkey,
# its own subjects, replies only under `_INBOX.<source>.`.

ERP_TOKEN = "erp-token-1"


@dataclass
class SecuredIngress:
    server: EmbeddedNats
    topology: Topology
    service: IngressService
    harness: Client  # a mesh service: may write any case event but decisions
    harness_identity: Identity
    systems: dict[str, Client]  # outside systems, by source

    async def status(self, source: str, external_ref: str) -> CaseStatusReply:
        subject = self.topology.subjects.service_as("ingress", "status", source)
        body = json.dumps({"external_ref": external_ref}).encode()
        msg = await self.systems[source].request(subject, body, timeout=10)
        return msgspec.json.decode(msg.data, type=CaseStatusReply)

    async def get(self, path: str, token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.service.http_port}") as http:
            return await http.get(path, headers=headers, timeout=30)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[SecuredIngress]:
    topology = Topology(unique_root())
    identities = {
        name: Identity.generate() for name in ("registry", "ingress", "harness", "crm", "erp")
    }
    roles: dict[str, PrincipalRole] = {
        "registry": "registry",  # the cards a status read checks events against
        "ingress": "ingress",
        "harness": "service",
        "crm": "external",
        "erp": "external",
    }
    principals = [
        StaticPrincipal(name, identities[name].public_key, role) for name, role in roles.items()
    ]
    (tmp_path / "auth.conf").write_text(authorization_config([], principals, topology))
    write_principals(tmp_path / "principals.json", principals)
    server = EmbeddedNats(tmp_path, extra_config='include "auth.conf"')
    await asyncio.to_thread(server.start)
    connections: list[Client] = []
    service: IngressService | None = None
    registry: RegistryService | None = None
    try:

        async def connect_as(name: str) -> Client:
            nc = await connect(
                server.url, name=name, identity=identities[name], inbox_prefix=inbox_prefix(name)
            )
            connections.append(nc)
            return nc

        harness = await connect_as("harness")
        for config in topology.streams():
            await ensure_stream(harness.jetstream(), config)
        settings = MeshSettings(subject_root=topology.root, request_timeout=5.0)
        registry = RegistryService(
            await connect_as("registry"),
            identities["registry"],
            settings,
            RegistrySettings(
                principals_file=tmp_path / "principals.json",
                auth_file=tmp_path / "auth.conf",
                server_pid_file=server.pid_path,
                server_monitor_url=f"http://127.0.0.1:{server.monitor_port}",
            ),
            topology,
        )
        await registry.start()
        service = IngressService(
            await connect_as("ingress"),
            identities["ingress"],
            settings,
            IngressSettings(http_port=0, http_tokens={"crm": TOKEN, "erp": ERP_TOKEN}),
            topology,
        )
        await service.start()
        await asyncio.wait_for(service.keys.loaded.wait(), 10)
        systems = {source: await connect_as(source) for source in ("crm", "erp")}
        yield SecuredIngress(server, topology, service, harness, identities["harness"], systems)
    finally:
        if service is not None:
            await service.stop()
        if registry is not None:
            await registry.stop()
        for nc in connections:
            await close(nc)
        await asyncio.to_thread(server.stop)


async def test_a_system_reads_the_status_of_its_own_case_and_no_other(
    secured: SecuredIngress,
) -> None:
    crm, erp = secured.systems["crm"], secured.systems["erp"]
    opening = await crm.request(
        secured.topology.subjects.service("ingress", "crm"), claim("ST-1"), timeout=10
    )
    assert msgspec.json.decode(opening.data, type=IngressReply).case_id == "crm-ST-1"

    reply = await secured.status("crm", "ST-1")
    assert reply.ok, reply.errors
    assert (reply.case_id, reply.kind, reply.status, reply.outcome) == (
        "crm-ST-1",
        "insurance_claim",
        "open",
        None,
    )
    assert reply.opened_at is not None
    assert reply.opened_at == reply.updated_at

    # The mesh works the case and closes it.
    publisher = EventPublisher(
        secured.harness.jetstream(), secured.harness_identity, secured.topology, timeout=5
    )
    await publisher.publish(
        CaseClosed(
            case_id="crm-ST-1",
            actor="harness",
            payload=CaseClosedPayload(outcome="paid", summary="payment PAY-1"),
        )
    )
    reply = await secured.status("crm", "ST-1")
    assert (reply.status, reply.outcome) == ("closed", "paid")
    assert reply.updated_at is not None
    assert reply.opened_at is not None
    assert reply.updated_at > reply.opened_at

    # erp names only itself: crm's reference is no case of erp's, and a case that only
    # claims to be erp's (not opened by the ingress) is not either — the same answer as
    # a reference nobody used.
    await publisher.publish(
        CaseOpened(
            case_id="erp-F-1",
            actor="harness",
            payload=CaseOpenedPayload(kind="insurance_claim", source="erp", external_ref="F-1"),
        )
    )
    unknown = await secured.status("erp", "NEVER-1")
    assert not unknown.ok
    assert [(p.path, p.code) for p in unknown.problems] == [("$.external_ref", "not_found")]
    for external_ref in ("ST-1", "F-1"):
        foreign = await secured.status("erp", external_ref)
        assert foreign.problems == [
            msgspec.structs.replace(unknown.problems[0], message=foreign.problems[0].message)
        ]
        assert foreign.problems[0].message == unknown.problems[0].message.replace(
            "NEVER-1", external_ref
        )
        assert (foreign.case_id, foreign.status, foreign.updated_at) == (None, None, None)

    # The broker refuses erp the subject of crm's statuses: it cannot ask as crm.
    as_crm = secured.topology.subjects.service_as("ingress", "status", "crm")
    with pytest.raises(nats.errors.Error):
        await erp.request(as_crm, b'{"external_ref": "ST-1"}', timeout=1)
    await eventually(lambda: refused(erp, as_crm), what="the broker's refusal", timeout=5)

    # A malformed request is answered with where and what is wrong, and is not kept.
    malformed = await erp.request(
        secured.topology.subjects.service_as("ingress", "status", "erp"), b"{}", timeout=10
    )
    answer = msgspec.json.decode(malformed.data, type=CaseStatusReply)
    assert [(p.path, p.code) for p in answer.problems] == [("$.external_ref", "required")]
    assert await dead_letter_count(secured.harness, secured.topology) == 0


async def test_over_http_a_system_reads_only_its_own_case_with_its_token(
    secured: SecuredIngress,
) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{secured.service.http_port}") as http:
        opened = await http.post(
            "/v1/cases/crm", content=claim("HT-1"), headers={"Authorization": f"Bearer {TOKEN}"}
        )
    assert opened.status_code == 201

    found = await secured.get("/v1/cases/crm/HT-1", TOKEN)
    assert found.status_code == 200
    reply = msgspec.json.decode(found.content, type=CaseStatusReply)
    assert (reply.case_id, reply.status) == ("crm-HT-1", "open")
    assert reply == await secured.status("crm", "HT-1")  # one answer over NATS and HTTP

    assert (await secured.get("/v1/cases/crm/HT-1", None)).status_code == 401
    assert (await secured.get("/v1/cases/crm/HT-1", "guess")).status_code == 401
    assert (await secured.get("/v1/cases/crm/HT-1", ERP_TOKEN)).status_code == 401
    foreign, unknown = (
        await secured.get("/v1/cases/erp/HT-1", ERP_TOKEN),
        await secured.get("/v1/cases/erp/NOPE-1", ERP_TOKEN),
    )
    assert foreign.status_code == unknown.status_code == 404
    assert foreign.json()["problems"][0]["code"] == unknown.json()["problems"][0]["code"]
    assert foreign.json()["problems"][0]["code"] == "not_found"
    invalid = await secured.get("/v1/cases/crm/a%20b", TOKEN)
    assert invalid.status_code == 422
    assert [(p["path"], p["code"]) for p in invalid.json()["problems"]] == [
        ("$.external_ref", "pattern")
    ]
