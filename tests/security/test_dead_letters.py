"""Dead letters and their replay (issue 10, class 11): only the consumer that gave up
can file its dead letter (bound by the broker and by signature); a replay takes the
original subject, time and bytes from the log by sequence, never from headers; every
consumer refuses an event type that is not on its actor's card at that time; the list
shows the consumer. Who refuses: the broker (nobody publishes another's dead letters
or replays), the replay path and the consumers (a crafted dead letter delivers
nothing); what did not move: the gateway's ledger, the case's outcome.

Closed by the second half of issue 10 (6bac016); these fail against the first half
(0bad236) for the reasons they name."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts import (
    ActionDecisionPayload,
    ActionDenied,
    ActionRequested,
    CaseClosed,
    CaseStepCompleted,
    DecisionProvenance,
)
from contracts.codec import encode
from mesh._broker.stored_messages import StoredEvent
from mesh._trust.registry_client import request_with_patience
from mesh.testing import eventually
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


def crafted_headers(mesh: Mesh, original: str, sequence: int) -> dict[str, str]:
    """What a dead letter's headers said, before the fix, about where to deliver it."""
    return {
        "Mesh-Dlq-Reason": "gave up after 10 deliveries: gateway unavailable",
        "Mesh-Dlq-Kind": "exhausted",
        "Mesh-Dlq-Original-Subject": original,
        "Mesh-Dlq-Original-Stream": mesh.topology.cases_stream,
        "Mesh-Dlq-Original-Sequence": str(sequence),
        "Mesh-Dlq-Original-Time": datetime.now(UTC).isoformat(),
        "Mesh-Dlq-Consumer": "claims-adjudication",
        "Mesh-Dlq-Deliveries": "10",
    }


async def file_and_replay(
    mesh: Mesh, intake: Connection, body: bytes, headers: dict[str, str]
) -> int:
    """Intake files a crafted dead letter where the broker lets it, and an operator
    replays it the routine way (`mesh dlq replay`). Publishing straight onto another
    consumer's dead letters or replays is refused by the broker."""
    dlq = mesh.topology.dead_letter_stream
    await intake.refused_publish(
        mesh.subjects.dead_letter(mesh.topology.cases_stream, "claims-adjudication"), body
    )
    await intake.refused_publish(
        mesh.subjects.replay(mesh.topology.cases_stream, "claims-adjudication"), body
    )
    own = mesh.subjects.dead_letter(mesh.topology.cases_stream, "claims-intake")
    ack = await intake.js.publish(own, body, headers=headers)
    assert ack.stream == dlq
    await mesh.cli("dlq", "replay", str(ack.seq))  # refused or not: nothing may follow
    await mesh.settled()
    return int(ack.seq)


async def listed_consumer(mesh: Mesh, sequence: int) -> object:
    """Who `mesh dlq list` says filed the dead letter at `sequence`."""
    listed = await mesh.cli("dlq", "list", "--start", str(sequence), "--limit", "1", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    [row] = json.loads(listed.stdout)
    return row.get("consumer")


async def paid_claim(mesh: Mesh, prefix: str) -> tuple[str, list[StoredEvent]]:
    case_id = await mesh.open(claim(new_ref(prefix)))
    _, closed = await mesh.wait_for_event(case_id, CaseClosed)
    assert closed.payload.outcome == "paid"
    return case_id, await mesh.history(case_id)


async def still_paid_once(mesh: Mesh, case_id: str) -> None:
    history = await mesh.history(case_id)
    assert len(events(history, ActionRequested)) == 1, "adjudication asked to pay again"
    assert [e.payload.outcome for _, e in events(history, CaseClosed)] == ["paid"]
    [payment] = await mesh.case_payments(case_id)
    assert (payment["status"], payment["captures"]) == ("captured", 1)
    assert (await mesh.view(case_id)).outcome == "paid"


def crafted_screening(
    mesh: Mesh, case_id: str, history: list[Any]
) -> tuple[str, bytes, dict[str, str]]:
    """A fraud screening intake signs itself (it may publish steps), that is nowhere in
    the case log, dressed as a dead letter of adjudication's."""
    [(_, fraud_screening)] = [
        (s, e) for s, e in events(history, CaseStepCompleted) if e.payload.step == "fraud_screening"
    ]
    crafted = screening(case_id, fraud_screening, "claims-intake")
    subject = mesh.subjects.for_event(crafted)
    body, signature = signed(crafted, mesh.key("claims-intake"), subject)
    headers = {**signature, **crafted_headers(mesh, subject, history[-1].sequence + 1)}
    del headers["Nats-Msg-Id"]
    return crafted.event_id, body, headers


async def test_a_crafted_dead_letter_does_not_reach_another_consumer(mesh: Mesh) -> None:
    """Intake writes a fraud screening of a paid claim that is nowhere in the case log
    (a fresh event, its own key: intake may publish steps) and files it as a dead letter
    naming adjudication as the consumer that gave up on it. Replayed the routine way,
    it would make adjudication adjudicate the claim again and ask to pay it again."""
    case_id, history = await paid_claim(mesh, "dlqpay")
    crafted_id, body, headers = crafted_screening(mesh, case_id, history)
    intake = await mesh.connect("claims-intake")
    sequence = await file_and_replay(mesh, intake, body, headers)
    await still_paid_once(mesh, case_id)
    assert crafted_id not in {s.event.event_id for s in await mesh.history(case_id)}
    assert await listed_consumer(mesh, sequence) == "claims-intake"  # not whom it names


async def test_a_dead_letter_of_a_type_its_signer_may_not_publish_delivers_nothing(
    mesh: Mesh,
) -> None:
    """Intake signs an `action_denied` (a type only the policy service produces) for a
    paid claim and files it as adjudication's dead letter: replayed, it would make
    adjudication close the paid claim as denied."""
    case_id, history = await paid_claim(mesh, "dlqdeny")
    [(request_stored, request)] = events(history, ActionRequested)
    denial = ActionDenied(
        case_id=case_id,
        correlation_id=request.correlation_id,
        causation_id=request.event_id,
        actor="claims-intake",
        payload=ActionDecisionPayload(
            request_id=request.event_id,
            action_type="issue_payment",
            provenance=DecisionProvenance(policy_bundle_hash="forged"),
            reasons=["forbidden by high-fraud-score"],
        ),
    )
    subject = mesh.subjects.for_event(denial)
    body = encode(denial)
    headers = {
        **mesh.key("claims-intake").signature_headers(subject, body),
        **crafted_headers(mesh, subject, request_stored.sequence + 1),
    }
    intake = await mesh.connect("claims-intake")
    sequence = await file_and_replay(mesh, intake, body, headers)
    await still_paid_once(mesh, case_id)
    assert await listed_consumer(mesh, sequence) == "claims-intake"  # not whom it names


async def test_no_consumer_takes_another_s_dead_letter_through_the_reader(mesh: Mesh) -> None:
    """Adjudication dead-letters a screening intake forged in the fraud agent's name.
    Intake and the payment agent ask the case reader to replay that dead letter to them
    (it hands a consumer the message its dead letter points to): refused, and neither
    may ask in adjudication's name."""
    case_id = await mesh.open(lapsed(new_ref("dlqread")))
    _, rejected = await mesh.wait_for_event(
        case_id, CaseStepCompleted, lambda e: e.payload.outcome == "rejected"
    )
    mark = await mesh.dead_letter_mark()
    forged = screening(case_id, rejected, "claims-fraud")
    subject = mesh.subjects.for_event(forged)
    body, headers = signed(forged, mesh.key("claims-intake"), subject)
    intake = await mesh.connect("claims-intake")
    await store(intake, subject, body, headers)
    [letter] = await mesh.wait_for_dead_letters(
        mark, lambda d: d.body == body and d.consumer == "claims-adjudication"
    )
    request = json.dumps({"dead_letter_sequence": letter.sequence}).encode()
    for agent in ("claims-intake", "claims-payment"):
        asker = intake if agent == "claims-intake" else await mesh.connect(agent)
        msg = await request_with_patience(
            asker.nc,
            mesh.subjects.service_as("reader", "replay", agent),
            request,
            timeout=10,
            what="a replay through the reader",
        )
        answer = json.loads(msg.data)
        assert answer["ok"] is False
        assert f"not by {agent}" in answer["error"]
        assert not answer.get("messages")
    await intake.refused_publish(
        mesh.subjects.service_as("reader", "replay", "claims-adjudication"), request
    )


async def test_a_replay_the_reader_refuses_is_settled_not_retried_forever(mesh: Mesh) -> None:
    """Found while attacking: intake files a dead letter on its own subject that no
    consumer filed (no filing signature), and an operator replays it. The case reader
    rightly refuses to resolve it — but an agent's runtime gets that refusal as the
    reader's ReadRefused, not as ReplayRefused (which the dispatcher terminates), so it
    retries it as transient, past MESH_MAX_DELIVER and without end: with no original
    to file, it can never dead-letter it either. A replay that resolves to nothing must
    be settled, as it is when a service resolves it in-process."""
    case_id, history = await paid_claim(mesh, "dlqpoison")
    _, body, headers = crafted_screening(mesh, case_id, history)
    intake = await mesh.connect("claims-intake")
    await file_and_replay(mesh, intake, body, headers)
    # MESH_MAX_DELIVER is 10 in the stack, with redelivery delays of at most 3 s: even
    # taken as transient, it is given up on well within this.
    settled: bool = await eventually(
        lambda: _settled(mesh, "claims-intake_replay"),
        timeout=45,
        interval=0.5,
        what="intake settling the replay the reader refused",
    )
    assert settled
    await still_paid_once(mesh, case_id)


async def _settled(mesh: Mesh, durable: str) -> bool | None:
    return await mesh.unsettled(durable) == 0 or None
