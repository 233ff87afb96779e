"""Least privilege for reads as for writes (issue 10, class 12): an agent reads only the
cases it works on, and of those only what its card needs; pending approvals go to
approvers (of the role asked) and to the requester. Who refuses: the broker (no direct
reads of the case stream), the case reader (a case the agent does not work on, a type
its card does not read), the policy service (what it lists to whom).

The pending-approvals part was closed by the first half of issue 10 (0bad236), the case
reads by the second (6bac016); the case-read tests fail against the first half for the
reasons they name. Reading through one's own durable is still open (see that test)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from contracts import ActionDenied, ApprovalRequired, CaseClosed
from contracts.cards import AgentCard
from mesh._trust.registry_client import request_with_patience
from mesh.testing import eventually
from tests.security.kit import FRAUDULENT, Mesh, claim, new_ref

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]


async def read_through_reader(mesh: Mesh, agent_id: str, case_id: str) -> dict[str, Any]:
    """The case reader's answer to `agent_id` asking for a case's history."""
    agent = await mesh.connect(agent_id)
    msg = await request_with_patience(
        agent.nc,
        mesh.subjects.service_as("reader", "history", agent_id),
        json.dumps({"case_id": case_id}).encode(),
        timeout=10,
        what="case history through the reader",
    )
    answer: dict[str, Any] = msgspec.json.decode(msg.data)
    return answer


async def test_an_agent_cannot_read_a_case_it_does_not_work_on(mesh: Mesh) -> None:
    """The payment agent never worked on a claim policy denied (no approved action ever
    reached it). It tries to read the claim — claimant, policy number, payee account —
    by direct get, by subject and by sequence on the case stream, and through the case
    reader."""
    case_id = await mesh.open(claim(new_ref("reads"), description=FRAUDULENT))
    await mesh.wait_for_event(case_id, ActionDenied)
    await mesh.wait_for_event(case_id, CaseClosed)
    opened = (await mesh.history(case_id))[0]
    cases = mesh.topology.cases_stream
    payment = await mesh.connect("claims-payment")
    received: list[Msg] = []

    async def keep(msg: Msg) -> None:
        received.append(msg)

    inbox = payment.nc.new_inbox()
    await payment.nc.subscribe(inbox, cb=keep)
    for subject, request in (
        (f"$JS.API.DIRECT.GET.{cases}", {"last_by_subj": opened.subject}),
        (f"$JS.API.DIRECT.GET.{cases}.{opened.subject}", None),
        (f"$JS.API.STREAM.MSG.GET.{cases}", {"seq": opened.sequence}),
    ):
        body = b"" if request is None else json.dumps(request).encode()
        await payment.send(subject, body, reply=inbox)
        await payment.refused_publish(subject, body)
    await payment.nc.flush()
    assert [m for m in received if opened.body in (m.data or b"")] == []

    answer = await read_through_reader(mesh, "claims-payment", case_id)
    assert answer["ok"] is False
    # Nor may another agent ask the reader in payment's name (the broker binds the name).
    intake = await mesh.connect("claims-intake")
    await intake.refused_publish(
        mesh.subjects.service_as("reader", "history", "claims-payment"),
        json.dumps({"case_id": case_id}).encode(),
    )
    assert f"claims-payment works on no case '{case_id}'" in str(answer["error"])
    assert not answer.get("messages")


async def test_an_agent_reads_only_the_event_types_its_card_needs(mesh: Mesh) -> None:
    """Intake works on every claim (it consumes `case_opened`), but its card reads none
    of a payout's request (amount, payee account) or the policy's decisions on it — nor
    the policy's timers (its approval deadline), though intake's card reads timer_set:
    an agent reads only its own timers."""
    case_id = await mesh.open(claim(new_ref("readtypes"), amount=300_001))
    await mesh.wait_for_event(case_id, ApprovalRequired)
    answer = await read_through_reader(mesh, "claims-intake", case_id)
    assert answer["ok"] is True, answer
    types = {str(m["subject"]).rsplit(".", 1)[-1] for m in answer["messages"]}
    assert types <= {"case_opened", "case_step_completed", "case_closed"}, types
    assert "case_opened" in types


async def test_a_principal_that_consumes_nothing_reads_nothing_through_its_durable(
    mesh: Mesh,
) -> None:
    """Found while attacking: the registry provisions a durable on the case stream for
    every active card, filtered by what the card consumes. A card that consumes nothing
    — a producer-only agent, a human approver — gets a durable with no filter at all,
    and the broker lets its principal pull from its own durable: every message of every
    case (claimants, policy numbers, payee accounts). An agent enrolled for exactly such
    a card, and the approver `dana`, pull from theirs after a claim is opened."""
    producer = await mesh.enrol(
        AgentCard(
            agent_id=f"notifier-{new_ref('n')[-6:]}",
            name="Claim notifier",
            version="1",
            owner="claims-team",
            purpose="notes claims for the claimants' letters",
            produces=["case_step_completed"],
        )
    )
    approver = await mesh.human()
    case_id = await mesh.open(claim(new_ref("durable"), payee="DE89-60000006"))
    await mesh.wait_for_event(case_id, CaseClosed)
    cases = mesh.topology.cases_stream
    leaked: dict[str, list[str]] = {}
    for principal in (producer, approver):
        received: list[Msg] = []
        answered = asyncio.Event()

        async def keep(
            msg: Msg, received: list[Msg] = received, answered: asyncio.Event = answered
        ) -> None:
            if msg.headers and msg.headers.get("Status"):
                answered.set()  # no (more) messages for this pull, or no such durable
            else:
                received.append(msg)

        inbox = principal.nc.new_inbox()
        await principal.nc.subscribe(inbox, cb=keep)
        pull = f"$JS.API.CONSUMER.MSG.NEXT.{cases}.{principal.name}"
        request = json.dumps({"batch": 10_000, "no_wait": True}).encode()
        await principal.send(pull, request, reply=inbox)
        await eventually(
            lambda p=principal, a=answered, s=pull: a.is_set() or p.refused(s),
            timeout=15,
            what=f"the broker answering {principal.name}'s pull",
        )
        read = sorted({m.subject for m in received if f".case.{case_id}." in m.subject})
        if read:
            leaked[principal.name] = read
    assert not leaked, f"read through their own durables: {leaked}"


async def test_pending_approvals_go_to_approvers_and_the_requester_only(mesh: Mesh) -> None:
    """A large payout waits for a claims manager. The requester and an approver of that
    role see it (with its parameters); intake, fraud screening and a human without the
    role see nothing; nobody may ask in another's name, and an outside system or an
    anonymous connection may not ask at all."""
    case_id = await mesh.open(claim(new_ref("pending"), amount=300_001, payee="DE89-50000005"))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    request_id = required.payload.request_id
    dana = await mesh.human()
    clerk = await mesh.human(
        f"clerk-{new_ref('c')[-6:]}", roles=["approver"], produces=["approval_rejected"]
    )
    seen = {}
    for who in (
        await mesh.connect("claims-adjudication"),
        dana,
        await mesh.connect("claims-intake"),
        await mesh.connect("claims-fraud"),
        clerk,
    ):
        seen[who.name] = [i for i in await mesh.pending(who) if i["request_id"] == request_id]
    assert [i["parameters"]["payee_account"] for i in seen["claims-adjudication"]] == [
        "DE89-50000005"
    ]
    assert [i["request_id"] for i in seen["dana"]] == [request_id]
    assert seen["claims-intake"] == seen["claims-fraud"] == seen[clerk.name] == []

    intake = await mesh.connect("claims-intake")
    await intake.refused_publish(mesh.subjects.service_as("policy", "pending", "dana"))
    crm = await mesh.connect("crm")
    await crm.refused_publish(mesh.subjects.service_as("policy", "pending", "crm"))
    anonymous = await mesh.anonymous()
    await anonymous.refused_publish(mesh.subjects.service_as("policy", "pending", "onboarding"))
