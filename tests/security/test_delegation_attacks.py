"""Attacks on explicit delegation of approval authority (6565f81) with real credentials
against the running stack (`running_stack`: every part its own process, the broker
enforcing the registry's generated authorization). Every agent is assumed compromised:
each attack uses the attacker's own key (an enrolled delegate, a human, a sub-delegate)
or, where only policy could write it, the policy service's own key (as if it were
compromised or wrong), to see that the payment executor and the verifier hold anyway.

Each test asserts the safe outcome. Closed after this review (they were strict xfails):
- a human approver is accepted as a delegate (no operator-approved 'delegate' role);
- a suspended person's delegates keep approving in her name;
- a revoked (or suspended) agent inside a chain keeps passing on its authority;
- the verifier does not name a decision claiming acting_for for a person's own grant.
The first three pass policy and the executor's own rule alike (the payment agent pays a
delegated grant since 43e941d, which made it read case_opened: the control below).

Who refuses what:
- the registry: a delegation signed by anyone but its delegator, by a suspended or
  revoked person, under a taken id, to a card that signs no approvals, from an agent
  claiming to be a root, passed on without leave, widened in any dimension, or naming
  itself as its parent; a revocation by anyone but the chain or an operator;
- the broker: a forged registry event (delegation_granted) from an agent;
- policy: a grant under someone else's delegation, outside its case kinds, action
  types, amount or validity, after a revocation up the chain (judged by the log's time,
  even when policy was held still meanwhile), for the delegator's or a chain member's
  own request, replayed into another case, or that Cedar forbids; a rejection under a
  delegation that does not cover it; a human's grant naming a delegation not theirs;
- the payment executor: a decision (signed with the policy key) citing a delegated
  grant the chain rule refuses;
- the verifier: a decision whose acting_for differs from the chain, an edited
  delegation in the bundle's principals or in the sealed manifest, a delegation
  statement forged or altered.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionDenied,
    ActionFailed,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRejected,
    ApprovalRejectedPayload,
    ApprovalRequired,
    CaseStepCompleted,
)
from contracts.audit_bundle import AuditBundle, AuditPrincipal, Manifest, SignedDocument
from contracts.cards import ActionGrant, AgentCard, AgentKey, SignedStatement
from contracts.delegation import Delegation, DelegationRecord
from contracts.events.registry import DelegationGranted, DelegationGrantedPayload
from mesh._trust.authorization import require_authorization
from mesh._trust.identity import Identity
from mesh._trust.key_directory import KeyDirectory
from mesh._trust.registry_client import RegistryClient
from mesh.errors import NotAuthorized, RegistryRefused
from mesh.testing import eventually
from services.eventstore.audit.delegations import delegation_findings
from tests.security.kit import Connection, Mesh, claim, events, new_ref, signed, store

pytestmark = [pytest.mark.asyncio(loop_scope="package"), pytest.mark.security]

ROLE = "claims_manager"
PAYOUT = 250_001  # an auto claim of 260,001 pays this (less the 10,000 deductible)
CLAIMED = PAYOUT + 10_000
Outcome = str  # "approved …", "denied …" or "refused: <policy's reason>"


# ---------------------------------------------------------------------------- harness


@dataclass
class Team:
    """Principals enrolled by an operator for one test (their ids carry its tag)."""

    mesh: Mesh
    tag: str

    def id(self, name: str) -> str:
        return f"{name}-{self.tag}"

    def did(self, name: str) -> str:
        return f"{name}-{self.tag}"

    async def human(
        self,
        name: str,
        *,
        roles: tuple[str, ...] = ("approver", ROLE),
        limit: int | None = 800_000,
        requests: bool = False,
    ) -> Connection:
        actions = (
            [ActionGrant(action_type="issue_payment", limits={"max_amount": limit})]
            if limit is not None
            else [ActionGrant(action_type="issue_payment")]
            if requests
            else []
        )
        card = AgentCard(
            agent_id=self.id(name),
            name=f"{name} (claims desk)",
            version="1",
            owner="claims-desk",
            purpose="approves or rejects large payouts",
            kind="human",
            roles=list(roles),
            produces=[
                "approval_granted",
                "approval_rejected",
                *(["action_requested"] if requests else []),
            ],
            actions=actions,
        )
        return await self.mesh.enrol(card)

    async def bot(
        self,
        name: str,
        *,
        roles: tuple[str, ...] = ("delegate",),
        approves: bool = True,
        requests: bool = False,
    ) -> Connection:
        card = AgentCard(
            agent_id=self.id(name),
            name=f"{name} (approval agent)",
            version="1",
            owner="claims-team",
            purpose="decides payout approvals for a claims manager",
            kind="agent",
            roles=list(roles),
            produces=[
                *(["approval_granted", "approval_rejected"] if approves else []),
                *(["action_requested", "case_step_completed"] if requests else []),
            ]
            or ["case_step_completed"],
            actions=[ActionGrant(action_type="issue_payment")] if requests else [],
        )
        return await self.mesh.enrol(card)

    def registry(self, who: Connection) -> RegistryClient:
        return RegistryClient(who.nc, self.mesh.subjects)

    async def delegate(
        self, signer: Connection, delegation: Delegation, carrier: Connection | None = None
    ) -> None:
        """`signer` signs it; `carrier` (by default the signer) sends it."""
        assert signer.identity is not None
        await self.registry(carrier or signer).delegate(delegation, signer.identity)

    async def revoke(self, signer: Connection, delegation_id: str) -> None:
        assert signer.identity is not None
        await self.registry(signer).revoke_delegation(delegation_id, "attack", signer.identity)

    async def status(self, operation: str, who: Connection) -> None:
        await self.mesh.stack.registry.change_status(
            operation, who.name, "attack review", self.mesh.key("operator")
        )


async def team(mesh: Mesh) -> Team:
    return Team(mesh, uuid.uuid4().hex[:6])


def delegation(
    delegation_id: str, delegator: Connection, delegate: Connection, **changes: Any
) -> Delegation:
    now = datetime.now(UTC)
    base = Delegation(
        delegation_id=delegation_id,
        delegator=delegator.name,
        delegate=delegate.name,
        role=ROLE,
        action_types=["issue_payment"],
        max_amount=500_000,
        case_kinds=["insurance_claim"],
        valid_from=now - timedelta(minutes=1),
        valid_until=now + timedelta(hours=8),
    )
    return msgspec.structs.replace(base, **changes)


def passed_on(
    delegation_id: str,
    held: Delegation,
    delegator: Connection,
    delegate: Connection,
    **changes: Any,
) -> Delegation:
    """`held` passed on by its delegate, within it (the same period unless changed)."""
    fields: dict[str, Any] = {
        "parent": held.delegation_id,
        "valid_from": held.valid_from,
        "valid_until": held.valid_until,
        **changes,
    }
    return delegation(delegation_id, delegator, delegate, **fields)


async def pending_claim(mesh: Mesh, prefix: str, claimed: int = CLAIMED) -> ApprovalRequired:
    """A large auto claim, adjudicated, waiting for a claims manager."""
    case_id = await mesh.open(claim(new_ref(prefix), amount=claimed))
    _, required = await mesh.wait_for_event(case_id, ApprovalRequired)
    assert required.payload.approver_role == ROLE
    return required


async def decide(
    mesh: Mesh,
    who: Connection,
    required: ApprovalRequired,
    delegation_id: str | None,
    *,
    reject: bool = False,
    case_id: str | None = None,
) -> ApprovalGranted | ApprovalRejected:
    """`who` grants (or rejects) the pending request, signed with its own key, naming
    itself and, if given, the delegation it acts under."""
    assert who.identity is not None
    target = case_id or required.case_id
    decision: ApprovalGranted | ApprovalRejected
    if reject:
        decision = ApprovalRejected(
            case_id=target,
            correlation_id=required.correlation_id,
            causation_id=required.event_id,
            actor=who.name,
            payload=ApprovalRejectedPayload(
                request_id=required.payload.request_id,
                approver=who.name,
                reason="not convinced",
                request_digest=required.payload.request_digest,
                delegation_id=delegation_id,
            ),
        )
    else:
        decision = ApprovalGranted(
            case_id=target,
            correlation_id=required.correlation_id,
            causation_id=required.event_id,
            actor=who.name,
            payload=ApprovalGrantedPayload(
                request_id=required.payload.request_id,
                approver=who.name,
                comment="within my delegation",
                request_digest=required.payload.request_digest,
                delegation_id=delegation_id,
            ),
        )
    subject = mesh.subjects.for_event(decision)
    await store(who, subject, *signed(decision, who.identity, subject))
    return decision


async def outcome(mesh: Mesh, mark: int, case_id: str, decision_id: str) -> Outcome:
    """What policy made of a human's (or a delegate's) decision: its own decision citing
    it, or the dead letter with its refusal."""

    async def look() -> Outcome | None:
        history = await mesh.history(case_id)
        for _, approved in events(history, ActionApproved):
            if approved.payload.approval_id == decision_id:
                return f"approved acting_for={approved.payload.acting_for}"
        for _, denied in events(history, ActionDenied):
            if denied.payload.approval_id == decision_id:
                return f"denied acting_for={denied.payload.acting_for}"
        letters = await mesh.dead_letters(
            mark, lambda d: d.consumer == "policy" and decision_id.encode() in d.body
        )
        return f"refused: {letters[0].reason}" if letters else None

    found: Outcome = await eventually(
        look, timeout=30, interval=0.2, what=f"policy's answer to {decision_id}"
    )
    return found


async def refused(mesh: Mesh, mark: int, case_id: str, decision_id: str, why: str) -> None:
    answer = await outcome(mesh, mark, case_id, decision_id)
    assert answer.startswith("refused:"), answer
    assert why in answer, answer


async def registry_refuses(attempt: Awaitable[object], why: str) -> None:
    with pytest.raises(RegistryRefused) as refusal:
        await attempt
    assert why in str(refusal.value), str(refusal.value)


async def policy_approves_forged(
    mesh: Mesh, required: ApprovalRequired, grant: ApprovalGranted, **extra: Any
) -> ActionApproved:
    """An approving decision citing `grant`, signed with the policy service's own key
    (compromised, or wrong): what the executor and the verifier must still judge."""
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
            **extra,
        ),
    )
    subject = mesh.subjects.for_event(approved)
    await store(policy, subject, *signed(approved, mesh.key("policy"), subject))
    return approved


async def executor(mesh: Mesh, required: ApprovalRequired) -> Outcome:
    """The payment executor's own rule (`require_authorization`) on the whole case log,
    as the operator reads it (case_opened included), with the registry's current keys
    and delegations: "authorized" or "refused: <why>"."""
    assert required.case_id is not None
    keys = KeyDirectory()
    reply = await mesh.stack.registry.keys_reply()
    keys.load(reply.keys, reply.registry_sequence)
    try:
        await require_authorization(
            await mesh.history(required.case_id), keys, request_id=required.payload.request_id
        )
    except NotAuthorized as exc:
        return f"refused: {exc.reason}"
    return "authorized"


async def hole_closed(mesh: Mesh, required: ApprovalRequired, answer: Outcome) -> None:
    """Policy refused the grant, the executor's rule refuses it on the whole log, and
    (once the mesh is quiet) nothing was paid."""
    assert required.case_id is not None
    await mesh.settled()
    verdicts = (answer, await executor(mesh, required))
    paid = await mesh.case_payments(required.case_id)
    audit = [v.problem for v in mesh.verify(await mesh.bundle(required.case_id)).violations]
    assert all(v.startswith("refused:") for v in verdicts), (verdicts, paid, audit)
    assert paid == []


async def delegated_pair(t: Team) -> tuple[Connection, Connection, Delegation]:
    """maria, a claims manager (own limit 800,000), and her approval agent under D1."""
    maria = await t.human("maria")
    bot = await t.bot("bot")
    d1 = delegation(t.did("D1"), maria, bot)
    await t.delegate(maria, d1)
    return maria, bot, d1


# ---------------------------------------------------------------------------- registry


async def test_only_the_delegator_signs_a_delegation(mesh: Mesh) -> None:
    """The delegate, a fellow claims manager and an agent claiming to be a chain's root
    each sign a delegation of maria's authority (or their own as an agent); and maria's
    retired key, after she rotated it, signs one (carried by the delegate)."""
    t = await team(mesh)
    maria = await t.human("maria")
    peer = await t.human("peer")
    bot = await t.bot("bot")
    for signer in (bot, peer):
        await registry_refuses(
            t.delegate(signer, delegation(t.did(f"F-{signer.name}"), maria, bot)),
            f"not a current key of {maria.name}",
        )
    other = await t.bot("other")
    await registry_refuses(
        t.delegate(bot, delegation(t.did("ROOT"), bot, other)),
        f"{bot.name} is a agent; only a human approves",
    )

    old = maria.identity
    assert old is not None
    new = Identity.generate()
    card = (await mesh.stack.registry.get(maria.name)).card
    rotated = msgspec.structs.replace(
        card, keys=[AgentKey(public_key=new.public_key, valid_from=datetime.now(UTC))]
    )
    await RegistryClient((await mesh.anonymous()).nc, mesh.subjects).register(rotated, old, new)
    await registry_refuses(
        t.delegate(maria, delegation(t.did("RETIRED"), maria, bot), carrier=bot),
        f"signed by {old.public_key}, not a current key of {maria.name}",
    )
    await t.delegate(Connection(maria.name, bot.nc, new), delegation(t.did("NEW"), maria, bot))


async def test_a_suspended_or_revoked_person_delegates_nothing(mesh: Mesh) -> None:
    """Suspended or revoked, a person's broker credentials are gone: the delegate
    carries her signed delegation to the registry for her."""
    t = await team(mesh)
    bot = await t.bot("bot")
    for operation in ("suspend", "revoke"):
        person = await t.human(f"p-{operation}")
        await t.status(operation, person)
        await registry_refuses(
            t.delegate(person, delegation(t.did(f"D-{operation}"), person, bot), carrier=bot),
            f"the delegator {person.name} is not an active principal",
        )


async def test_a_delegation_id_is_taken_once_and_a_revocation_is_not_undone(mesh: Mesh) -> None:
    """Another claims manager signs a delegation under maria's id; maria's own signed
    delegation, sent again after its revocation, does not bring it back."""
    t = await team(mesh)
    maria, bot, d1 = await delegated_pair(t)
    peer = await t.human("peer")
    await registry_refuses(
        t.delegate(peer, delegation(d1.delegation_id, peer, bot)),
        f"delegation id {d1.delegation_id} is taken",
    )
    await t.revoke(maria, d1.delegation_id)
    await t.delegate(maria, d1)  # the same signed body: already recorded, nothing changes
    [held] = [
        record
        for keys in await mesh.stack.registry.keys()
        for record in keys.delegations
        if record.delegation.delegation_id == d1.delegation_id
    ]
    assert held.revoked_at is not None
    assert held.delegation.delegator == maria.name


async def test_only_an_agent_with_the_operator_approved_role_receives_a_delegation(
    mesh: Mesh,
) -> None:
    """A card that signs approvals without the role 'delegate' is not enrolled; an agent
    whose card signs no approvals receives no delegation."""
    t = await team(mesh)
    maria = await t.human("maria")
    await registry_refuses(
        t.bot("norole", roles=("helper",)),
        "only a human with the approver role, or an agent with the role 'delegate'",
    )
    mute = await t.bot("mute", approves=False)
    await registry_refuses(
        t.delegate(maria, delegation(t.did("MUTE"), maria, mute)),
        "is no delegate",
    )


async def test_a_human_without_the_role_gains_none_by_delegation(mesh: Mesh) -> None:
    t = await team(mesh)
    maria = await t.human("maria")
    clerk = await t.human("clerk", roles=("approver",), limit=None)
    d = delegation(t.did("H2H"), maria, clerk)
    try:
        await t.delegate(maria, d)
    except RegistryRefused:
        return  # the safe outcome: only an agent with the role 'delegate' is a delegate
    required = await pending_claim(mesh, "h2h")
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, clerk, required, d.delegation_id)
    answer = await outcome(mesh, mark, required.case_id or "", grant.event_id)
    await hole_closed(mesh, required, answer)


async def test_passing_on_never_widens(mesh: Mesh) -> None:
    """bot1 holds D1 (may be passed on) and tries to pass on more than it holds; bot2
    tries to pass on bot1's; a delegation names itself as its parent; D-closed may not
    be passed on at all."""
    t = await team(mesh)
    maria = await t.human("maria")
    bot1, bot2 = await t.bot("bot1"), await t.bot("bot2")
    d1 = delegation(t.did("D1"), maria, bot1, may_delegate=True)
    closed = delegation(t.did("DC"), maria, bot1)
    await t.delegate(maria, d1)
    await t.delegate(maria, closed)

    def child(n: int, **changes: Any) -> Delegation:
        return passed_on(t.did(f"C{n}"), d1, bot1, bot2, **changes)

    attempts: list[tuple[Connection, Delegation, str]] = [
        (bot1, child(1, max_amount=500_001), "max_amount 500001 above 500000"),
        (bot1, child(2, action_types=["issue_payment", "refund"]), "action types ['refund']"),
        (bot1, child(3, case_kinds=["insurance_claim", "loan"]), "case kinds ['loan']"),
        (bot1, child(4, valid_until=d1.valid_until + timedelta(seconds=1)), "validity beyond"),
        (bot1, child(5, valid_from=d1.valid_from - timedelta(seconds=1)), "validity beyond"),
        (bot1, child(6, role="head_of_claims"), "role 'head_of_claims' is not"),
        (
            bot2,
            passed_on(t.did("C7"), d1, bot2, bot1),
            f"it is {bot1.name}'s to pass on, not {bot2.name}'s",
        ),
        (bot1, child(8, parent=closed.delegation_id), f"{closed.delegation_id} may not be"),
        (bot1, child(9, parent=t.did("C9")), f"parent delegation {t.did('C9')} is not in force"),
    ]
    for signer, attempt, why in attempts:
        await registry_refuses(t.delegate(signer, attempt), why)
    # Within bounds it is recorded.
    await t.delegate(bot1, child(10, max_amount=100_000))


async def test_only_the_chain_above_or_an_operator_revokes(mesh: Mesh) -> None:
    """maria -> bot1 (D1) -> bot2 (D2). Neither delegate revokes what it received, nor a
    fellow claims manager; maria revokes D2 (she is up its chain), an operator D1."""
    t = await team(mesh)
    maria, outsider = await t.human("maria"), await t.human("outsider")
    bot1, bot2 = await t.bot("bot1"), await t.bot("bot2")
    d1 = delegation(t.did("D1"), maria, bot1, may_delegate=True)
    await t.delegate(maria, d1)
    d2 = passed_on(t.did("D2"), d1, bot1, bot2)
    await t.delegate(bot1, d2)
    for signer, target in (
        (bot1, d1),
        (bot2, d2),
        (bot2, d1),
        (outsider, d1),
        (outsider, d2),
    ):
        await registry_refuses(
            t.revoke(signer, target.delegation_id),
            "only the delegator, someone up its chain, or an operator",
        )
    await t.revoke(maria, d2.delegation_id)
    operator = await mesh.connect("operator")
    await t.revoke(operator, d1.delegation_id)
    revoked = {
        record.delegation.delegation_id: record.revoked_by
        for keys in await mesh.stack.registry.keys()
        for record in keys.delegations
        if record.delegation.delegation_id in (d1.delegation_id, d2.delegation_id)
    }
    assert revoked == {d1.delegation_id: "operator", d2.delegation_id: maria.name}


async def test_an_agent_cannot_write_the_registry_s_history(mesh: Mesh) -> None:
    """A delegate forges a delegation_granted (a statement of its own, under maria's
    name) straight onto the registry's subject: the broker refuses it."""
    t = await team(mesh)
    maria = await t.human("maria")
    bot = await t.bot("bot")
    assert bot.identity is not None
    forged = delegation(t.did("FORGED"), maria, bot, max_amount=10_000_000)
    body = msgspec.json.encode(forged)
    statement = SignedStatement.of("x", body, bot.identity.public_key, bot.identity.sign("x", body))
    event = DelegationGranted(
        actor="registry", payload=DelegationGrantedPayload(delegation=forged, statement=statement)
    )
    subject = mesh.subjects.for_event(event)
    body, headers = signed(event, bot.identity, subject)
    await bot.refused_publish(subject, body, headers=headers)
    assert not [
        r
        for keys in await mesh.stack.registry.keys()
        for r in keys.delegations
        if r.delegation.delegation_id == forged.delegation_id
    ]


async def test_a_delegation_is_in_force_from_its_storage_until_before_its_end(
    mesh: Mesh,
) -> None:
    """The chain's clock at its edges: in force from the moment the registry stored it
    (not from an earlier `valid_from`), not at `valid_until`, not at or after the
    moment its revocation was stored."""
    t = await team(mesh)
    maria, bot, d1 = await delegated_pair(t)
    [record] = [
        r
        for keys in await mesh.stack.registry.keys()
        for r in keys.delegations
        if r.delegation.delegation_id == d1.delegation_id
    ]
    tick = timedelta(microseconds=1)
    granted = record.granted_at
    assert d1.valid_from < granted
    assert not record.in_force(granted - tick)
    assert record.in_force(granted)
    assert record.in_force(d1.valid_until - tick)
    assert not record.in_force(d1.valid_until)
    await t.revoke(maria, d1.delegation_id)
    [revoked] = [
        r
        for keys in await mesh.stack.registry.keys()
        for r in keys.delegations
        if r.delegation.delegation_id == d1.delegation_id
    ]
    assert revoked.revoked_at is not None
    assert revoked.in_force(revoked.revoked_at - tick)
    assert not revoked.in_force(revoked.revoked_at)
    assert bot.name == d1.delegate


# ---------------------------------------------------------------------------- policy


async def test_control_a_delegated_grant_within_scope_is_approved(mesh: Mesh) -> None:
    """The control the attacks below are measured against: within its delegation the
    bot's grant is approved, for maria, under D1."""
    t = await team(mesh)
    _, bot, d1 = await delegated_pair(t)
    required = await pending_claim(mesh, "control")
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, bot, required, d1.delegation_id)
    assert required.case_id is not None
    answer = await outcome(mesh, mark, required.case_id, grant.event_id)
    assert answer == f"approved acting_for={t.id('maria')}"
    assert await executor(mesh, required) == "authorized"


async def test_control_a_delegated_grant_within_scope_is_paid(mesh: Mesh) -> None:
    """And the payment agent pays it: the executor sees the case's kind (43e941d)."""
    t = await team(mesh)
    _, bot, d1 = await delegated_pair(t)
    required = await pending_claim(mesh, "paid")
    assert required.case_id is not None
    await decide(mesh, bot, required, d1.delegation_id)

    async def settled() -> str | None:
        history = await mesh.history(required.case_id or "")
        failed = [e.payload.error for _, e in events(history, ActionFailed)]
        paid = await mesh.case_payments(required.case_id or "")
        return f"failed: {failed[0]}" if failed else ("paid" if paid else None)

    result: str = await eventually(settled, timeout=30, interval=0.3, what="the payout")
    assert result == "paid", result


async def test_a_delegation_counts_only_for_its_own_delegate_and_scope(mesh: Mesh) -> None:
    """One pending claim (payout 250,001), many grants that must not count: another
    agent's delegation; delegations of bot's own that cover another kind of case,
    another action, a smaller amount, a later period, an expired one; maria's own grant
    naming bot's delegation; a clerk's naming it. Then a grant that does count."""
    t = await team(mesh)
    maria, bot, d1 = await delegated_pair(t)
    intruder = await t.bot("intruder")
    clerk = await t.human("clerk", roles=("approver",), limit=None)
    now = datetime.now(UTC)
    expiring = delegation(t.did("EXP"), maria, bot, valid_until=now + timedelta(seconds=2))
    scoped: dict[str, tuple[dict[str, Any], str]] = {
        "KIND": (dict(case_kinds=["travel_claim"]), "a insurance_claim case is not among"),
        "TYPE": (dict(action_types=["request_documents"]), "issue_payment is not among"),
        "AMT": (dict(max_amount=PAYOUT - 1), f"amount {PAYOUT} above its max_amount"),
        "LATER": (
            dict(valid_from=now + timedelta(hours=1), valid_until=now + timedelta(hours=2)),
            "was not valid",
        ),
        "ROLE": (dict(role="approver"), "it is for the role 'approver'; policy asked"),
    }
    await t.delegate(maria, expiring)
    for suffix, (changes, _) in scoped.items():
        await t.delegate(maria, delegation(t.did(suffix), maria, bot, **changes))
    required = await pending_claim(mesh, "scope")
    case_id = required.case_id
    assert case_id is not None
    await asyncio.sleep(max(0.0, (expiring.valid_until - datetime.now(UTC)).total_seconds()))

    attempts: list[tuple[Connection, str, str]] = [
        (intruder, d1.delegation_id, f"is {bot.name}'s, not {intruder.name}'s"),
        (bot, expiring.delegation_id, f"delegation {expiring.delegation_id} was not valid"),
        # A person is no delegate: they decide as themselves or not at all.
        (maria, d1.delegation_id, f"{maria.name} was no agent with the role 'delegate'"),
        (clerk, d1.delegation_id, f"{clerk.name} was no agent with the role 'delegate'"),
        (bot, t.did("NOSUCH"), "is not in the registry's history"),
        *((bot, t.did(suffix), why) for suffix, (_, why) in scoped.items()),
    ]
    for who, delegation_id, why in attempts:
        mark = await mesh.dead_letter_mark()
        grant = await decide(mesh, who, required, delegation_id)
        await refused(mesh, mark, case_id, grant.event_id, why)
    assert not events(await mesh.history(case_id), ActionApproved)

    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, bot, required, d1.delegation_id)
    assert await outcome(mesh, mark, case_id, grant.event_id) == (
        f"approved acting_for={maria.name}"
    )


async def test_cedar_keeps_large_payouts_from_delegates(mesh: Mesh) -> None:
    """maria may approve 3,000,000 and hands bot 2,000,000; a payout of 1,500,001 is
    within both, but policy lets no delegate approve more than 1,000,000."""
    t = await team(mesh)
    maria = await t.human("maria", limit=3_000_000)
    bot = await t.bot("bot")
    d = delegation(t.did("BIG"), maria, bot, max_amount=2_000_000)
    await t.delegate(maria, d)
    required = await pending_claim(mesh, "cap", claimed=1_510_001)
    assert required.case_id is not None
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, bot, required, d.delegation_id)
    await refused(
        mesh, mark, required.case_id, grant.event_id, "forbidden by delegated-payouts-stay-small"
    )


async def _own_request(
    mesh: Mesh, requester: Connection, prefix: str
) -> tuple[ActionRequested, ApprovalRequired]:
    """`requester` asks to pay a large claim (adjudication held still meanwhile), within
    the claim, to its payee: policy asks a claims manager."""
    assert requester.identity is not None
    body = claim(new_ref(prefix), amount=CLAIMED)
    async with mesh.paused("adjudication"):
        case_id = await mesh.open(body)
        _, screened = await mesh.wait_for_event(
            case_id, CaseStepCompleted, lambda e: e.payload.step == "fraud_screening"
        )
        request = ActionRequested(
            case_id=case_id,
            correlation_id=screened.correlation_id,
            causation_id=screened.event_id,
            actor=requester.name,
            payload=ActionRequestedPayload(
                action_type="issue_payment",
                parameters={
                    "amount": PAYOUT,
                    "currency": "EUR",
                    "payee_account": body["data"]["payee_account"],
                },
            ),
        )
        subject = mesh.subjects.for_event(request)
        await store(requester, subject, *signed(request, requester.identity, subject))
        _, required = await mesh.wait_for_event(
            case_id, ApprovalRequired, lambda e: e.payload.request_id == request.event_id
        )
    return request, required


async def test_no_one_in_the_chain_approves_the_chain_s_own_requests(mesh: Mesh) -> None:
    """maria -> bot1 (D1) -> bot2 (D2). maria asks for a payout: neither bot1 nor bot2
    approves it for her. bot1 asks for one: neither bot1 itself nor bot2 (whose
    authority comes from bot1) approves it."""
    t = await team(mesh)
    maria = await t.human("maria", requests=True)
    bot1 = await t.bot("bot1", requests=True)
    bot2 = await t.bot("bot2")
    d1 = delegation(t.did("D1"), maria, bot1, may_delegate=True)
    await t.delegate(maria, d1)
    d2 = passed_on(t.did("D2"), d1, bot1, bot2)
    await t.delegate(bot1, d2)

    for requester in (maria, bot1):
        _, required = await _own_request(mesh, requester, f"own-{requester.name}")
        assert required.case_id is not None
        for who, d in ((bot1, d1), (bot2, d2)):
            mark = await mesh.dead_letter_mark()
            grant = await decide(mesh, who, required, d.delegation_id)
            await refused(
                mesh,
                mark,
                required.case_id,
                grant.event_id,
                f"{requester.name} requested issue_payment itself and cannot decide it",
            )
        assert not events(await mesh.history(required.case_id), ActionApproved)


async def test_revocation_counts_from_the_log_s_time_even_for_a_policy_held_still(
    mesh: Mesh,
) -> None:
    """Policy is held still; a grant is stored under D1, then maria revokes D1, then
    bot2 grants under D2 (passed on from D1) in another case. When policy resumes: the
    first counts (it was stored while D1 was in force), the second does not (its chain
    was revoked before it was stored), however late policy's directory learnt of it."""
    t = await team(mesh)
    maria = await t.human("maria")
    bot1, bot2 = await t.bot("bot1"), await t.bot("bot2")
    d1 = delegation(t.did("D1"), maria, bot1, may_delegate=True)
    await t.delegate(maria, d1)
    d2 = passed_on(t.did("D2"), d1, bot1, bot2)
    await t.delegate(bot1, d2)
    before, after = await pending_claim(mesh, "before"), await pending_claim(mesh, "after")
    assert before.case_id is not None
    assert after.case_id is not None
    mark = await mesh.dead_letter_mark()
    async with mesh.paused("policy"):
        early = await decide(mesh, bot1, before, d1.delegation_id)
        await t.revoke(maria, d1.delegation_id)
        late = await decide(mesh, bot2, after, d2.delegation_id)
    assert await outcome(mesh, mark, before.case_id, early.event_id) == (
        f"approved acting_for={maria.name}"
    )
    await refused(
        mesh, mark, after.case_id, late.event_id, f"delegation {d1.delegation_id} was revoked"
    )


async def test_a_delegated_grant_replayed_into_another_case_approves_nothing(mesh: Mesh) -> None:
    """Two claims wait. bot signs a grant in case B citing A's request: refused. bot's
    grant in case A counts; its exact bytes (signature and all) stored again in case B
    approve nothing there: B's request still waits, A holds one approval."""
    t = await team(mesh)
    _, bot, d1 = await delegated_pair(t)
    first, second = await pending_claim(mesh, "replay-a"), await pending_claim(mesh, "replay-b")
    assert first.case_id is not None
    assert second.case_id is not None
    mark = await mesh.dead_letter_mark()
    cross = await decide(mesh, bot, first, d1.delegation_id, case_id=second.case_id)
    await refused(
        mesh, mark, second.case_id, cross.event_id, f"belongs to case {first.case_id}, not"
    )
    grant = await decide(mesh, bot, first, d1.delegation_id)
    assert (await outcome(mesh, mark, first.case_id, grant.event_id)).startswith("approved")

    assert bot.identity is not None
    body, headers = signed(grant, bot.identity, mesh.subjects.for_event(grant))
    moved = mesh.subjects.case_event(second.case_id, "approval_granted")
    await store(bot, moved, body, {**headers, "Nats-Msg-Id": uuid.uuid4().hex})
    await mesh.settled()
    assert not events(await mesh.history(second.case_id), ActionApproved)
    assert len(events(await mesh.history(first.case_id), ActionApproved)) == 1
    waiting = await mesh.pending(await mesh.connect("operator"))
    assert second.payload.request_id in [i["request_id"] for i in waiting]


async def test_a_rejection_under_a_delegation_that_does_not_cover_it_denies_nothing(
    mesh: Mesh,
) -> None:
    """A delegate cannot kill a payout it may not decide: a rejection under another's
    delegation, or beyond its own amount, is refused and the request still waits; one
    within its delegation denies it, for maria."""
    t = await team(mesh)
    maria, bot, d1 = await delegated_pair(t)
    small = delegation(t.did("SMALL"), maria, bot, max_amount=1_000)
    await t.delegate(maria, small)
    intruder = await t.bot("intruder")
    required = await pending_claim(mesh, "reject")
    case_id = required.case_id
    assert case_id is not None
    for who, d, why in (
        (intruder, d1, f"is {bot.name}'s, not {intruder.name}'s"),
        (bot, small, f"amount {PAYOUT} above its max_amount 1000"),
    ):
        mark = await mesh.dead_letter_mark()
        rejection = await decide(mesh, who, required, d.delegation_id, reject=True)
        await refused(mesh, mark, case_id, rejection.event_id, why)
    assert not events(await mesh.history(case_id), ActionDenied)
    mark = await mesh.dead_letter_mark()
    rejection = await decide(mesh, bot, required, d1.delegation_id, reject=True)
    assert await outcome(mesh, mark, case_id, rejection.event_id) == (
        f"denied acting_for={maria.name}"
    )


async def test_a_suspended_person_s_delegate_approves_nothing_for_her(mesh: Mesh) -> None:
    t = await team(mesh)
    maria, bot, d1 = await delegated_pair(t)
    await t.status("suspend", maria)
    required = await pending_claim(mesh, "suspended")
    assert required.case_id is not None
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, bot, required, d1.delegation_id)
    answer = await outcome(mesh, mark, required.case_id, grant.event_id)
    await hole_closed(mesh, required, answer)


async def test_a_revoked_link_passes_on_nothing(mesh: Mesh) -> None:
    t = await team(mesh)
    maria = await t.human("maria")
    bot1, bot2 = await t.bot("bot1"), await t.bot("bot2")
    d1 = delegation(t.did("D1"), maria, bot1, may_delegate=True)
    await t.delegate(maria, d1)
    d2 = passed_on(t.did("D2"), d1, bot1, bot2)
    await t.delegate(bot1, d2)
    await t.status("revoke", bot1)  # compromised: the kill switch
    required = await pending_claim(mesh, "revoked-link")
    assert required.case_id is not None
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, bot2, required, d2.delegation_id)
    answer = await outcome(mesh, mark, required.case_id, grant.event_id)
    await hole_closed(mesh, required, answer)


# ---------------------------------------------------------------------------- executor


@pytest.mark.parametrize("variant", ["beyond-amount", "another-s-delegation"])
async def test_the_executor_refuses_a_delegated_grant_policy_should_not_have_accepted(
    mesh: Mesh, variant: str
) -> None:
    """A delegated grant policy refused; then an approving decision citing it, signed
    with the policy key: the payment agent re-checks the chain and pays nothing, and the
    verifier names the decision."""
    t = await team(mesh)
    maria, bot, d1 = await delegated_pair(t)
    if variant == "beyond-amount":
        d = delegation(t.did("SMALL"), maria, bot, max_amount=100_000)
        await t.delegate(maria, d)
        who, why = bot, f"amount {PAYOUT} above its max_amount 100000"
    else:
        d, who = d1, await t.bot("intruder")
        why = f"is {bot.name}'s, not {who.name}'s"
    required = await pending_claim(mesh, f"exec-{variant}")
    case_id = required.case_id
    assert case_id is not None
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, who, required, d.delegation_id)
    await refused(mesh, mark, case_id, grant.event_id, why)
    assert isinstance(grant, ApprovalGranted)
    approved = await policy_approves_forged(
        mesh, required, grant, acting_for=maria.name, delegations=[d.delegation_id]
    )

    _, failed = await mesh.wait_for_event(
        case_id, ActionFailed, lambda e: e.payload.request_id == required.payload.request_id
    )
    assert f"not executed: approval by {who.name} does not count" in failed.payload.error
    assert why in failed.payload.error
    assert await mesh.case_payments(case_id) == []
    report = mesh.verify(await mesh.bundle(case_id))
    named = [v.problem for v in report.violations if f"event {approved.event_id}" in v.where]
    assert any("under a delegation that does not hold" in p and why in p for p in named), named


# ---------------------------------------------------------------------------- verifier


async def test_the_verifier_names_a_decision_misstating_whom_a_delegate_acted_for(
    mesh: Mesh,
) -> None:
    """bot's grant under D1 is approved for maria; a second decision (policy's key)
    cites the same grant but says bot acted for someone else under another chain."""
    t = await team(mesh)
    _, bot, d1 = await delegated_pair(t)
    required = await pending_claim(mesh, "misstated")
    assert required.case_id is not None
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, bot, required, d1.delegation_id)
    assert (await outcome(mesh, mark, required.case_id, grant.event_id)).startswith("approved")
    assert isinstance(grant, ApprovalGranted)
    forged = await policy_approves_forged(
        mesh, required, grant, acting_for="head-of-claims", delegations=["D-ELSEWHERE"]
    )
    await mesh.settled()
    report = mesh.verify(await mesh.bundle(required.case_id))
    named = [v.problem for v in report.violations if f"event {forged.event_id}" in v.where]
    assert any("acted for head-of-claims under ['D-ELSEWHERE']" in p for p in named), named


async def test_the_verifier_names_a_delegation_claimed_for_a_person_s_own_grant(
    mesh: Mesh,
) -> None:
    t = await team(mesh)
    maria = await t.human("maria")
    required = await pending_claim(mesh, "claimed")
    assert required.case_id is not None
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, maria, required, None)
    assert (await outcome(mesh, mark, required.case_id, grant.event_id)).startswith("approved")
    assert isinstance(grant, ApprovalGranted)
    forged = await policy_approves_forged(
        mesh, required, grant, acting_for="head-of-claims", delegations=["D-INVENTED"]
    )
    await mesh.settled()
    report = mesh.verify(await mesh.bundle(required.case_id))
    named = [v.problem for v in report.violations if f"event {forged.event_id}" in v.where]
    assert any("head-of-claims" in p for p in named), named


def _edit_delegation(
    principals: list[AuditPrincipal], delegation_id: str, edit: Callable[[DelegationRecord], Any]
) -> list[AuditPrincipal]:
    def edited(p: AuditPrincipal) -> AuditPrincipal:
        records = [
            edit(r) if r.delegation.delegation_id == delegation_id else r
            for r in p.keys.delegations
        ]
        return msgspec.structs.replace(p, keys=msgspec.structs.replace(p.keys, delegations=records))

    return [edited(p) for p in principals]


def _sealed(bundle: AuditBundle) -> list[AuditPrincipal]:
    first = msgspec.json.decode(bundle.manifest[0].body, type=Manifest)
    return first.principals


async def test_the_verifier_is_not_fooled_by_an_edited_or_forged_delegation(mesh: Mesh) -> None:
    """A delegated approval, revoked afterwards, exported. In the bundle: the loose
    principals' copy of D1 widened and un-revoked; then the sealed manifest's copy. And,
    as if the registry itself had been fooled, the verifier's own check of delegation
    statements signed by the delegate's key, or altered after signing."""
    t = await team(mesh)
    maria, bot, d1 = await delegated_pair(t)
    required = await pending_claim(mesh, "bundle")
    assert required.case_id is not None
    mark = await mesh.dead_letter_mark()
    grant = await decide(mesh, bot, required, d1.delegation_id)
    assert (await outcome(mesh, mark, required.case_id, grant.event_id)).startswith("approved")
    await t.revoke(maria, d1.delegation_id)
    await mesh.settled()
    bundle = await mesh.bundle(required.case_id)
    assert not [v for v in mesh.verify(bundle).violations if v.check == "delegation"]

    def widen(record: DelegationRecord) -> DelegationRecord:
        wider = msgspec.structs.replace(record.delegation, max_amount=50_000_000)
        return msgspec.structs.replace(record, delegation=wider, revoked_at=None)

    loose = msgspec.structs.replace(
        bundle, principals=_edit_delegation(bundle.principals, d1.delegation_id, widen)
    )
    report = mesh.verify(loose)
    assert any(
        v.where == f"principal {bot.name}" and "delegations" in v.problem for v in report.violations
    ), report.violations

    page = msgspec.json.decode(bundle.manifest[0].body, type=Manifest)
    resealed = msgspec.structs.replace(
        page, principals=_edit_delegation(page.principals, d1.delegation_id, widen)
    )
    document = SignedDocument(
        subject=bundle.manifest[0].subject,
        headers=bundle.manifest[0].headers,
        body_b64=base64.b64encode(msgspec.json.encode(resealed)).decode(),
    )
    sealed_edit = msgspec.structs.replace(
        bundle,
        manifest=[document, *bundle.manifest[1:]],
        principals=resealed.principals,
    )
    report = mesh.verify(sealed_edit)
    assert not report.ok
    assert any(v.check == "integrity" for v in report.violations), report.violations

    # The verifier's own check of each sealed delegation, as if the registry were fooled.
    assert bot.identity is not None
    assert maria.identity is not None
    principals = _sealed(bundle)
    keys = KeyDirectory()
    keys.load([p.keys for p in principals])

    def signed_by(identity: Identity, body: bytes) -> Callable[[DelegationRecord], Any]:
        def edit(record: DelegationRecord) -> DelegationRecord:
            subject = record.statement.subject
            statement = SignedStatement.of(
                subject, body, identity.public_key, identity.sign(subject, body)
            )
            return msgspec.structs.replace(record, statement=statement)

        return edit

    honest = msgspec.json.encode(d1)
    wider = msgspec.json.encode(msgspec.structs.replace(d1, max_amount=50_000_000))
    cases = {
        "by the delegate": (signed_by(bot.identity, honest), f"not signed by {maria.name}"),
        "altered": (signed_by(maria.identity, wider), "another delegation than the one recorded"),
        "widened": (
            lambda r: msgspec.structs.replace(
                r, delegation=msgspec.structs.replace(r.delegation, max_amount=50_000_000)
            ),
            "another delegation than the one recorded",
        ),
    }
    for name, (edit, why) in cases.items():
        findings = delegation_findings(_edit_delegation(principals, d1.delegation_id, edit), keys)
        problems = [p for where, p in findings if d1.delegation_id in where]
        assert any(why in p for p in problems), (name, findings)
