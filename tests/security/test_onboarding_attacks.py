"""Onboarding outside systems (`mesh principals add|list|remove`), the case status they
read (`svc.ingress.status.<source>`, `GET /v1/cases/<source>/<ref>`) and the CLI's
discovery of a running mesh, attacked with real credentials: the `crm` system, outside
systems an operator adds (and removes), agents, humans, anonymous connections, and an
operator's own CLI pointed at a data dir.

Each test asserts the SAFE behaviour: a failing test is an attack that got through.

Most attacks run on the package's shared mesh. Two whose success breaks the mesh as a
whole (a principal that takes an agent's name or key) run on a stack of their own, and
the file handling ones on a data dir of their own (no mesh needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats.errors
import pytest

from contracts import ApprovalGranted, ApprovalRequired, CaseClosed, CaseStepCompleted
from contracts.cards import AgentCard
from contracts.events.case import CaseClosedPayload
from mesh._broker.topology import Topology
from mesh._trust.enrolment import issue_grant
from mesh._trust.identity import Identity
from mesh._trust.onboarding import ONBOARDING_ID, register
from mesh._trust.registry_client import request_with_patience
from mesh.errors import ConfigurationError, MeshError
from mesh.testing import eventually
from services.stack.layout import Layout, bootstrap
from services.stack.principals import add_principal, list_principals, remove_principal
from services.stack.stack import running_stack
from services.stack.supervisor import ChildStatus, SupervisorStatus
from tests.security.kit import (
    Connection,
    Mesh,
    claim,
    events,
    lapsed,
    mesh_cli,
    new_ref,
    signed,
    store,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]

# What a status answer may hold (contracts.ingress.CaseStatusReply): nothing else.
STATUS_FIELDS = {
    "ok",
    "case_id",
    "external_ref",
    "kind",
    "status",
    "outcome",
    "opened_at",
    "updated_at",
    "waiting_for",  # what its own case waits for from outside (the opener may send it)
    "errors",
    "problems",
}


# ---------------------------------------------------------------------- helpers


def fresh_name(prefix: str) -> str:
    """A principal name never used in this mesh ([A-Za-z0-9_] only: no '-')."""
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def human_card(agent_id: str, **scope: Any) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=f"{agent_id} (claims desk)",
        version="1",
        owner="claims-desk",
        purpose="approves or rejects large payouts",
        kind="human",
        roles=scope.pop("roles", ["approver"]),
        produces=scope.pop("produces", ["approval_granted"]),
        **scope,
    )


async def add_external(mesh: Mesh, name: str, *extra: str) -> Connection:
    """`mesh principals add NAME` on the running mesh, then connect as it with the seed
    it was handed (the mesh takes a moment to load a new principal)."""
    added = await mesh.cli("principals", "add", name, *extra)
    assert added.returncode == 0, added.stdout + added.stderr
    return await connect_with_patience(mesh, name)


async def connect_with_patience(mesh: Mesh, name: str, patience: float = 15.0) -> Connection:
    deadline = time.monotonic() + patience
    while True:
        try:
            return await mesh.connect(name)
        except (nats.errors.Error, OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def status_subject(mesh: Mesh, source: str) -> str:
    return mesh.subjects.service_as("ingress", "status", source)


async def ask_status(mesh: Mesh, who: Connection, ref: str, *, as_source: str | None = None) -> Any:
    """A status request over NATS, on `who`'s own status subject (or `as_source`'s)."""
    msg = await who.nc.request(
        status_subject(mesh, as_source or who.name),
        json.dumps({"external_ref": ref}).encode(),
        timeout=10,
    )
    return json.loads(msg.data)


async def open_as(mesh: Mesh, who: Connection, body: dict[str, Any]) -> Any:
    msg = await who.nc.request(
        mesh.subjects.service("ingress", who.name), json.dumps(body).encode(), timeout=10
    )
    return json.loads(msg.data)


def bearer(mesh: Mesh, source: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {mesh.stack.layout.http_token_file(source).read_text().strip()}"
    }


@contextlib.contextmanager
def held(mesh: Mesh, process: str) -> Iterator[None]:
    """One of the mesh's processes held still (SIGSTOP) for the block. (kit's
    `Mesh.paused` reads `supervisor.processes`, which the supervisor no longer has.)"""
    child = mesh.stack.supervisor.children[process].process
    assert child is not None
    child.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        child.send_signal(signal.SIGCONT)


@contextlib.asynccontextmanager
async def own_mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    """A stack of the test's own, for attacks that break the mesh when they succeed."""
    async with running_stack(tmp_path / "mesh") as stack:
        attacked = Mesh(stack)
        try:
            yield attacked
        finally:
            await attacked.close()


async def ingress_restarts(mesh: Mesh) -> int:
    return mesh.stack.supervisor.children["ingress"].restarts


# ---------------------------------------------------------------------- the broker's line


async def test_an_external_cannot_ask_or_open_as_another_source(mesh: Mesh) -> None:
    """`crm` publishes on the status subject of another source, on the whole status
    family, and on the opening subject of a source named "status" (one token shorter
    than every status subject): the broker refuses each."""
    other = fresh_name("erp")
    await add_external(mesh, other)
    crm = await mesh.connect("crm")
    body = json.dumps({"external_ref": "x"}).encode()
    for subject in (
        status_subject(mesh, other),
        mesh.subjects.service("ingress", "status"),  # the opening subject of source "status"
        mesh.subjects.service("ingress", other),
        f"{mesh.subjects.service('ingress', 'status')}.crm.extra",
    ):
        await crm.refused_publish(subject, body)


async def test_agents_humans_and_strangers_cannot_ask_for_a_status(mesh: Mesh) -> None:
    """Only an external principal reads statuses, and only its own source's: an agent
    (claims-intake, with its own key), an enrolled human and an anonymous connection are
    refused on `crm`'s status subject."""
    subject = status_subject(mesh, "crm")
    body = json.dumps({"external_ref": "x"}).encode()
    intake = await mesh.connect("claims-intake")
    human = await mesh.enrol(human_card(f"clerk-{uuid.uuid4().hex[:6]}"), Identity.generate())
    stranger = await mesh.anonymous()
    for who in (intake, human, stranger):
        await who.refused_publish(subject, body)


async def test_an_external_cannot_read_others_replies_or_requests(mesh: Mesh) -> None:
    """`crm` subscribes to every inbox, another external's inbox, the ingress's inbox,
    and the ingress's request subjects (others' openings and status requests): the
    broker refuses each subscription."""
    other = fresh_name("erp")
    await add_external(mesh, other)
    crm = await mesh.connect("crm")
    wanted = (
        "_INBOX.>",
        f"_INBOX.{other}.>",
        "_INBOX.ingress.>",
        f"_INBOX.{ONBOARDING_ID}.>",
        mesh.subjects.service_all("ingress"),
        f"{mesh.subjects.service('ingress', 'status')}.>",
    )
    for subject in wanted:
        await crm.nc.subscribe(subject)
    await crm.nc.flush()
    for subject in wanted:
        await eventually(
            lambda s=subject: crm.refused(s, "subscription"),
            timeout=10,
            what=f"the broker refusing a subscription to {subject}",
        )


# ---------------------------------------------------------------------- whose case


async def test_a_source_reads_only_the_cases_it_opened(mesh: Mesh) -> None:
    """Two more outside systems: `erp…`, and `cr` (a prefix of `crm`). `crm` opens a
    case whose reference holds '-' so that `crm-<ref>` could also be read as
    `cr` + `m-<ref>`; `erp…` opens one too. Every cross read, with refs crafted to
    produce the other's case id, over NATS and HTTP, is "not found" (or 401 with the
    wrong token), exactly as for a case that does not exist."""
    erp_name = fresh_name("erp")
    erp = await add_external(mesh, erp_name)
    cr = await add_external(mesh, "cr")
    crm = await mesh.connect("crm")

    crm_ref = f"a-{uuid.uuid4().hex[:8]}"
    opened = await open_as(mesh, crm, lapsed(crm_ref))
    assert opened["ok"], opened
    assert opened["case_id"] == f"crm-{crm_ref}"
    erp_ref = new_ref("E")
    opened = await open_as(mesh, erp, lapsed(erp_ref))
    assert opened["ok"], opened

    assert (await ask_status(mesh, crm, crm_ref))["ok"]
    assert (await ask_status(mesh, erp, erp_ref))["ok"]
    missing = await ask_status(mesh, crm, new_ref("none"))
    assert [p["code"] for p in missing["problems"]] == ["not_found"]

    crossed = [
        (cr, f"m-{crm_ref}"),  # cr-m-a-… is not crm-a-…
        (erp, crm_ref),
        (crm, erp_ref),
        (crm, f"{erp_name}-{erp_ref}"),
        (erp, f"crm-{crm_ref}"),
        (cr, crm_ref),
    ]
    for who, ref in crossed:
        answer = await ask_status(mesh, who, ref)
        assert not answer["ok"], (who.name, ref, answer)
        assert [p["code"] for p in answer["problems"]] == ["not_found"], answer
        assert (answer["case_id"], answer["status"]) == (None, None), answer

    async with httpx.AsyncClient(base_url=mesh.stack.ingress_http, timeout=10) as http:
        own = await http.get(f"/v1/cases/crm/{crm_ref}", headers=bearer(mesh, "crm"))
        assert own.status_code == 200, own.text
        for source, ref, token_of, code in (
            ("crm", crm_ref, erp_name, 401),  # another's token on crm's URL
            ("crm", crm_ref, "cr", 401),
            (erp_name, erp_ref, "crm", 401),
            ("cr", f"m-{crm_ref}", "cr", 404),
            (erp_name, crm_ref, erp_name, 404),
        ):
            seen = await http.get(f"/v1/cases/{source}/{ref}", headers=bearer(mesh, token_of))
            assert seen.status_code == code, (source, ref, token_of, seen.text)
            assert seen.json()["status"] is None, seen.text


async def test_a_source_named_status(mesh: Mesh) -> None:
    """A source named "status" opens its cases on `svc.ingress.status` — the prefix of
    every status subject. It reads its own case on `svc.ingress.status.status`; it
    cannot read crm's case, and crm cannot read its one; its openings are not taken
    for status requests, nor status requests for openings."""
    status_source = await add_external(mesh, "status")
    crm = await mesh.connect("crm")
    ref = new_ref("S")
    opened = await open_as(mesh, status_source, lapsed(ref))
    assert opened["ok"], opened
    assert opened["case_id"] == f"status-{ref}"
    mine = await ask_status(mesh, status_source, ref)
    assert (mine["ok"], mine["case_id"]) == (True, f"status-{ref}"), mine

    crm_ref = new_ref("C")
    assert (await open_as(mesh, crm, lapsed(crm_ref)))["ok"]
    for who, asked in ((status_source, crm_ref), (crm, ref)):
        answer = await ask_status(mesh, who, asked)
        assert [p["code"] for p in answer["problems"]] == ["not_found"], answer
    # A status request body sent to the opening subject is refused as an opening (no
    # case), and an opening sent as a status request is refused as a status request.
    refused = await open_as(mesh, status_source, {"external_ref": ref})
    assert (refused["ok"], refused.get("case_id")) == (False, None), refused
    assert (await ask_status(mesh, status_source, ref))["ok"]
    msg = await status_source.nc.request(
        status_subject(mesh, "status"), json.dumps(lapsed(new_ref("S"))).encode(), timeout=10
    )
    as_status = json.loads(msg.data)
    assert (as_status["ok"], as_status["case_id"]) == (False, None), as_status


# ---------------------------------------------------------------------- hostile input


HOSTILE_BODIES: dict[str, bytes] = {
    "huge": b'{"external_ref": "' + b"a" * 900_000 + b'"}',
    "padded": b" " * 900_000 + b'{"external_ref": "x"}',
    "deep arrays": b"[" * 30_000 + b"]" * 30_000,
    "deep objects": b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
    "deep within limit": b'{"external_ref": "x", "a": ' + b"[" * 31 + b"]" * 31 + b"}",
    "quotes": b'"' + b'\\"' * 30_000 + b'"',
    "invalid utf-8": b'{"external_ref": "\xff\xfe"}',
    "escaped NUL": b'{"external_ref": "a\\u0000b"}',
    "raw NUL": b'{"external_ref": "a\x00b"}',
    "control": b'{"external_ref": "a\\u001bb"}',
    "final newline": b'{"external_ref": "abc\\n"}',
    "unicode": '{"external_ref": "é\u202e😀"}'.encode(),
    "lone surrogate": b'{"external_ref": "\\ud800"}',
    "subject dot": b'{"external_ref": "a.b"}',
    "wildcard": b'{"external_ref": ">"}',
    "too long": b'{"external_ref": "' + b"a" * 65 + b'"}',
    "array": b"[]",
    "null": b"null",
    "empty": b"",
    "huge number": b'{"external_ref": 1e400}',
    "huge integer": b'{"external_ref": ' + b"9" * 5000 + b"}",
    "unknown member": b'{"external_ref": "x", "case_id": "crm-x"}',
    "duplicate member": b'{"external_ref": "x", "external_ref": "y"}',
    "bom": b'\xef\xbb\xbf{"external_ref": "x"}',
}


async def test_hostile_status_requests_are_refused_and_leave_the_ingress_serving(
    mesh: Mesh,
) -> None:
    """Huge, deep, non-UTF-8, NUL, control, unicode, wildcard, numeric and duplicate
    bodies on crm's status subject, and hostile URLs over HTTP: each is answered with a
    refusal at once (no internal error), the ingress is not restarted, and it still
    opens cases and reads statuses (status shares its subscription with openings)."""
    crm = await mesh.connect("crm")
    restarts = await ingress_restarts(mesh)
    subject = status_subject(mesh, "crm")
    for name, body in HOSTILE_BODIES.items():
        started = time.monotonic()
        msg = await crm.nc.request(subject, body, timeout=10)
        answer = json.loads(msg.data)
        assert set(answer) <= STATUS_FIELDS, (name, answer)
        assert not answer["ok"], (name, answer)
        codes = {p["code"] for p in answer["problems"]}
        assert codes, (name, answer)
        assert not codes & {"internal", "unavailable"}, (name, answer)
        assert time.monotonic() - started < 2.0, f"{name}: took {time.monotonic() - started:.1f}s"
        assert len(msg.data) < 4096, f"{name}: a {len(msg.data)}-byte answer echoes the input"

    paths = [
        "/v1/cases/crm/a%00b",
        "/v1/cases/crm/a%0A",
        "/v1/cases/crm/" + "a" * 20_000,
        "/v1/cases/crm/%C3%A9%E2%80%AE",
        "/v1/cases/crm/%FF",
        "/v1/cases/crm/..%2F..%2Fhealthz",
        "/v1/cases/crm/a%2Fb",
        "/v1/cases/crm%00/x",
        "/v1/cases/crm/*",
        "/v1/cases/crm/>",
        "/v1/cases/crm/x?external_ref=crm-y",
    ]
    async with httpx.AsyncClient(base_url=mesh.stack.ingress_http, timeout=10) as http:
        for path in paths:
            seen = await http.get(path, headers=bearer(mesh, "crm"))
            assert 400 <= seen.status_code < 500, (path[:80], seen.status_code, seen.text[:200])
        for header in (b"Bearer", b"Basic " + b"x" * 10_000, b"Bearer \xe9\xff", b"Bearer x"):
            seen = await http.get("/v1/cases/crm/x", headers={b"Authorization": header})
            assert seen.status_code == 401, (header[:20], seen.status_code)

    assert await ingress_restarts(mesh) == restarts
    assert not crm.errors, crm.errors
    ref = new_ref("after-hostile")
    assert (await open_as(mesh, crm, lapsed(ref)))["ok"]
    assert (await ask_status(mesh, crm, ref))["ok"]


async def test_a_status_request_cannot_send_its_answer_into_the_log(mesh: Mesh) -> None:
    """crm names a case subject of its own case as the reply subject of a status
    request (the ingress may publish `case_opened` subjects): the answer must not land
    in the log."""
    crm = await mesh.connect("crm")
    ref = new_ref("reply")
    case_id = await mesh.open(lapsed(ref))
    await mesh.wait_for_event(case_id, CaseClosed)
    before = len(await mesh.history(case_id))
    body = json.dumps({"external_ref": ref}).encode()
    for kind in ("case_opened", "case_closed"):
        await crm.send(
            status_subject(mesh, "crm"), body, reply=mesh.subjects.case_event(case_id, kind)
        )
    assert (await ask_status(mesh, crm, ref))["ok"]  # the two before it were handled
    await asyncio.sleep(0.5)
    assert len(await mesh.history(case_id)) == before


# ---------------------------------------------------------------------- what a status says


async def test_the_status_answer_holds_nothing_but_the_status(mesh: Mesh) -> None:
    """A claim intake rejects (with reasons in the close's summary and in its step's
    rationale): the status says closed / rejected, and nothing of the reasons, the
    agents or their evidence — over NATS and HTTP."""
    crm = await mesh.connect("crm")
    ref = new_ref("leak")
    case_id = await mesh.open(lapsed(ref))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.summary
    history = await mesh.history(case_id)
    secrets = {closed.payload.summary, *(e.actor for _, e in events(history, CaseStepCompleted))}
    secrets |= {
        e.payload.rationale for _, e in events(history, CaseStepCompleted) if e.payload.rationale
    }
    async with httpx.AsyncClient(base_url=mesh.stack.ingress_http, timeout=10) as http:
        over_http = await http.get(f"/v1/cases/crm/{ref}", headers=bearer(mesh, "crm"))
    over_nats = await ask_status(mesh, crm, ref)
    for answer in (over_nats, over_http.json()):
        assert set(answer) <= STATUS_FIELDS, answer
        assert (answer["status"], answer["outcome"]) == ("closed", "rejected"), answer
        text = json.dumps(answer)
        leaked = [s for s in secrets if s and s in text]
        assert not leaked, f"the status leaks {leaked}: {answer}"


async def test_a_forged_close_does_not_make_the_status_lie(mesh: Mesh) -> None:
    """claims-intake (compromised; its card may close cases) writes a `case_closed`
    into a crm case in the name of claims-payment, outcome "paid", signed with its own
    key — before the real close. Every consumer and the event store refuse it (wrong
    signer); the status the outside system reads must not say the claim was paid, and
    must end with the mesh's real outcome."""
    crm = await mesh.connect("crm")
    ref = new_ref("forged-close")
    accomplice = await mesh.connect("claims-intake")
    with held(mesh, "intake"):
        case_id = await mesh.open(lapsed(ref))
        opening = (await mesh.history(case_id))[0].event
        forged = CaseClosed(
            case_id=case_id,
            correlation_id=opening.correlation_id,
            causation_id=opening.event_id,
            actor="claims-payment",
            payload=CaseClosedPayload(outcome="paid", summary="payment PAY-1"),
        )
        subject = mesh.subjects.for_event(forged)
        await store(accomplice, subject, *signed(forged, mesh.key("claims-intake"), subject))
        during = await ask_status(mesh, crm, ref)
    _, real = await mesh.wait_for_event(case_id, CaseClosed, lambda e: e.actor == "claims-intake")
    assert real.payload.outcome == "rejected"
    view = await mesh.view(case_id)
    assert (view.status, view.outcome) == ("closed", "rejected")
    assert view.flagged_events >= 1  # the event store does not believe the forgery
    after = await ask_status(mesh, crm, ref)
    assert (during["status"], during["outcome"]) != ("closed", "paid"), (
        f"while held, the status believed the forged close: {during}"
    )
    assert (after["status"], after["outcome"]) == ("closed", "rejected"), (
        f"the status says {after['status']}/{after['outcome']}; the mesh (and its event "
        f"store) closed the case as rejected"
    )


async def test_an_approval_the_policy_refused_does_not_end_the_wait(mesh: Mesh) -> None:
    """A large claim waits for a claims manager's approval. A clerk (an approver, not
    of that role) grants it; the policy refuses the grant (dead letter) and nothing is
    decided. The status must still say the case awaits an approval."""
    crm = await mesh.connect("crm")
    clerk = await mesh.human(
        f"clerk-{uuid.uuid4().hex[:6]}", roles=["approver"], produces=["approval_granted"]
    )
    ref = new_ref("await")
    case_id = await mesh.open(claim(ref, amount=300_001, payee="DE89-70000011"))
    await mesh.wait_for_event(case_id, ApprovalRequired)

    async def awaiting() -> Any:
        answer = await ask_status(mesh, crm, ref)
        return answer if answer["status"] == "awaiting_approval" else None

    await eventually(awaiting, timeout=20, interval=0.2, what="awaiting_approval")
    operator = await mesh.connect("operator")
    [item] = [i for i in await mesh.pending(operator) if i["case_id"] == case_id]
    mark = await mesh.dead_letter_mark()
    approval = await mesh.approve(clerk, item)
    [refused] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "policy" and approval.event_id.encode() in d.body
    )
    assert "approval refused" in refused.reason
    still = [i for i in await mesh.pending(operator) if i["case_id"] == case_id]
    assert still, "the policy still waits for an approval"
    assert events(await mesh.history(case_id), ApprovalGranted)
    answer = await ask_status(mesh, crm, ref)
    assert answer["status"] == "awaiting_approval", (
        f"the policy refused the clerk's grant and still waits, but the status says "
        f"{answer['status']!r}"
    )


# ---------------------------------------------------------------------- removal


async def test_a_removed_external_loses_nats_and_http_at_once(mesh: Mesh) -> None:
    """An outside system is added (its team keeps its own seed), connects, is removed
    with `mesh principals remove`: its open connection is dropped, a new one refused,
    its HTTP token refused on both routes; its name and its key can never be added
    again, no agent can register under its name, and its key stays in the registry's
    key directory, ended (what it signed before still verifies)."""
    name = fresh_name("gone")
    identity = Identity.generate()
    added = await mesh.cli("principals", "add", name, "--public-key", identity.public_key)
    assert added.returncode == 0, added.stdout + added.stderr
    assert not mesh.stack.layout.seed(name).exists()
    gone = None
    deadline = time.monotonic() + 15
    while gone is None:
        try:
            gone = await mesh.connect(name, identity)
        except (nats.errors.Error, OSError, TimeoutError):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    ref = new_ref("G")
    assert (await open_as(mesh, gone, lapsed(ref)))["ok"]
    headers = bearer(mesh, name)
    async with httpx.AsyncClient(base_url=mesh.stack.ingress_http, timeout=10) as http:
        assert (await http.get(f"/v1/cases/{name}/{ref}", headers=headers)).status_code == 200

        removed = await mesh.cli("principals", "remove", name)
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert "reloaded: registry, ingress" in removed.stdout

        await eventually(
            lambda: not gone.nc.is_connected, timeout=10, what="the removed external dropped"
        )
        why: str = await eventually(
            lambda: mesh.refused_connection(name, identity),
            timeout=10,
            what="a new connection refused",
        )

        async def http_refused() -> bool:
            seen = await http.get(f"/v1/cases/{name}/{ref}", headers=headers)
            posted = await http.post(
                f"/v1/cases/{name}", content=json.dumps(lapsed(new_ref("G"))), headers=headers
            )
            return seen.status_code == 401 and posted.status_code == 401

        refused: bool = await eventually(http_refused, timeout=10, what="the token refused")
        assert refused, why

    again = await mesh.cli("principals", "add", name)
    assert again.returncode != 0
    assert "taken" in again.stdout + again.stderr
    same_key = await mesh.cli(
        "principals", "add", fresh_name("alias"), "--public-key", identity.public_key
    )
    assert same_key.returncode != 0, same_key.stdout
    for taken in ("crm", "ingress", "operator"):
        clash = await mesh.cli(
            "principals", "add", fresh_name("alias"), "--public-key", mesh.key(taken).public_key
        )
        assert clash.returncode != 0, (taken, clash.stdout)

    grant = issue_grant(human_card(name), mesh.key("operator"), "operator")
    with pytest.raises(MeshError):
        await register(
            mesh.stack.url,
            human_card(name),
            Identity.generate(),
            mesh.subjects,
            wait=5,
            grant=grant,
        )

    keys = {k.agent_id: k for k in await mesh.stack.registry.keys()}
    assert keys[name].status == "revoked"
    [key] = keys[name].key_history
    assert key.public_key == identity.public_key
    assert key.valid_until is not None


async def test_a_removed_operators_grant_enrols_nobody(mesh: Mesh) -> None:
    """An operator added with `mesh principals add --role operator` issues two grants;
    one enrols a human at once. Removed, the other one (issued while it was in force)
    must not enrol anybody."""
    op = fresh_name("op")
    added = await mesh.cli("principals", "add", op, "--role", "operator")
    assert added.returncode == 0, added.stdout + added.stderr
    op_key = mesh.key(op)
    first = human_card(f"h1-{uuid.uuid4().hex[:6]}")
    second = human_card(f"h2-{uuid.uuid4().hex[:6]}")
    first_grant = issue_grant(first, op_key, op)
    second_grant = issue_grant(second, op_key, op)

    async def enrolled() -> bool:
        await register(
            mesh.stack.url, first, Identity.generate(), mesh.subjects, wait=3, grant=first_grant
        )
        return True

    taken: bool = await eventually(
        enrolled, timeout=15, interval=0.5, what="the new operator's grant taken"
    )
    assert taken
    removed = await mesh.cli("principals", "remove", op)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    await asyncio.sleep(1.0)  # "in force within a second"
    with pytest.raises(MeshError):
        await register(
            mesh.stack.url, second, Identity.generate(), mesh.subjects, wait=3, grant=second_grant
        )


# ---------------------------------------------------------------------- names and keys


async def test_the_onboarding_name_cannot_be_given_to_an_outside_system(mesh: Mesh) -> None:
    """`onboarding` is reserved (no agent may take it; anonymous registrants get their
    answers on `_INBOX.onboarding.>`). An outside system added under that name would be
    allowed to subscribe there and read every registrant's answer."""
    added = await mesh.cli("principals", "add", ONBOARDING_ID)
    if added.returncode != 0:
        return  # refused: safe
    # Accepted: show what it gives the outside system, then end it.
    overheard: list[bytes] = []
    try:
        eavesdropper = await connect_with_patience(mesh, ONBOARDING_ID)

        async def keep(msg: Any) -> None:
            overheard.append(msg.data)

        await eavesdropper.nc.subscribe(f"_INBOX.{ONBOARDING_ID}.>", cb=keep)
        await eavesdropper.nc.flush()
        newcomer = f"h3-{uuid.uuid4().hex[:6]}"
        await mesh.enrol(human_card(newcomer), Identity.generate())
        await asyncio.sleep(0.5)
    finally:
        await mesh.cli("principals", "remove", ONBOARDING_ID)
    heard = [m for m in overheard if newcomer.encode() in m]
    pytest.fail(
        f"`mesh principals add onboarding` was accepted (exit 0); the outside system "
        f"read {len(heard)} registry answer(s) meant for the anonymous registrant "
        f"{newcomer}: {heard[:1]!r}"[:1200]
    )


async def test_a_principal_cannot_take_the_name_of_an_enrolled_agent(tmp_path: Path) -> None:
    """A human enrolled with its own key (not kept in the mesh's keys dir) holds an id
    without '-'. An operator adds an outside system under the same name (its team gives
    its own public key). That must be refused: the name is taken. (Accepted, the
    registry's key directory holds two principals of one name and fails on every
    request — and every consumer that must refresh it stalls and dead-letters.)"""
    async with own_mesh(tmp_path) as mesh:
        human = fresh_name("hum")
        await mesh.enrol(human_card(human), Identity.generate())
        added = await mesh.cli(
            "principals", "add", human, "--public-key", Identity.generate().public_key
        )
        if added.returncode != 0:
            return  # refused: safe
        await asyncio.sleep(1.0)
        # Something that makes every consumer refresh its key directory: a new agent.
        await mesh.enrol(human_card(fresh_name("later")), Identity.generate())
        try:
            keys_error = None
            await mesh.stack.registry.keys()
        except MeshError as exc:
            keys_error = str(exc)
        case_id = await mesh.open(lapsed(new_ref("after-clash")))
        try:
            await mesh.wait_for_event(case_id, CaseClosed, timeout=20)
            closed = True
        except AssertionError:
            closed = False
        pytest.fail(
            f"`mesh principals add {human}` (an enrolled human's id) was accepted; then "
            f"registry keys -> {keys_error!r}; a lapsed claim closed within 20s: {closed}"
        )


async def test_a_principal_cannot_take_the_key_of_an_agent(tmp_path: Path) -> None:
    """A hostile outside team gives the operator "its" public key — in fact the fraud
    agent's (public keys are public). `mesh principals add` must refuse a key an agent
    holds. (Accepted, the broker's user for that key becomes the outside system's: the
    fraud agent can no longer fetch or publish, and no claim is screened.)"""
    async with own_mesh(tmp_path) as mesh:
        victim_key = mesh.key("claims-fraud").public_key
        added = await mesh.cli("principals", "add", fresh_name("evil"), "--public-key", victim_key)
        if added.returncode != 0:
            return  # refused: safe
        await asyncio.sleep(1.0)
        case_id = await mesh.open(claim(new_ref("after-key")))
        try:
            await mesh.wait_for_event(
                case_id,
                CaseStepCompleted,
                lambda e: e.payload.step == "fraud_screening",
                timeout=20,
            )
            screened = True
        except AssertionError:
            screened = False
        log = (mesh.stack.layout.logs / "fraud.log").read_text(errors="replace")
        refusals = log.count("permissions violation")
        pytest.fail(
            f"`mesh principals add --public-key <claims-fraud's key>` was accepted; then "
            f"the claim was fraud-screened within 20s: {screened}; the fraud agent's log "
            f"has {refusals} broker permission violations"
        )


# ---------------------------------------------------------------------- the files


async def test_secrets_in_the_data_dir_are_private(mesh: Mesh) -> None:
    """Seeds, HTTP tokens and the token digests are readable by their owner only; a
    connection file (handed to the outside team) holds no secret."""
    name = fresh_name("files")
    await add_external(mesh, name)
    layout = mesh.stack.layout
    private = [
        layout.seed(name),
        layout.http_token_file(name),
        layout.http_tokens_file,
        layout.seed("operator"),
        layout.http_token_file("crm"),
    ]
    for path in private:
        assert path.stat().st_mode & 0o077 == 0, f"{path}: {oct(path.stat().st_mode & 0o777)}"
    connection = (layout.keys / f"{name}.connection.json").read_text()
    assert layout.http_token(name) not in connection
    assert Identity.load(layout.seed(name)).seed not in connection


def race_remove_and_add(
    layout: Layout, topology: Topology, victim: str, newcomer: str
) -> list[str]:
    """`mesh principals remove VICTIM` and `mesh principals add NEWCOMER`, started at
    the same moment (two operators); what either raised."""
    start = threading.Barrier(2)
    errors: list[str] = []

    def remove() -> None:
        start.wait()
        try:
            remove_principal(layout, victim)
        except (MeshError, OSError) as exc:
            errors.append(f"remove: {exc!r}")

    def add() -> None:
        start.wait()
        try:
            add_principal(layout, topology, newcomer, "external")
        except (MeshError, OSError) as exc:
            errors.append(f"add: {exc!r}")

    threads = [threading.Thread(target=remove), threading.Thread(target=add)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


async def test_concurrent_add_and_remove_lose_nothing(tmp_path: Path) -> None:
    """Two operators at once: one removes an outside system, the other adds one. The
    removal must hold (principal ended, HTTP token digest gone), the addition too, and
    the files must stay readable — every time."""
    layout = Layout(tmp_path / "data")
    topology = Topology("mesh")
    await asyncio.to_thread(bootstrap, layout, topology)
    damage: list[str] = []
    for trial in range(25):
        victim, newcomer = f"victim{trial}", f"newcomer{trial}"
        await asyncio.to_thread(add_principal, layout, topology, victim, "external")
        errors = await asyncio.to_thread(race_remove_and_add, layout, topology, victim, newcomer)
        try:
            principals = {p.name: p for p in list_principals(layout)}
            digests = json.loads(layout.http_tokens_file.read_text())
        except (ConfigurationError, ValueError) as exc:
            damage.append(f"trial {trial}: the files no longer load: {exc}")
            break
        if principals[victim].active:
            damage.append(f"trial {trial}: the removal of {victim} was lost {errors}")
        if victim in digests:
            damage.append(f"trial {trial}: {victim}'s HTTP token is still in force {errors}")
        if newcomer not in principals:
            damage.append(f"trial {trial}: the addition of {newcomer} was lost {errors}")
        if damage:
            break
    assert not damage, damage


async def still_running(process: asyncio.subprocess.Process, wait: float = 0.5) -> bool:
    try:
        await asyncio.wait_for(process.wait(), wait)
    except TimeoutError:
        return True
    return False


async def test_a_reload_signals_only_the_running_meshs_services(tmp_path: Path) -> None:
    """A `mesh up` killed with SIGKILL leaves its processes.json behind, saying the
    registry runs with some pid; that pid now belongs to an unrelated process. An
    operator adds a principal to that data dir: the CLI must not SIGHUP (by default:
    kill) the unrelated process."""
    layout = Layout(tmp_path / "data")
    await asyncio.to_thread(bootstrap, layout, Topology("mesh"))
    bystander = await asyncio.create_subprocess_exec("sleep", "60")
    gone = await asyncio.create_subprocess_exec("true")
    await gone.wait()
    try:
        now = time.time()
        left_behind = SupervisorStatus(
            supervisor_pid=gone.pid,  # the killed `mesh up`: not running
            written_at=now - 3600,
            processes=[
                ChildStatus(
                    name="registry",
                    state="running",
                    pid=bystander.pid,
                    restarts=0,
                    last_exit=None,
                    since=now - 3600,
                )
            ],
        )
        layout.status_file.write_bytes(msgspec.json.encode(left_behind))
        added = await mesh_cli(
            "principals",
            "add",
            "late",
            "--data-dir",
            str(layout.data_dir),
            env={k: v for k, v in os.environ.items() if not k.startswith("MESH_")},
        )
        assert added.returncode == 0, added.stdout + added.stderr
        assert await still_running(bystander), (
            f"the CLI signalled pid {bystander.pid} from a stale processes.json: it "
            f"exited {bystander.returncode}; CLI said: {added.stdout.strip()}"
        )
    finally:
        if bystander.returncode is None:
            bystander.kill()
        await bystander.wait()


async def test_a_dead_mesh_is_not_taken_for_a_running_one(tmp_path: Path) -> None:
    """Discovery: a `mesh up` SIGKILLed leaves mesh.json and processes.json behind; its
    pid now belongs to an unrelated process. `mesh status` must not report that dead
    mesh (and its dead processes) as running, and the CLI must not act on it."""
    layout = Layout(tmp_path / "data")
    await asyncio.to_thread(bootstrap, layout, Topology("mesh"))
    bystander = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        now = time.time()
        (layout.data_dir / "mesh.json").write_bytes(
            msgspec.json.encode(
                {
                    "nats_url": "nats://127.0.0.1:1",
                    "subject_root": "mesh",
                    "data_dir": str(layout.data_dir),
                    "supervisor_pid": bystander.pid,  # reused by someone else
                }
            )
        )
        layout.status_file.write_bytes(
            msgspec.json.encode(
                SupervisorStatus(
                    supervisor_pid=bystander.pid,
                    written_at=now - 3600,
                    processes=[
                        ChildStatus(
                            name="registry",
                            state="running",
                            pid=999_999,
                            restarts=0,
                            last_exit=None,
                            since=now - 3600,
                        )
                    ],
                )
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
        shown = await mesh_cli("status", "--data-dir", str(layout.data_dir), "--json", env=env)
        said = f"exit {shown.returncode}: {shown.stdout.strip()[:300]}"
        assert shown.returncode == 1, f"`mesh status` took a dead mesh for a running one ({said})"
        assert "no running mesh" in shown.stdout + shown.stderr, said
    finally:
        bystander.kill()
        await bystander.wait()


# ---------------------------------------------------------------------- load (last)


async def test_a_status_flood_does_not_stall_other_sources_openings(mesh: Mesh) -> None:
    """crm fires status requests without waiting for answers (each costs the ingress a
    read of the case log; a refused status request is not even kept). Meanwhile another
    outside system opens a case: it must be answered within 10 s. (Status shares one
    subscription, served one message at a time, with every source's openings.)"""
    crm = await mesh.connect("crm")
    victim = await add_external(mesh, fresh_name("victim"))
    ref = new_ref("flood")
    await mesh.open(lapsed(ref))
    body = json.dumps({"external_ref": ref}).encode()
    subject = status_subject(mesh, "crm")
    flood = 20_000
    for _ in range(flood):
        await crm.nc.publish(subject, body, reply=crm.nc.new_inbox())
    await crm.nc.flush()
    started = time.monotonic()
    try:
        answer = await open_as(mesh, victim, lapsed(new_ref("V")))
        waited = time.monotonic() - started
        ok = answer["ok"]
    except (nats.errors.Error, TimeoutError) as exc:
        waited, ok = time.monotonic() - started, repr(exc)
    finally:
        # Let the ingress work off the flood before the next attack.
        await request_with_patience(
            crm.nc, subject, body, timeout=60, what="the ingress after the flood", patience=120
        )
    said = (
        f"after {flood} status requests from crm (~{len(body) * flood // 1024} KiB), another "
        f"source's opening was answered after {waited:.1f}s: {ok}"
    )
    assert ok is True, said
    assert waited < 10, said
