"""Where replies go and what input is taken (issue 10, classes 5 and 6).

A reply never lands in a log: every service answers only on `_INBOX.` subjects, so a
request naming a log subject as its reply subject is served but not answered (who
refuses: the service itself, which says so in its log — the broker would have let it
write there). Hostile input gets a definite answer with reasons and is kept in the
dead-letter stream (who refuses: the ingress); no case opens."""

from __future__ import annotations

import hashlib
import json

import httpx
import msgspec
import pytest

from contracts import CaseOpened, LogCheckpointed
from contracts.ingress import IngressReply
from mesh._broker.reading import read_subject
from mesh._runtime.dead_letters import DeadLetter, read_dead_letters
from mesh._trust.identity import verify_headers
from mesh._trust.registry_client import request_with_patience
from mesh.testing import eventually
from services.eventstore.export import checkpoint_subject
from tests.security.kit import Mesh, claim, events, lapsed, new_ref

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def logged(mesh: Mesh, process: str, text: str) -> None:
    log = mesh.stack.layout.logs / f"{process}.log"
    await eventually(lambda: text in log.read_text(errors="replace"), timeout=15, what=text)


async def test_no_reply_lands_in_a_log(mesh: Mesh) -> None:
    """The crm system asks the ingress to open cases with the reply subject set to a
    case's `case_opened` (its own case's, and a case nobody opened); intake asks the
    registry and the policy service with reply subjects in the registry's history and
    a case's decisions; an operator asks the event store with its checkpoints' subject.
    Every service would be allowed to publish there. None answers; no log holds a reply."""
    root = mesh.topology.root
    crm = await mesh.connect("crm")
    ingress = mesh.subjects.service("ingress", "crm")
    own_ref, other_ref = new_ref("reply"), new_ref("reply")
    own_case, other_case = f"crm-{own_ref}", f"crm-{other_ref}"
    victim = f"crm-{new_ref('victim')}"
    await crm.send(
        ingress, json.dumps(lapsed(own_ref)).encode(), reply=f"{root}.case.{own_case}.case_opened"
    )
    await crm.send(
        ingress, json.dumps(lapsed(other_ref)).encode(), reply=f"{root}.case.{victim}.case_opened"
    )
    for case_id in (own_case, other_case):
        await mesh.wait_for_event(case_id, CaseOpened)
    await logged(mesh, "ingress", f"on '{root}.case.{own_case}.case_opened': replies go only to")
    await logged(mesh, "ingress", f"on '{root}.case.{victim}.case_opened': replies go only to")

    intake = await mesh.connect("claims-intake")
    registry_target = f"{root}.registry.{new_ref('victim')}.agent_activated"
    await intake.send(
        mesh.subjects.service_as("registry", "list", "claims-intake"), b"{}", reply=registry_target
    )
    decision_target = f"{root}.case.{victim}.action_approved"
    await intake.send(
        mesh.subjects.service_as("policy", "pending", "claims-intake"), reply=decision_target
    )
    await logged(
        mesh, "registry", f"not answering registry list for claims-intake on '{registry_target}'"
    )
    await logged(mesh, "policy", f"not answering pending approvals on '{decision_target}'")

    operator = await mesh.connect("operator")
    store_target = checkpoint_subject(mesh.topology)
    await operator.send(mesh.subjects.service("eventstore", "status"), reply=store_target)
    # The store serves a subscription's requests in order: this one answered means
    # that one was handled.
    await request_with_patience(
        operator.nc, mesh.subjects.service("eventstore", "status"), b"", timeout=10, what="status"
    )

    js = mesh.operator.jetstream()
    assert await mesh.history(victim) == []
    registry_history = await read_subject(
        js,
        mesh.topology.registry_stream,
        mesh.subjects.history("registry", registry_target.split(".")[2]),
    )
    assert registry_history == []
    for case_id in (own_case, other_case):
        history = await mesh.history(case_id)
        assert len(events(history, CaseOpened)) == 1
        for stored in history:  # every message of the case is an event its actor signed
            verify_headers(stored.subject, stored.body, stored.headers)
        assert (await mesh.view(case_id)).flagged_events == 0
    for stored in await read_subject(js, mesh.topology.ops_stream, store_target):
        assert isinstance(stored.event, LogCheckpointed)
        verify_headers(stored.subject, stored.body, stored.headers)
        assert stored.event.actor == "eventstore"


async def kept(mesh: Mesh, sequence: int | None) -> DeadLetter:
    assert sequence is not None, "the refused input is not kept"
    [letter] = await read_dead_letters(
        mesh.operator.jetstream(), mesh.topology, start=sequence, limit=1
    )
    assert letter.sequence == sequence
    assert letter.kind == "invalid_input"
    return letter


async def test_hostile_input_is_answered_with_reasons_and_kept(mesh: Mesh) -> None:
    """JSON nested 5,000 deep, a body over the size limit (10 MB over HTTP), a number
    sent as a string: over NATS and over HTTP, each gets a 4xx answer with its reasons,
    each is kept in the dead-letter stream with them, and no case opens."""
    token = mesh.stack.layout.http_token("crm")
    deep = b"[" * 5000 + b"]" * 5000
    huge = b'{"kind": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    over_nats = b'{"kind": "' + b"x" * (100 * 1024) + b'"}'  # over 64 KiB, under max_payload
    ref = new_ref("string")
    stringly = claim(ref)
    stringly["data"]["amount_cents"] = "64250"
    as_string = json.dumps(stringly).encode()

    crm = await mesh.connect("crm")

    async def over_nats_ask(body: bytes) -> IngressReply:
        msg = await request_with_patience(
            crm.nc, mesh.subjects.service("ingress", "crm"), body, timeout=20, what="ingress"
        )
        return msgspec.json.decode(msg.data, type=IngressReply)

    async with httpx.AsyncClient(base_url=mesh.stack.ingress_http, timeout=60) as http:

        async def over_http(body: bytes) -> tuple[int, IngressReply]:
            response = await http.post(
                "/v1/cases/crm", content=body, headers={"Authorization": f"Bearer {token}"}
            )
            return response.status_code, msgspec.json.decode(response.content, type=IngressReply)

        cases = [
            (deep, "too_deep", "$", 400, deep),
            (as_string, "type", "$.data.amount_cents", 422, as_string),
        ]
        for body, code, path, status, whole in cases:
            http_status, http_reply = await over_http(body)
            assert http_status == status
            for reply in (await over_nats_ask(body), http_reply):
                assert not reply.ok
                assert (reply.problems[0].code, reply.problems[0].path) == (code, path)
                assert reply.errors
                letter = await kept(mesh, reply.dead_letter)
                assert letter.body == whole
                assert letter.reason == "; ".join(reply.errors)

        for body, http_ok in ((over_nats, False), (huge, True)):
            if http_ok:
                status, reply = await over_http(body)
                assert status == 413
            else:
                reply = await over_nats_ask(body)
            assert not reply.ok
            assert reply.problems[0].code == "too_large"
            letter = await kept(mesh, reply.dead_letter)
            assert letter.headers["Mesh-Dlq-Size"] == str(len(body))
            assert letter.headers["Mesh-Dlq-Digest"] == f"sha256:{hashlib.sha256(body).hexdigest()}"
            assert letter.headers["Mesh-Dlq-Truncated"] == "true"
            assert body.startswith(letter.body)
            assert len(letter.body) < len(body)

    assert await mesh.history(f"crm-{ref}") == []
