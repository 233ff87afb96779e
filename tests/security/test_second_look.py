"""A second look at the trust model, with new attack ideas, after issue 10's twelve
classes were closed. Every test here is an attack that got through when it was written:
each says who should have refused it and asserts that nothing moved.

Most run in the suite's shared mesh and leave it as they found it. The last four damage
the mesh they run in (a blinded approvals list, a broker that no longer reloads its
authorization, a stopped event store, a registry that cannot answer `keys`), so they
share a mesh of their own (`wrecked`), in this order: each needs only what the ones
before it leave working (the last needs no event store).
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from contracts import (
    ActionCompleted,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalRejected,
    ApprovalRejectedPayload,
    ApprovalRequired,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.cards import GRANT_SUBJECT, AgentCard, AgentKey
from contracts.codec import encode
from contracts.envelope import Event
from contracts.eventstore_api import CaseRequest
from contracts.registry_api import GRANT_HEADER, RegistryReply
from mesh._trust.identity import Identity
from mesh._trust.onboarding import card_with_key
from mesh._trust.registry_client import RegistryClient, request_with_patience
from mesh.errors import MeshError
from mesh.testing import eventually
from services.eventstore.export import store_request
from services.stack.stack import running_stack
from tests.security.kit import MSG_ID, Mesh, claim, events, lapsed, new_ref, signed, store

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]

ADJUDICATION = "claims-adjudication"


async def request_payment(
    mesh: Mesh, case_id: str, cause: Event, parameters: dict[str, Any]
) -> ActionRequested:
    """A compromised adjudication agent asks to pay, with its own key, whatever it likes
    (its card produces `action_requested` and allows `issue_payment` up to 5,000,000)."""
    request = ActionRequested(
        case_id=case_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        actor=ADJUDICATION,
        payload=ActionRequestedPayload(
            action_type="issue_payment", parameters=parameters, rationale="pay the claim"
        ),
    )
    subject = mesh.subjects.for_event(request)
    adjudication = await mesh.connect(ADJUDICATION)
    await store(adjudication, subject, *signed(request, mesh.key(ADJUDICATION), subject))
    return request


async def screened_while_adjudication_waits(mesh: Mesh, body: dict[str, Any]) -> CaseStepCompleted:
    """Opens the claim and waits for its fraud screening (a low score), with adjudication
    held still: what the attacker publishes next comes before adjudication's own."""
    case_id = await mesh.open(body)
    _, screened = await mesh.wait_for_event(
        case_id, CaseStepCompleted, lambda e: e.payload.step == "fraud_screening"
    )
    assert screened.payload.evidence["fraud_score"] <= 40
    return screened


# ---------------------------------------------------------------------------- money


async def test_a_payout_goes_only_to_the_claim_s_payee(mesh: Mesh) -> None:
    """A claim of 420.01 EUR (payout 320.01 after the deductible) is screened clean.
    Before adjudication asks (held still meanwhile), the adjudication agent's key asks to
    pay exactly that payout — to an account of its own, not the claimant's. It is under
    the 1,000 EUR that needs a human, so nobody looks: the policy approved it (it sees
    the fraud score and earlier actions, never the claim it pays), the payment agent
    paid it, and `mesh audit verify` found nothing. Who should refuse: the policy
    service (the claim's payee, from the claim in `case_opened`, is a fact the payout
    must match) — or, at the latest, the payment agent."""
    payee = "DE89-81000018"
    async with mesh.paused("adjudication"):
        screened = await screened_while_adjudication_waits(
            mesh, claim(new_ref("payee"), amount=42_001, payee=payee)
        )
        assert screened.case_id is not None
        await request_payment(
            mesh,
            screened.case_id,
            screened,
            {"amount": 32_001, "currency": "EUR", "payee_account": "XX-66000066"},
        )
    await mesh.settled()
    paid_elsewhere = [
        (p["payee"], p["amount_cents"])
        for p in await mesh.case_payments(screened.case_id)
        if p["payee"] != payee
    ]
    assert paid_elsewhere == [], f"the claim's payout went to another account: {paid_elsewhere}"


async def test_a_payout_never_exceeds_the_claim(mesh: Mesh) -> None:
    """A claim of 200.00 EUR (intake, the authority for `amount_cents`, states 20000; the
    payout would be 100.00). The adjudication agent's key asks to pay the claimant 999.99
    EUR — five times what was claimed, still under the amount that needs a human. The
    policy approved it and 999.99 EUR was paid. Who should refuse: the policy service (a
    payout above the claimed amount, which intake states with authority)."""
    payee = "DE89-82000028"
    async with mesh.paused("adjudication"):
        screened = await screened_while_adjudication_waits(
            mesh, claim(new_ref("inflated"), amount=20_000, payee=payee)
        )
        assert screened.case_id is not None
        await request_payment(
            mesh,
            screened.case_id,
            screened,
            {"amount": 99_999, "currency": "EUR", "payee_account": payee},
        )
    await mesh.settled()
    over = [
        p["amount_cents"]
        for p in await mesh.case_payments(screened.case_id)
        if p["amount_cents"] > 20_000
    ]
    assert over == [], f"paid more than the 20000 cents claimed: {over}"


async def test_a_negative_payout_is_refused(mesh: Mesh) -> None:
    """A claim within the deductible closes with no payout. The adjudication agent's key
    then asks to "pay" the claimant -500.00 EUR: the card limits only a maximum, the
    reference policy permits any amount up to 1,000 EUR, the payment agent sent it and
    the gateway captured a payment of -500.00 EUR (what a real acquirer makes of that is
    anyone's guess; nothing in the mesh said no). Who should refuse: the policy service
    (or the card's limits) — and the payment agent before the gateway."""
    payee = "DE89-83000038"
    case_id = await mesh.open(claim(new_ref("negative"), amount=5_001, payee=payee))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "no payout"
    opened = (await mesh.history(case_id))[0].event
    request = await request_payment(
        mesh, case_id, opened, {"amount": -50_000, "currency": "EUR", "payee_account": payee}
    )
    await mesh.settled()
    negative = [p["amount_cents"] for p in await mesh.case_payments(case_id)]
    assert [a for a in negative if a <= 0] == [], f"a payout of {negative} cents was made"
    assert not [
        e
        for _, e in events(await mesh.history(case_id), ActionCompleted)
        if e.payload.request_id == request.event_id
    ]


async def test_a_human_s_rejection_is_not_undone_by_asking_for_less(mesh: Mesh) -> None:
    """A payout of 2,900.01 EUR waits for a claims manager; dana rejects it, the policy
    denies it and adjudication closes the claim "denied". The adjudication agent's key
    then asks again in the same case, to the claimant's own account, for 1,000.00 EUR:
    under the amount that needs a human, and "one payout per claim" counts only what
    policy approved, not what a human refused — so it was approved at once and paid.
    Who should refuse: the policy service (a human's rejection of an action in a case
    stands against a new request for it; at least, it goes to a human again)."""
    payee = "DE89-85000058"
    dana = await mesh.human()
    case_id = await mesh.open(claim(new_ref("rejected"), amount=300_001, payee=payee))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    [item] = [i for i in await mesh.pending(dana) if i["case_id"] == case_id]
    assert dana.identity is not None
    rejection = ApprovalRejected(
        case_id=case_id,
        correlation_id=required.correlation_id,
        causation_id=required.event_id,
        actor=dana.name,
        payload=ApprovalRejectedPayload(
            request_id=item["request_id"],
            approver=dana.name,
            reason="the documents do not support the claim",
            request_digest=item["request_digest"],
        ),
    )
    subject = mesh.subjects.for_event(rejection)
    await store(dana, subject, *signed(rejection, dana.identity, subject))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "denied"

    await request_payment(
        mesh, case_id, closed, {"amount": 100_000, "currency": "EUR", "payee_account": payee}
    )
    await mesh.settled()
    paid = [p["amount_cents"] for p in await mesh.case_payments(case_id)]
    assert paid == [], f"paid {paid} cents on a claim a claims manager rejected"


# ---------------------------------------------------------------------------- the log


async def test_an_agent_cannot_squat_a_case_before_it_is_opened(mesh: Mesh) -> None:
    """The crm system's references are predictable (CLM-1, CLM-2, …), so the case ids
    they open are too (`crm-<ref>`). Intake — allowed to publish steps on any case
    subject — writes a step into `crm-<next ref>` before the crm system sends that
    claim. The ingress then finds the case "exists and is not this request's" and
    refuses the claim (409): one message from a compromised agent keeps a real claim from
    ever being opened. Who should refuse: the ingress should open a case whatever an
    agent wrote under its id first (a case exists by its `case_opened`), and readers
    should not count events of a case nobody opened."""
    ref = new_ref("squat")
    squat = CaseStepCompleted(
        case_id=f"crm-{ref}",
        actor="claims-intake",
        payload=CaseStepCompletedPayload(step="intake", outcome="rejected", rationale="taken"),
    )
    subject = mesh.subjects.for_event(squat)
    await store(
        await mesh.connect("claims-intake"),
        subject,
        *signed(squat, mesh.key("claims-intake"), subject),
    )
    reply = await mesh.ingress(claim(ref))
    assert reply.ok, f"the claim could not be opened: {reply.errors}"
    opened = [e for _, e in events(await mesh.history(f"crm-{ref}"), CaseOpened)]
    assert [(e.actor, e.payload.external_ref) for e in opened] == [("ingress", ref)]


async def test_a_late_close_does_not_rewrite_a_paid_claim(mesh: Mesh) -> None:
    """A claim is paid and closed "paid" by the payment agent. Then intake (its card
    produces `case_closed`, for the claims it rejects) closes it again as "rejected":
    the event store's view now says the paid claim was rejected — what `mesh case list`
    and the demo's outcomes show — and `mesh audit verify` names nothing. The same
    class as a late step rewriting a closed case's outcome (refused since the last
    round), by another path. Who should refuse: the event store (a closed case's outcome
    is not rewritten by a later close), and the verifier should name the second close."""
    case_id = await mesh.open(claim(new_ref("lateclose"), payee="DE89-84000048"))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "paid"
    assert (await mesh.view(case_id)).outcome == "paid"
    late = CaseClosed(
        case_id=case_id,
        correlation_id=closed.correlation_id,
        causation_id=closed.event_id,
        actor="claims-intake",
        payload=CaseClosedPayload(outcome="rejected", summary="never covered"),
    )
    subject = mesh.subjects.for_event(late)
    await store(
        await mesh.connect("claims-intake"),
        subject,
        *signed(late, mesh.key("claims-intake"), subject),
    )
    [payment] = await mesh.case_payments(case_id)
    assert payment["status"] == "captured"
    view = await mesh.view(case_id)
    assert (view.status, view.outcome) == ("closed", "paid"), (
        f"the paid claim now shows as {view.outcome!r}"
    )


# ---------------------------------------------------------------------------- cards


async def test_an_agent_cannot_change_who_answers_for_it(mesh: Mesh) -> None:
    """An agent enrolled by an operator's grant for owner `claims-team` re-registers,
    signed with its own key, naming `claims-desk` (another known owner) as its owner.
    The registry counts an owner as no scope and puts the card in force at once, with no
    operator's signature — yet the grant bound the owner, the owner is who is accountable
    for the agent, and the policy's schema hands `principal.owner` to every Cedar policy
    (a rule for one team's agents now matches this one). Who should refuse: the registry
    (a new owner is proposed, and waits for an operator, like any widening)."""
    identity = Identity.generate()
    card = card_with_key(
        AgentCard(
            agent_id=f"owned-{uuid.uuid4().hex[:8]}",
            name="Claim notifier",
            version="1",
            owner="claims-team",
            purpose="notes claims for the claimants' letters",
            produces=["case_step_completed"],
        ),
        identity,
    )
    await mesh.enrol(card, identity)
    registry = RegistryClient((await mesh.anonymous()).nc, mesh.subjects)
    with contextlib.suppress(MeshError):  # refused, or only proposed: either is right
        await registry.register(msgspec.structs.replace(card, owner="claims-desk"), identity)
    record = await mesh.stack.registry.get(card.agent_id)
    assert record.card.owner == "claims-team", (
        f"the card in force now names {record.card.owner!r} as owner, without an operator"
    )
    assert [period.card.owner for period in record.card_history] == ["claims-team"]


# ---------------------------------------------------------------------------- output


async def test_terminal_control_sequences_from_the_log_are_not_printed(mesh: Mesh) -> None:
    """Intake publishes a step whose event id carries an ANSI "conceal" sequence and
    whose rationale carries an OSC 52 sequence (a terminal writes its argument into the
    clipboard). `mesh audit verify` names the step (it states a fact intake is not the
    authority for) and prints the event id as it is: on a terminal the rest of that
    violation, and the word FAILED on the verdict line after it, are concealed.
    `mesh audit show` prints the rationale as it is. Last round's fix escapes Rich
    markup, not control characters. Who should refuse: the CLI's printing — every
    string from the log shown as text, control characters made visible (escaped),
    never sent to the terminal."""
    case_id = await mesh.open(lapsed(new_ref("ansi")))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    step = CaseStepCompleted(
        event_id=f"{uuid.uuid4()}\x1b[8m",
        case_id=case_id,
        correlation_id=closed.correlation_id,
        causation_id=closed.event_id,
        actor="claims-intake",
        payload=CaseStepCompletedPayload(
            step="notes",
            outcome="noted",
            rationale="see \x1b]52;c;Y3VybCBldmlsIHwgc2g=\x1b\\ the file",
            evidence={"fraud_score": 0},
        ),
    )
    subject = mesh.subjects.for_event(step)
    intake = await mesh.connect("claims-intake")
    await store(
        intake, subject, *signed(step, mesh.key("claims-intake"), subject, msg_id=str(uuid.uuid4()))
    )
    await mesh.view(case_id)  # projected
    verified = await mesh.cli("audit", "verify", "--case", case_id)
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "states fact fraud_score" in verified.stdout
    assert "\x1b" not in verified.stdout, "mesh audit verify printed the log's escape sequence"
    shown = await mesh.cli("audit", "show", case_id)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "\x1b" not in shown.stdout, "mesh audit show printed the log's escape sequence"


# ---------------------------------------------------------------------------- answers


async def ask_reader(mesh: Mesh, agent_id: str, body: bytes, timeout: float) -> dict[str, Any]:
    agent = await mesh.connect(agent_id)
    msg = await request_with_patience(
        agent.nc,
        mesh.subjects.service_as("reader", "history", agent_id),
        body,
        timeout=timeout,
        what="the case reader",
    )
    answer: dict[str, Any] = json.loads(msg.data)
    return answer


async def test_the_reader_does_not_tell_whether_a_case_exists(mesh: Mesh) -> None:
    """The payment agent asks the case reader for a case it does not work on, and for
    one that does not exist: "claims-payment does not work on case …" against "no case
    … in the log". Any agent can so learn which claim references exist (and, guessing
    `crm-<ref>`, probe for them). Low severity — existence only — but it is a read of
    a case that is not its business. Who should refuse: the case reader, with one
    answer for both."""
    case_id = await mesh.open(lapsed(new_ref("oracle")))
    await mesh.wait_for_event(case_id, CaseClosed)
    missing = f"crm-{new_ref('oracle')}"
    answers = {}
    for asked in (case_id, missing):
        answer = await ask_reader(
            mesh, "claims-payment", json.dumps({"case_id": asked}).encode(), timeout=10
        )
        assert answer["ok"] is False
        answers[asked] = str(answer["error"]).replace(asked, "<case>")
    assert answers[case_id] == answers[missing], answers


async def test_the_reader_answers_a_case_id_that_is_not_a_token(mesh: Mesh) -> None:
    """Intake asks the case reader for case `a.b` (or `*`): the subject builder raises
    InvalidSubject, which the reader does not catch, and the request is never answered
    (the asker waits out its timeout). Input is always answered. Who should refuse: the
    case reader, with a reason."""
    try:
        answer = await ask_reader(mesh, "claims-intake", b'{"case_id": "a.b"}', timeout=3)
    except MeshError as exc:
        pytest.fail(f"the case reader did not answer: {exc}")
    assert answer["ok"] is False
    assert answer["error"]


async def test_the_registry_answers_a_grant_it_cannot_read(mesh: Mesh) -> None:
    """An anonymous connection registers a new agent with a grant that names the
    operator's (public) key as signer and whose body is not base64. The registry's
    signature check decodes the body outside its error handling; the binascii error
    escapes and the request is never answered. Who should refuse: the registry, with a
    reason (as it does for a grant whose body is base64 but not signed)."""
    anonymous = await mesh.anonymous()
    identity = Identity.generate()
    card = card_with_key(
        AgentCard(
            agent_id=f"b64-{uuid.uuid4().hex[:8]}",
            name="Walk-in",
            version="1",
            owner="claims-team",
            purpose="scores claims",
        ),
        identity,
    )
    subject = mesh.subjects.service("registry", "register")
    body = msgspec.json.encode(card)
    headers = identity.signature_headers(subject, body)
    headers[GRANT_HEADER] = json.dumps(
        {
            "subject": GRANT_SUBJECT,
            "body_b64": "!!! not base64 !!!",
            "signer": mesh.key("operator").public_key,
            "signature": "AAAA",
        }
    )
    try:
        msg = await anonymous.nc.request(subject, body, headers=headers, timeout=3)
    except TimeoutError:
        pytest.fail("the registry did not answer a registration with an unreadable grant")
    reply = msgspec.json.decode(msg.data, type=RegistryReply)
    assert not reply.ok
    assert reply.error
    assert card.agent_id not in {r.card.agent_id for r in await mesh.stack.registry.find()}


# ---------------------------------------------------------------------------- a mesh of its own


@pytest_asyncio.fixture(scope="module", loop_scope="package")
async def wrecked(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with running_stack(tmp_path_factory.mktemp("second-look") / "mesh") as stack:
        attacked = Mesh(stack)
        try:
            yield attacked
        finally:
            await attacked.close()


def walk_in(agent_id: str, identity: Identity) -> AgentCard:
    return card_with_key(
        AgentCard(
            agent_id=agent_id,
            name="Walk-in scorer",
            version="1",
            owner="claims-team",
            purpose="scores claims",
            produces=["case_step_completed"],
        ),
        identity,
    )


async def test_huge_parameters_do_not_blind_the_approvers(wrecked: Mesh) -> None:
    """A large payout waits for dana. The adjudication agent's key asks three payouts
    that need a human, each with a payee account of 200,000 characters (the policy's
    schema says only "String"). Each waits as asked; the pending list is one reply
    holding every request waiting (parameters twice, in the provenance too), now over
    the broker's 1 MB: the policy service cannot answer it, and no approver and no
    operator can list anything — every large claim expires unseen. Who should refuse:
    the policy service (bounded parameters; a pending list that never outgrows a reply)."""
    mesh = wrecked
    dana = await mesh.human()
    honest = await mesh.open(claim(new_ref("waiting"), amount=300_001))
    _, required = await mesh.wait_for_event(honest, ApprovalRequired)
    for _ in range(3):
        case_id = await mesh.open(claim(new_ref("bigpayee"), amount=5_001))
        await mesh.wait_for_event(case_id, CaseClosed)
        opened = (await mesh.history(case_id))[0].event
        await request_payment(
            mesh,
            case_id,
            opened,
            {"amount": 200_000, "currency": "EUR", "payee_account": "DE89-" + "9" * 200_000},
        )
    await mesh.settled()
    try:
        msg = await request_with_patience(
            dana.nc,
            mesh.subjects.service_as("policy", "pending", dana.name),
            b"",
            timeout=5,
            what="pending approvals",
        )
    except MeshError as exc:
        pytest.fail(f"dana cannot list what waits for her: {exc}")
    waiting = [item["request_id"] for item in msgspec.json.decode(msg.data)]
    assert required.payload.request_id in waiting


async def test_a_key_listed_twice_does_not_disable_the_kill_switch(wrecked: Mesh) -> None:
    """An enrolled agent rotates in a second key, listing it twice on its card (the
    proof of possession for it is good). Adding a key widens nothing, so the registry
    puts the card in force without an operator and writes the key twice into the broker's
    authorization: nats-server refuses the whole file ("Duplicate nkey") and keeps the old
    one. From then on no registry change reaches the broker until that agent is gone: an
    operator revokes another, compromised agent and it stays connected (and publishing);
    new agents are registered but cannot connect. Who should refuse: the registry (a card
    lists each key once, and the authorization it generates always loads)."""
    mesh = wrecked
    rogue_key = Identity.generate()
    rogue = await mesh.enrol(walk_in(f"rogue-{uuid.uuid4().hex[:8]}", rogue_key), rogue_key)
    first, second = Identity.generate(), Identity.generate()
    attacker = walk_in(f"twice-{uuid.uuid4().hex[:8]}", first)
    await mesh.enrol(attacker, first)
    registry = RegistryClient((await mesh.anonymous()).nc, mesh.subjects, timeout=10)
    now = datetime.now(UTC)
    twice = msgspec.structs.replace(
        attacker,
        keys=[
            AgentKey(public_key=first.public_key, valid_from=now),
            AgentKey(public_key=second.public_key, valid_from=now),
            AgentKey(public_key=second.public_key, valid_from=now),
        ],
    )
    try:
        with contextlib.suppress(MeshError):  # refused, or stored and then failed
            await registry.register(twice, first, second)
        operator = RegistryClient(mesh.operator, mesh.subjects, timeout=10)
        with contextlib.suppress(MeshError):
            await operator.change_status(
                "revoke", rogue.name, "key compromised", mesh.key("operator")
            )
        assert (await mesh.stack.registry.get(rogue.name)).status == "revoked"
        try:
            await eventually(
                lambda: not rogue.nc.is_connected, timeout=5, what="the revoked agent dropped"
            )
        except AssertionError:
            pytest.fail("revoked, yet still connected: the broker did not reload")
    finally:
        # Gone, its keys leave the authorization and the broker reloads again.
        with contextlib.suppress(MeshError):
            await RegistryClient(mesh.operator, mesh.subjects, timeout=10).change_status(
                "revoke", attacker.agent_id, "cleanup", mesh.key("operator")
            )


async def test_a_deeply_nested_event_does_not_stop_the_event_store(wrecked: Mesh) -> None:
    """Intake publishes, in a case it rejected, a step whose evidence is nested 50,000
    deep (100 KB). Decoding it raises RecursionError, which is no ContractError: the
    event store's projector dies on it and never projects another message (and on a
    restart meets it again), so the views, the checkpoints and `mesh audit verify`
    stop for the whole mesh; the agents retry it as a crash and dead-letter it as
    "the handler crashed or hung the agent". The ingress bounds depth; the log's
    readers do not. Who should refuse: the event store (flag it unreadable and go on),
    and every decoder of the log (a malformed event, dead-lettered as such)."""
    mesh = wrecked
    case_id = await mesh.open(lapsed(new_ref("deep")))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    step = CaseStepCompleted(
        case_id=case_id,
        correlation_id=closed.correlation_id,
        causation_id=closed.event_id,
        actor="claims-intake",
        payload=CaseStepCompletedPayload(step="notes", outcome="noted", evidence={"n": 1}),
    )
    deep = b'{"n":' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    body = encode(step).replace(b'{"n":1}', deep)
    subject = mesh.subjects.for_event(step)
    headers = mesh.key("claims-intake").signature_headers(subject, body)
    headers[MSG_ID] = step.event_id
    sequence = await store(await mesh.connect("claims-intake"), subject, body, headers)

    after = await mesh.open(lapsed(new_ref("afterdeep")))
    await mesh.wait_for_event(after, CaseClosed)
    info = await mesh.operator.jetstream().stream_info(mesh.topology.cases_stream)
    last = int(info.state.last_seq)

    async def projected() -> bool | None:
        status = (await store_request(mesh.operator, mesh.topology, "status", timeout=5)).status
        assert status is not None
        return status.last_sequence >= last or None

    try:
        await eventually(projected, timeout=10, interval=0.5, what="the store projecting")
    except AssertionError:
        pytest.fail(f"the event store stopped at the nested message (sequence {sequence})")
    timeline = await store_request(
        mesh.operator, mesh.topology, "timeline", CaseRequest(case_id=case_id), timeout=5
    )
    [flagged] = [e for e in timeline.timeline if e.sequence == sequence]
    assert not flagged.verified


async def test_no_card_update_leaves_the_registry_unable_to_answer(wrecked: Mesh) -> None:
    """Runs last: it leaves the registry unable to answer. An enrolled agent changes its
    card's purpose five times — 420,000 characters, then short, and so on. A purpose is
    no scope: each card goes in force at once, without an operator, and stays in the
    card history forever. The registry's `keys` reply carries every card ever in force of
    every principal in one message; past the broker's 1 MB it can no longer be sent, so
    no consumer, policy, reader or event store can bring its key directory up to date,
    and nothing in the mesh moves again: a claim opened afterwards never gets past
    `case_opened`. (Rotating keys again and again grows the key history the same way,
    more slowly.) Who should refuse: the registry (bounded cards, and replies that fit)."""
    mesh = wrecked
    identity = Identity.generate()
    card = walk_in(f"verbose-{uuid.uuid4().hex[:8]}", identity)
    await mesh.enrol(card, identity)
    registry = RegistryClient((await mesh.anonymous()).nc, mesh.subjects, timeout=10)
    for round_ in range(5):
        purpose = f"{round_} " + ("p" * 420_000 if round_ % 2 == 0 else "in short")
        with contextlib.suppress(MeshError):
            await registry.register(msgspec.structs.replace(card, purpose=purpose), identity)
    try:
        await RegistryClient(mesh.operator, mesh.subjects, timeout=5).keys_reply()
    except MeshError as exc:
        pytest.fail(f"the registry cannot answer `keys` any more: {exc}")
    case_id = await mesh.open(claim(new_ref("afterverbose")))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed, timeout=30)
    assert closed.payload.outcome == "paid"
