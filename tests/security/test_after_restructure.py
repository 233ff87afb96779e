"""Attacks on what issue 12 restructured (05a0bd0): the shared request server that now
answers the registry, the reader, the event store and the policy's pending list; the
registry's handler-level refusals; the approval chain shared by the policy service, the
payment agent's live check and the auditor; subject parsing moved to
contracts/subjects.py; the reader's scoping.

Every attack runs against the running mesh (`running_stack`, every part its own process,
the broker enforcing the registry's generated authorization) with real credentials.
Each test asserts that the attack FAILS. A test marked `xfail(strict=True)` documents an
attack that got through: its reason names the hole, the place and the fix.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from contracts import (
    ActionApproved,
    ActionCompleted,
    ActionDecisionPayload,
    ActionFailed,
    ActionRequested,
    ApprovalEscalated,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    CaseClosed,
    CaseStepCompleted,
)
from contracts.cards import ActionGrant, AgentCard, AgentKey
from contracts.registry_api import GRANT_HEADER
from mesh._broker.reading import StoredEvent
from mesh._runtime.dead_letters import (
    CONSUMER,
    FILED_BY,
    FILING_SIGNATURE,
    KIND,
    ORIGINAL_SEQUENCE,
    ORIGINAL_STREAM,
    ORIGINAL_SUBJECT,
    REASON,
    filing_statement,
    read_dead_letters,
    replay_dead_letter,
)
from mesh._trust.enrolment import grant_for, sign_grant
from mesh._trust.identity import SIGNATURE_HEADER, SIGNER_HEADER, Identity
from mesh._trust.registry_client import RegistryClient
from mesh.errors import RegistryRefused
from mesh.testing import eventually
from services.stack.layout import POLICIES
from services.stack.stack import running_stack
from tests.security.kit import (
    Connection,
    Mesh,
    claim,
    events,
    lapsed,
    new_ref,
    screening,
    signed,
    store,
)

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]

LARGE = 300_001  # a payout above 1,000.00 EUR: policy asks a claims manager


# --------------------------------------------------------------------------- helpers


async def ask(
    who: Connection, subject: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> Any:
    """A request that must get a definite answer (never a hang): the decoded JSON."""
    msg = await who.nc.request(subject, body, timeout=15, headers=headers)
    return msgspec.json.decode(msg.data)


def refused(answer: Any) -> str:
    """The reason of a negative reply of any of the services' reply types."""
    assert isinstance(answer, dict), answer
    assert answer.get("ok", False) is False, answer
    error = answer.get("error")
    assert isinstance(error, str), answer
    assert error, answer
    return error


async def grant_as(
    mesh: Mesh, who: Connection, item: dict[str, Any], **changes: Any
) -> ApprovalGranted:
    """A human's grant as `mesh approvals approve` writes it, with `changes` to its
    envelope (case_id) or payload (approver, request_id, request_digest)."""
    assert who.identity is not None
    payload = {
        "request_id": item["request_id"],
        "approver": who.name,
        "comment": "ok",
        "request_digest": item["request_digest"],
    }
    payload.update({k: v for k, v in changes.items() if k in payload})
    grant = ApprovalGranted(
        case_id=changes.get("case_id", item["case_id"]),
        correlation_id=item["correlation_id"],
        causation_id=item["required_event_id"],
        actor=who.name,
        payload=ApprovalGrantedPayload(**payload),
    )
    subject = mesh.subjects.for_event(grant)
    await store(who, subject, *signed(grant, who.identity, subject))
    return grant


async def policy_approves(
    mesh: Mesh, required: ApprovalRequired, grant: ApprovalGranted
) -> ActionApproved:
    """The policy service's own key (compromised) approves the request citing `grant`."""
    policy = await mesh.connect("policy")
    approved = ActionApproved(
        case_id=required.case_id,
        correlation_id=required.correlation_id,
        causation_id=grant.event_id,
        actor="policy",
        payload=ActionDecisionPayload(
            request_id=required.payload.request_id,
            action_type="issue_payment",
            provenance=required.payload.provenance,
            reasons=[f"approved by {grant.actor}"],
            approval_id=grant.event_id,
            approver=grant.actor,
            request_digest=required.payload.request_digest,
        ),
    )
    subject = mesh.subjects.for_event(approved)
    await store(policy, subject, *signed(approved, mesh.key("policy"), subject))
    return approved


async def outcome_of_payment(mesh: Mesh, case_id: str, request_id: str) -> Any:
    """The payment agent's answer to an approval of `request_id`: its action_failed or
    its action_completed, whichever it wrote."""

    def answered(history: list[StoredEvent]) -> Any:
        answers: list[ActionFailed | ActionCompleted] = [
            *(e for _, e in events(history, ActionFailed)),
            *(e for _, e in events(history, ActionCompleted)),
        ]
        for event in answers:
            if event.payload.request_id == request_id:
                return event
        return None

    return await mesh.wait_for(case_id, answered, f"payment's answer to {request_id}")


async def waiting_item(mesh: Mesh, case_id: str) -> dict[str, Any]:
    operator = await mesh.connect("operator")
    [item] = [i for i in await mesh.pending(operator) if i["case_id"] == case_id]
    return item


# --------------------------------------------------------------------------- broker


async def test_named_operations_are_asked_only_under_ones_own_name(mesh: Mesh) -> None:
    """The fraud agent asks the reader and the pending list in the payment agent's and
    a human's names, with `*` and `>` for the name, with an extra token; asks the event
    store (checkpoint, case) and the registry's operator operations; writes a case
    event under five tokens (two cases in one lane?) and a dead letter or replay with
    an extra token or for itself. The crm system, a human and an anonymous connection
    ask the reader and the event store. The broker refuses every one."""
    root = mesh.topology.root
    s, cases = mesh.subjects, mesh.topology.cases_stream
    fraud = await mesh.connect("claims-fraud")
    for subject in (
        s.service_as("reader", "history", "claims-payment"),
        s.service_as("reader", "replay", "claims-payment"),
        f"{root}.svc.reader.history.*",
        f"{root}.svc.reader.history.>",
        s.service_as("reader", "history", "claims-fraud") + ".extra",
        s.service("reader", "history"),
        s.service_as("policy", "pending", "dana"),
        f"{root}.svc.policy.pending.*",
        s.service("eventstore", "checkpoint"),
        s.service("eventstore", "case"),
        s.service("eventstore", "activity"),
        s.service("registry", "activate"),
        s.service("registry", "approve"),
        s.service("registry", "suspend"),
        f"{root}.case.{new_ref('a')}.{new_ref('b')}.case_step_completed",
        s.dead_letter(cases, "claims-fraud") + ".extra",
        s.replay(cases, "claims-fraud"),
        s.replay(cases, "claims-payment"),
    ):
        await fraud.refused_publish(subject, b"{}")

    crm = await mesh.connect("crm")
    human = await mesh.human(
        f"peek-{uuid.uuid4().hex[:6]}", roles=["approver"], produces=["approval_granted"]
    )
    anonymous = await mesh.anonymous()
    for who in (crm, human, anonymous):
        for subject in (
            s.service("eventstore", "status"),
            s.service("eventstore", "checkpoint"),
            s.service("eventstore", "timeline"),
            s.service_as("reader", "history", "claims-fraud"),
        ):
            await who.refused_publish(subject, b"{}")
    await anonymous.refused_publish(s.service_as("reader", "history", "onboarding"), b"{}")


# --------------------------------------------------------------------------- answers


async def test_hostile_requests_get_a_definite_answer(mesh: Mesh) -> None:
    """Invalid UTF-8, JSON 100,000 deep, wrong types, unknown fields, subject tokens
    with dots and wildcards, a body just under the broker's limit, sequences out of
    range; bad signatures, bad keys, bad base64 and unreadable headers for the
    registry; a 10 MB body. To the reader, the pending list, the registry (as an agent
    and anonymously) and the event store (as an operator, the only one who may ask it).
    Each is answered with a refusal that says why (or refused by the broker / client),
    and every service still serves afterwards."""
    root = mesh.topology.root
    s = mesh.subjects
    deep = b"[" * 100_000 + b"]" * 100_000
    near_limit = b"[" + b"1," * 500_000 + b"1]"  # ~1 MB, not echoed in any reason
    fraud = await mesh.connect("claims-fraud")
    history = s.service_as("reader", "history", "claims-fraud")
    replay = s.service_as("reader", "replay", "claims-fraud")

    for body in (
        b"\xff\xfe\x00",
        deep,
        b'{"case_id": ' + deep + b"}",
        b'{"case_id": 5}',
        b'{"case_id": "a.b"}',
        b'{"case_id": "*"}',
        b'{"case_id": ">"}',
        b'{"case_id": "x", "more": 1}',
        b"",
        near_limit,
    ):
        refused(await ask(fraud, history, body))
    for sequence in (-1, 0, 2**63, 10**23):
        refused(await ask(fraud, replay, json.dumps({"dead_letter_sequence": sequence}).encode()))
    refused(await ask(fraud, replay, b'{"dead_letter_sequence": "1"}'))

    pending = s.service_as("policy", "pending", "claims-fraud")
    for body in (b"\xff", deep, near_limit):
        answer = await ask(fraud, pending, body)
        assert isinstance(answer, list)  # the body is not read: what waits for fraud

    for operation in ("get", "list", "keys"):
        for body in (b"\xff\xfe", deep, b'{"agent_id": 5}', b'{"status": "nonsense"}'):
            refused(await ask(fraud, s.service_as("registry", operation, "claims-fraud"), body))
    beat = s.service("registry", "heartbeat")
    beat_body = json.dumps({"agent_id": "claims-payment", "sent_at": "2026-01-01T00:00:00Z"})
    for headers in (
        None,
        {SIGNER_HEADER: "not-a-key", SIGNATURE_HEADER: "AAAA"},
        {SIGNER_HEADER: mesh.key("claims-payment").public_key, SIGNATURE_HEADER: "!!!"},
        # fraud's own key, naming another agent: a key that is not the payment agent's
        {
            **mesh.key("claims-fraud").signature_headers(beat, beat_body.encode()),
        },
    ):
        refused(await ask(fraud, beat, beat_body.encode(), headers))

    anonymous = await mesh.anonymous()
    register = s.service("registry", "register")
    stranger = Identity.generate()
    card = AgentCard(
        agent_id=f"hostile-{uuid.uuid4().hex[:8]}",
        name="x",
        version="1",
        owner="claims-team",
        purpose="x",
        keys=[AgentKey(public_key=stranger.public_key, valid_from="2026-01-01T00:00:00Z")],  # type: ignore[arg-type]
    )
    card_body = msgspec.json.encode(card)
    deep_card = card_body[:-1] + b',"actions":[{"action_type":"a","limits":{"x":' + deep + b"}}]}"
    grant = sign_grant(grant_for(card, issued_by="operator"), mesh.key("operator"))
    bad_signature_grant = msgspec.json.encode(
        msgspec.structs.replace(grant, signature="!!not base64!!")
    ).decode()
    bad_signer_grant = msgspec.json.encode(
        msgspec.structs.replace(grant, signer="UNOTAKEY")
    ).decode()
    bad_body_grant = msgspec.json.encode(
        msgspec.structs.replace(grant, body_b64="*not base64*")
    ).decode()
    own = stranger.signature_headers(register, card_body)
    for body, headers in (
        (card_body, None),
        (card_body, {SIGNER_HEADER: "UNOTAKEY", SIGNATURE_HEADER: "AAAA"}),
        (card_body, {SIGNER_HEADER: stranger.public_key, SIGNATURE_HEADER: "%%%"}),
        (card_body, {**own, "Mesh-Key-Proofs": "[[["}),
        (card_body, {**own, "Mesh-Key-Proofs": '{"UNOTAKEY": "AAAA"}'}),
        (card_body, {**own, GRANT_HEADER: "{not json"}),
        (card_body, {**own, GRANT_HEADER: bad_signature_grant}),
        (card_body, {**own, GRANT_HEADER: bad_signer_grant}),
        (card_body, {**own, GRANT_HEADER: bad_body_grant}),
        (deep_card, stranger.signature_headers(register, deep_card)),
        (b"\xff\xfe", stranger.signature_headers(register, b"\xff\xfe")),
    ):
        refused(await ask(anonymous, register, body, headers))
    assert card.agent_id not in {r.card.agent_id for r in await mesh.stack.registry.find()}

    operator = await mesh.connect("operator")
    for operation, body in (
        ("case", deep),
        ("case", b"\xff"),
        ("timeline", b'{"case_id": 7}'),
        ("cases", b'{"limit": "many"}'),
        ("activity", deep),
        ("manifest", json.dumps({"tree_size": 2**64, "after_sequence": 0}).encode()),
        ("manifest", json.dumps({"tree_size": -1, "after_sequence": 0}).encode()),
    ):
        refused(await ask(operator, s.service("eventstore", operation), body))
    # The operator may publish anything: names that are no principal are refused by the
    # request server itself, not left unanswered.
    for subject in (f"{root}.svc.reader.history.*", f"{root}.svc.reader.history.>"):
        assert "subject token" in refused(await ask(operator, subject, b'{"case_id": "x"}'))

    with pytest.raises(nats.errors.MaxPayloadError):
        await fraud.nc.request(history, b"x" * (10 * 1024 * 1024), timeout=5)

    # Everyone still serves.
    assert (await ask(operator, s.service("eventstore", "status")))["ok"] is True
    assert (await ask(fraud, s.service_as("registry", "keys", "claims-fraud")))["ok"] is True
    assert "no case" in refused(await ask(fraud, history, b'{"case_id": "nothing-here"}'))
    assert isinstance(await ask(fraud, pending), list)


async def test_a_reply_goes_only_to_the_askers_own_inbox(mesh: Mesh) -> None:
    """A human approver (whose card consumes nothing: the reader lets it read no case)
    listens on its own inbox. The fraud agent, which works on every accepted claim,
    asks the reader for a claim's history under its own name, with the human's inbox
    as the reply subject. The human must receive nothing."""
    case_id = await mesh.open(claim(new_ref("relay")))
    await mesh.wait_for_event(
        case_id, CaseStepCompleted, lambda e: e.payload.step == "fraud_screening"
    )
    listener_id = f"sink-{uuid.uuid4().hex[:6]}"
    listener = await mesh.human(listener_id, roles=["approver"], produces=["approval_granted"])
    # The listener itself may read nothing of the case.
    own = await ask(
        listener,
        mesh.subjects.service_as("reader", "history", listener_id),
        json.dumps({"case_id": case_id}).encode(),
    )
    refused(own)
    received: list[Msg] = []

    async def keep(msg: Msg) -> None:
        received.append(msg)

    await listener.nc.subscribe(f"_INBOX.{listener_id}.>", cb=keep)
    await listener.nc.flush()

    fraud = await mesh.connect("claims-fraud")
    history = mesh.subjects.service_as("reader", "history", "claims-fraud")
    body = json.dumps({"case_id": case_id}).encode()
    await fraud.send(history, body, reply=f"_INBOX.{listener_id}.loot")
    # Served in order: these answered means those were handled.
    assert (await ask(fraud, history, body))["ok"] is True
    await ask(fraud, mesh.subjects.service_as("registry", "keys", "claims-fraud"))
    await asyncio.sleep(1.0)
    shown = {m.subject: len(msgspec.json.decode(m.data).get("messages") or []) for m in received}
    assert received == [], f"replies reached {listener_id}: {shown} (subject: case messages)"


async def test_a_refusal_that_echoes_the_input_still_reaches_the_asker(mesh: Mesh) -> None:
    """The fraud agent asks the reader for a case id of 250,000 DEL characters, and the
    registry for an agent so named (a 250 kB request each, well under the broker's
    limit). Each must get a refusal, not silence."""
    fraud = await mesh.connect("claims-fraud")
    name = "\x7f" * 250_000
    asks = [
        (mesh.subjects.service_as("reader", "history", "claims-fraud"), {"case_id": name}),
        (mesh.subjects.service_as("registry", "get", "claims-fraud"), {"agent_id": name}),
    ]
    silent = []
    for subject, body in asks:
        try:
            answer = await ask(fraud, subject, json.dumps(body, ensure_ascii=False).encode())
        except (nats.errors.TimeoutError, TimeoutError):
            silent.append(subject)
            continue
        refused(answer)
    assert silent == [], f"no answer from {silent}"


async def test_the_registry_answers_only_its_asker(mesh: Mesh) -> None:
    """An agent asks the registry under its own name and is answered only on its own
    inbox: it can neither ask unnamed (the broker refuses) nor, named, have the answer
    sent to another principal's inbox (the registry will not)."""
    listener_id = f"sink-{uuid.uuid4().hex[:6]}"
    listener = await mesh.human(listener_id, roles=["approver"], produces=["approval_granted"])
    received: list[Msg] = []

    async def keep(msg: Msg) -> None:
        received.append(msg)

    await listener.nc.subscribe(f"_INBOX.{listener_id}.>", cb=keep)
    await listener.nc.flush()
    fraud = await mesh.connect("claims-fraud")
    note = json.dumps({"agent_id": "meet me at the usual place"}).encode()
    # Unnamed: the broker refuses it outright.
    await fraud.refused_publish(mesh.subjects.service("registry", "get"), note)
    # Named, with another principal's inbox to answer on: the registry does not answer.
    named = mesh.subjects.service_as("registry", "get", "claims-fraud")
    await fraud.send(named, note, reply=f"_INBOX.{listener_id}.note")
    # Named, on its own inbox: answered (and after the one above: served in order).
    keys = await ask(fraud, mesh.subjects.service_as("registry", "keys", "claims-fraud"))
    assert keys["ok"] is True
    await asyncio.sleep(1.0)
    assert received == []


# --------------------------------------------------------------------------- registry


async def test_enrolment_grants_the_shared_rule_refuses(mesh: Mesh) -> None:
    """Over the anonymous connection, a brand-new agent presents: a grant for another
    owner; one whose issuer is another operator than the one who signed it; one of
    kind `human` for a human card that then claims the approver's roles the grant does
    not name; one naming lower limits than the card claims; the operator's signature
    over the grant's bytes moved to another grant; an operator's *other* signed
    statement, harvested from the registry history, offered as a grant. Then it
    enrols with a good grant and replays the very same registration (same bytes,
    same grant): nothing changes. Each refusal says why."""
    anonymous = await mesh.anonymous()
    registry = RegistryClient(anonymous.nc, mesh.subjects)
    operator = mesh.key("operator")
    identity = Identity.generate()
    agent_id = f"granted-{uuid.uuid4().hex[:8]}"
    card = AgentCard(
        agent_id=agent_id,
        name="walk-in",
        version="1",
        owner="claims-team",
        purpose="scores",
        produces=["case_step_completed"],
        keys=[AgentKey(public_key=identity.public_key, valid_from="2026-01-01T00:00:00Z")],  # type: ignore[arg-type]
    )

    async def reason(statement: Any, offered: AgentCard = card) -> str:
        with pytest.raises(RegistryRefused) as refusal:
            await registry.register(offered, identity, grant=statement)
        return refusal.value.reason

    base = grant_for(card, issued_by="operator")
    other_owner = msgspec.structs.replace(base, owner="someone-else")
    assert "is for owner 'someone-else'" in await reason(sign_grant(other_owner, operator))
    other_issuer = msgspec.structs.replace(base, issued_by="operator-2")
    assert "names operator-2 as issuer but operator signed it" in await reason(
        sign_grant(other_issuer, operator)
    )
    human = msgspec.structs.replace(card, kind="human", roles=["approver", "head_of_claims"])
    human_grant = msgspec.structs.replace(base, kind="human", roles=["approver"])
    assert "roles ['head_of_claims'] are not granted" in await reason(
        sign_grant(human_grant, operator), human
    )
    limited = msgspec.structs.replace(
        card,
        produces=["case_step_completed", "action_requested"],
        actions=[ActionGrant(action_type="issue_payment", limits={"max_amount": 10**9})],
    )
    low = grant_for(limited, issued_by="operator")
    low = msgspec.structs.replace(
        low, actions=[msgspec.structs.replace(low.actions[0], limits={"max_amount": 100})]
    )
    assert "max_amount=1000000000 exceeds 100" in await reason(sign_grant(low, operator), limited)
    good = sign_grant(base, operator)
    moved = sign_grant(other_owner, operator)
    swapped = msgspec.structs.replace(good, body_b64=moved.body_b64)
    assert "signature does not match" in await reason(swapped)
    # An operator's signed statement that is not a grant: the approval of the registry
    # history (an enrolled agent's activation carries the grant it used; a status
    # change carries the operator's request): never a grant for this agent.
    intake = await mesh.stack.registry.get("claims-intake")
    statements = [p.approval for p in intake.card_history if p.approval is not None]
    for statement in statements:
        text = await reason(statement)
        assert "already used" in text or "not an enrolment grant" in text or "is for agent" in text

    enrolled = await registry.register(card, identity, grant=good)
    assert enrolled.status == "active"
    again = await registry.register(card, identity, grant=good)  # the same bytes again
    assert again.card == enrolled.card
    assert again.card_history == enrolled.card_history
    # A wider card with the used grant: refused; the card in force stays.
    wider = msgspec.structs.replace(
        card, version="2", produces=["case_step_completed", "case_closed"]
    )
    assert "was already used" in await reason(good, wider)
    assert (await mesh.stack.registry.get(agent_id)).card.produces == ["case_step_completed"]


# --------------------------------------------------------------------------- approvals


async def test_bad_grants_move_no_money_even_when_a_decision_cites_them(mesh: Mesh) -> None:
    """Two large payouts wait for a claims manager. A claims manager (a real one) grants
    the first naming another approver, grants it citing the second request's digest,
    grants the second request inside the first case (an approval replayed onto another
    case), and grants the second citing the first's digest: the policy service refuses
    each. Then the policy service's own key (compromised) approves each request citing
    such a grant, and an action_approved signed with the operator's key is stored
    through the policy's connection: the payment agent pays nothing."""
    manager_id = f"cm-{uuid.uuid4().hex[:6]}"
    manager = await mesh.human(
        manager_id, roles=["approver", "claims_manager"], produces=["approval_granted"]
    )
    first = await mesh.open(claim(new_ref("chain1"), amount=LARGE, payee="DE89-70000101"))
    second = await mesh.open(claim(new_ref("chain2"), amount=LARGE, payee="DE89-70000102"))
    _, required1 = await mesh.wait_for_event(first, ApprovalRequired)
    _, required2 = await mesh.wait_for_event(second, ApprovalRequired)
    item1, item2 = await waiting_item(mesh, first), await waiting_item(mesh, second)
    assert item1["request_digest"] != item2["request_digest"]

    mark = await mesh.dead_letter_mark()
    named_other = await grant_as(mesh, manager, item1, approver="dana")
    wrong_digest = await grant_as(mesh, manager, item1, request_digest=item2["request_digest"])
    other_case = await grant_as(mesh, manager, item2, case_id=first)
    wrong_digest2 = await grant_as(mesh, manager, item2, request_digest=item1["request_digest"])
    expected = {
        named_other.event_id: f"signed by {manager_id} but names dana as approver",
        wrong_digest.event_id: "an approval binds the exact request",
        other_case.event_id: f"belongs to case {second}, not {first}",
        wrong_digest2.event_id: "an approval binds the exact request",
    }
    letters = await mesh.wait_for_dead_letters(
        mark,
        lambda d: d.consumer == "policy" and any(i.encode() in d.body for i in expected),
        count=len(expected),
    )
    for letter in letters:
        [event_id] = [i for i in expected if i.encode() in letter.body]
        assert expected[event_id] in letter.reason, letter.reason
    for case_id in (first, second):
        assert not events(await mesh.history(case_id), ActionApproved)

    await policy_approves(mesh, required1, named_other)
    failed = await outcome_of_payment(mesh, first, required1.payload.request_id)
    assert isinstance(failed, ActionFailed), failed
    assert f"signed by {manager_id} but names dana as approver" in failed.payload.error
    await policy_approves(mesh, required2, wrong_digest2)
    failed = await outcome_of_payment(mesh, second, required2.payload.request_id)
    assert isinstance(failed, ActionFailed), failed
    assert "an approval binds the exact request" in failed.payload.error

    # An action_approved under a key that is not the policy's (the operator's), stored
    # through a connection the broker lets publish decisions: dead-lettered unread.
    third = await mesh.open(claim(new_ref("chain3"), amount=LARGE, payee="DE89-70000103"))
    _, required3 = await mesh.wait_for_event(third, ApprovalRequired)
    mark = await mesh.dead_letter_mark()
    forged = ActionApproved(
        case_id=third,
        correlation_id=required3.correlation_id,
        causation_id=required3.event_id,
        actor="operator",
        payload=ActionDecisionPayload(
            request_id=required3.payload.request_id,
            action_type="issue_payment",
            provenance=required3.payload.provenance,
            reasons=["operator override"],
            request_digest=required3.payload.request_digest,
        ),
    )
    subject = mesh.subjects.for_event(forged)
    policy = await mesh.connect("policy")
    await store(policy, subject, *signed(forged, mesh.key("operator"), subject))
    [letter] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "claims-payment" and forged.event_id.encode() in d.body
    )
    assert letter.kind == "signature"
    await mesh.settled()
    for case_id in (first, second, third):
        assert await mesh.case_payments(case_id) == []
        assert not events(await mesh.history(case_id), ActionCompleted)


async def test_a_replayed_approval_dead_letter_does_not_pay_twice(mesh: Mesh) -> None:
    """A small claim is paid. With the payment agent's stolen nkey, an attacker files a
    dead letter on the payment agent's own subject (correctly signed) pointing at the
    claim's action_approved; an operator replays it the routine way, twice. The
    payment agent handles the approval again: the claim stays paid once."""
    case_id = await mesh.open(claim(new_ref("dlqpay2")))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "paid"
    [(approval, _)] = events(await mesh.history(case_id), ActionApproved)
    key = mesh.key("claims-payment")
    payment = await mesh.connect("claims-payment", key)
    cases = mesh.topology.cases_stream
    subject = mesh.subjects.dead_letter(cases, "claims-payment")
    headers = {
        ORIGINAL_SUBJECT: approval.subject,
        ORIGINAL_STREAM: cases,
        ORIGINAL_SEQUENCE: str(approval.sequence),
        CONSUMER: "claims-payment",
        FILED_BY: key.public_key,
        FILING_SIGNATURE: key.sign(subject, filing_statement(cases, approval.sequence)),
        REASON: "gateway unavailable",
        KIND: "exhausted",
    }
    ack = await payment.js.publish(subject, approval.body, headers=headers)
    [letter] = await read_dead_letters(
        mesh.operator.jetstream(), mesh.topology, start=ack.seq, limit=1
    )
    for _ in range(2):
        await replay_dead_letter(mesh.operator.jetstream(), mesh.topology, letter)
    handled: bool = await eventually(
        lambda: _settled(mesh, "claims-payment_replay"), timeout=30, what="the replays handled"
    )
    assert handled
    await mesh.settled()
    history = await mesh.history(case_id)
    assert len(events(history, ActionCompleted)) == 1
    [paid] = await mesh.case_payments(case_id)
    assert (paid["status"], paid["captures"]) == ("captured", 1)


async def _settled(mesh: Mesh, durable: str) -> bool | None:
    return True if await mesh.unsettled(durable) == 0 else None


async def test_a_compromised_fraud_agent_cannot_get_a_rejected_claim_paid(mesh: Mesh) -> None:
    """Intake rejects a claim (its policy lapsed) and closes it. The fraud agent's own
    key (compromised) screens it anyway: low risk. Nothing may be paid."""
    case_id = await mesh.open(lapsed(new_ref("lapsedpay"), amount=42_001))
    _, rejected = await mesh.wait_for_event(
        case_id, CaseStepCompleted, lambda e: e.payload.outcome == "rejected"
    )
    await mesh.wait_for_event(case_id, CaseClosed)
    fraud = await mesh.connect("claims-fraud")
    screened = screening(case_id, rejected, "claims-fraud", score=0)
    subject = mesh.subjects.for_event(screened)
    await store(fraud, subject, *signed(screened, mesh.key("claims-fraud"), subject))
    await mesh.settled()
    history = await mesh.history(case_id)
    assert await mesh.case_payments(case_id) == []
    assert not events(history, ActionRequested)


# --------------------------------------------------------------------------- escalation

ESCALATION_SLA = 6  # seconds: escalated after it, expired after twice it


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def escalating(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    """A mesh whose reference bundle waits ESCALATION_SLA seconds for a claims manager
    before it escalates to the head of claims (and as long again before it expires)."""
    directory = tmp_path_factory.mktemp("escalation")
    bundle = directory / "policies"
    shutil.copytree(POLICIES, bundle)
    cedar = bundle / "payments.cedar"
    assert '@approval_sla("4h")' in cedar.read_text()
    cedar.write_text(
        cedar.read_text().replace('@approval_sla("4h")', f'@approval_sla("{ESCALATION_SLA}s")')
    )
    env = {"policy": {"MESH_POLICY_BUNDLE_DIR": str(bundle)}}
    async with running_stack(directory / "mesh", env=env) as stack:
        attacked = Mesh(stack)
        try:
            yield attacked
        finally:
            await attacked.close()


async def escalated(mesh: Mesh, payee: str) -> tuple[str, ApprovalRequired]:
    case_id = await mesh.open(claim(new_ref("esc"), amount=LARGE, payee=payee))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    assert required.payload.approver_role == "claims_manager"
    _, up = await mesh.wait_for_event(case_id, ApprovalEscalated, timeout=4 * ESCALATION_SLA)
    assert up.payload.escalated_to == "head_of_claims"
    return case_id, required


async def test_a_grant_by_the_role_first_asked_after_escalation_moves_no_money(
    escalating: Mesh,
) -> None:
    """A large payout waits for a claims manager; nobody decides in time and it
    escalates to the head of claims. A claims manager (no head of claims) grants it
    now: the policy service refuses. The policy service's own key (compromised) then
    approves citing that grant, as in test_approvals: the payment agent must refuse it
    by the same rule — the role asked is now head_of_claims."""
    mesh = escalating
    manager_id = f"cm-{uuid.uuid4().hex[:6]}"
    manager = await mesh.human(
        manager_id, roles=["approver", "claims_manager"], produces=["approval_granted"]
    )
    case_id, required = await escalated(mesh, "DE89-70000201")
    item = await waiting_item(mesh, case_id)
    mark = await mesh.dead_letter_mark()
    grant = await grant_as(mesh, manager, item)
    approved = await policy_approves(mesh, required, grant)
    answer = await outcome_of_payment(mesh, case_id, required.payload.request_id)
    [refused_by_policy] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.consumer == "policy" and grant.event_id.encode() in d.body
    )
    assert "needs the role 'head_of_claims'" in refused_by_policy.reason
    report = mesh.verify(await mesh.bundle(case_id))
    assert [v for v in report.violations if f"event {approved.event_id}" in v.where]
    assert isinstance(answer, ActionFailed), f"paid on a claims manager's grant: {answer}"
    assert await mesh.case_payments(case_id) == []


async def test_a_grant_by_the_escalated_role_pays(escalating: Mesh) -> None:
    """A large payout escalates to the head of claims, who (not a claims manager)
    grants it: the policy approves, and the claim is paid once."""
    mesh = escalating
    head_id = f"hoc-{uuid.uuid4().hex[:6]}"
    head = await mesh.human(
        head_id, roles=["approver", "head_of_claims"], produces=["approval_granted"]
    )
    case_id, required = await escalated(mesh, "DE89-70000202")
    [item] = [i for i in await mesh.pending(head) if i["case_id"] == case_id]
    await grant_as(mesh, head, item)
    _, approved = await mesh.wait_for_event(case_id, ActionApproved)
    assert approved.payload.approver == head_id
    answer = await outcome_of_payment(mesh, case_id, required.payload.request_id)
    assert isinstance(answer, ActionCompleted), f"not paid: {answer.payload.error}"
    [paid] = await mesh.case_payments(case_id)
    assert paid["captures"] == 1
