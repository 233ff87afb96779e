"""The approval chain's one rule (mesh/_trust/approval_chain.py) and the three places
that read it: the policy service taking a human's decision, the executor's proof before
a side effect (`require_authorization`) and the offline audit. The executor now refuses
what the policy service and the auditor refuse — a grant by anyone but a human holding
the role asked — so such a grant moves no money even if a decision cites it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    AgentCard,
    AgentKey,
    ApprovalEscalated,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    ApprovalRequiredPayload,
    DecisionProvenance,
    Subjects,
)
from contracts.cards import CardPeriod
from contracts.codec import encode
from contracts.envelope import Event
from contracts.events.actions import ApprovalTimedOutPayload
from contracts.registry_api import PrincipalKeys
from mesh import Identity, NotAuthorized
from mesh._broker.stored_messages import StoredEvent
from mesh._trust.approval_chain import approver_refusal, human_decision_refusal, role_asked
from mesh._trust.authorization import require_authorization
from mesh._trust.identity import message_digest
from mesh._trust.key_directory import KeyDirectory
from services.eventstore.audit.case_policy import check_case
from services.eventstore.domain import LogRecord
from services.policy.approvals import ApprovalRefused, PendingApproval, check_approver

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
SUBJECTS = Subjects()
PROVENANCE = DecisionProvenance(policy_bundle_hash="abc")
GRANTS = ["approval_granted"]
PRINCIPALS: dict[str, tuple[str, list[str], list[str]]] = {
    # agent id: kind, roles, produces
    "adjudication": ("agent", [], ["action_requested"]),
    "policy": (
        "service",
        [],
        ["action_approved", "action_denied", "approval_required", "approval_escalated"],
    ),
    "dana": ("human", ["approver", "claims_manager"], GRANTS),
    "erin": ("human", ["approver", "claims_manager", "head_of_claims"], GRANTS),
    "clerk": ("human", ["approver"], GRANTS),
    "robot": ("agent", ["approver", "claims_manager"], GRANTS),
    "sam": ("human", ["approver", "claims_manager"], [*GRANTS, "action_requested"]),
}
IDENTITIES = {name: Identity.generate() for name in PRINCIPALS}


def card(agent_id: str) -> AgentCard:
    kind, roles, produces = PRINCIPALS[agent_id]
    return AgentCard(
        agent_id=agent_id,
        name=agent_id,
        version="1",
        owner="o",
        purpose="p",
        kind=kind,  # type: ignore[arg-type]
        roles=roles,
        produces=produces,
    )


def directory() -> KeyDirectory:
    keys = KeyDirectory()
    keys.load(
        [
            PrincipalKeys(
                agent_id=name,
                status="active",
                status_changed_at=EPOCH,
                updated_at=EPOCH,
                key_history=[AgentKey(public_key=identity.public_key, valid_from=EPOCH)],
                cards=[CardPeriod(card=card(name), valid_from=EPOCH)],
            )
            for name, identity in IDENTITIES.items()
        ]
    )
    return keys


@dataclass
class CaseLog:
    """One case's log as the broker would store it: each event signed by its actor."""

    stored: list[StoredEvent] = field(default_factory=list)

    def add(self, event: Event) -> StoredEvent:
        subject = SUBJECTS.for_event(event)
        body = encode(event)
        sequence = len(self.stored) + 1
        stored = StoredEvent(
            sequence=sequence,
            subject=subject,
            body=body,
            headers=IDENTITIES[event.actor].signature_headers(subject, body),
            event=event,
            stored_at=EPOCH + timedelta(days=1, seconds=sequence),
        )
        self.stored.append(stored)
        return stored

    def records(self) -> list[LogRecord]:
        """The same log as the auditor reads it."""
        return [
            LogRecord(
                sequence=s.sequence,
                subject=s.subject,
                case_id=s.event.case_id or "",
                stored_at=s.stored_at,
                headers=s.headers,
                body=s.body,
                leaf=b"",
                event=s.event,
                signer=IDENTITIES[s.event.actor].public_key,
                problem=None,
            )
            for s in self.stored
        ]


@dataclass
class Chain:
    log: CaseLog
    request: ActionRequested
    grant: ApprovalGranted


def asked(role: str, request_id: str = "r-1", digest: str = "") -> ApprovalRequired:
    return ApprovalRequired(
        case_id="c-1",
        actor="policy",
        payload=ApprovalRequiredPayload(
            request_id=request_id,
            action_type="issue_payment",
            provenance=PROVENANCE,
            approver_role=role,
            deadline=EPOCH + timedelta(days=2),
            request_digest=digest,
        ),
    )


def escalated(role: str | None, request_id: str = "r-1") -> ApprovalEscalated:
    return ApprovalEscalated(
        case_id="c-1",
        actor="policy",
        payload=ApprovalTimedOutPayload(
            request_id=request_id,
            action_type="issue_payment",
            waited_since=EPOCH,
            reason="late",
            escalated_to=role,
        ),
    )


def approval_chain(
    approver: str, *, requester: str = "adjudication", escalate_to: str | None = None
) -> Chain:
    """A payment policy put to a claims manager (escalated to `escalate_to`, if given),
    granted by `approver`, and approved by the policy service citing that grant."""
    log = CaseLog()
    request = ActionRequested(
        case_id="c-1",
        actor=requester,
        payload=ActionRequestedPayload(action_type="issue_payment", parameters={"amount": 1}),
    )
    stored = log.add(request)
    digest = message_digest(stored.subject, stored.body)
    log.add(asked("claims_manager", request.event_id, digest))
    if escalate_to is not None:
        log.add(escalated(escalate_to, request.event_id))
    grant = ApprovalGranted(
        case_id="c-1",
        actor=approver,
        payload=ApprovalGrantedPayload(
            request_id=request.event_id, approver=approver, request_digest=digest
        ),
    )
    log.add(grant)
    log.add(
        ActionApproved(
            case_id="c-1",
            actor="policy",
            payload=ActionDecisionPayload(
                request_id=request.event_id,
                action_type="issue_payment",
                provenance=PROVENANCE,
                approval_id=grant.event_id,
                approver=approver,
                request_digest=digest,
            ),
        )
    )
    return Chain(log, request, grant)


async def executor_refusal(chain: Chain) -> str | None:
    """Why the executor of the payment refuses to run it; None if it runs it."""
    try:
        proof = await require_authorization(
            chain.log.stored, directory(), request_id=chain.request.event_id
        )
    except NotAuthorized as exc:
        return exc.reason
    assert proof.approval == chain.grant
    return None


def audit_findings(chain: Chain) -> list[str]:
    found: list[str] = []
    check_case(chain.log.records(), directory(), lambda _, problem: found.append(problem))
    # The case has no case_opened here: that finding is about the fixture, not the chain.
    return [problem for problem in found if "before the case was opened" not in problem]


# ---------------------------------------------------------------------- the rule


def test_the_role_asked_is_the_requirement_s_or_the_latest_escalation_s() -> None:
    assert role_asked([], "r-1") is None
    assert role_asked([asked("claims_manager", "r-2")], "r-1") is None
    assert role_asked([asked("claims_manager")], "r-1") == "claims_manager"
    assert (
        role_asked([asked("claims_manager"), escalated("head_of_claims")], "r-1")
        == "head_of_claims"
    )
    assert role_asked([asked("claims_manager"), escalated(None)], "r-1") == "claims_manager"
    assert role_asked([asked("claims_manager"), escalated("cfo", "r-2")], "r-1") == (
        "claims_manager"
    )


def test_only_a_human_whose_card_holds_the_role_may_approve() -> None:
    assert approver_refusal("dana", card("dana"), "claims_manager") is None
    assert approver_refusal("dana", None, "claims_manager") == (
        "dana held no card in force when it approved"
    )
    assert approver_refusal("robot", card("robot"), "claims_manager") == (
        "robot is a agent; only a human approves"
    )
    assert approver_refusal("clerk", card("clerk"), "claims_manager") == (
        "deciding this needs the role 'claims_manager'; clerk has ['approver']"
    )


def refusal(approver: str = "dana", **changes: str) -> str | None:
    facts = {
        "named": approver,
        "cited_digest": "d1",
        "request_digest": "d1",
        "requester": "adjudication",
        "action_type": "issue_payment",
        "role": "claims_manager",
    } | changes
    return human_decision_refusal(approver, card(approver), **facts)


def test_a_human_decision_binds_the_request_its_signer_and_no_requester() -> None:
    assert refusal() is None
    assert "an approval binds the exact request" in str(refusal(cited_digest="d2"))
    assert refusal(named="erin") == "signed by dana but names erin as approver"
    assert refusal(requester="dana") == "dana requested issue_payment itself and cannot decide it"
    assert "needs the role 'head_of_claims'" in str(refusal(role="head_of_claims"))


def test_the_policy_service_refuses_by_the_same_rule() -> None:
    pending = PendingApproval(
        request_id="r-1",
        case_id="c-1",
        correlation_id="c-1",
        action_type="issue_payment",
        requester="adjudication",
        approver_role="claims_manager",
        requested_at=EPOCH,
        deadline=EPOCH + timedelta(days=1),
        sla_seconds=60,
        provenance=PROVENANCE,
        required_event_id="e-1",
        request_digest="d1",
    )
    assert check_approver(pending, "r-1", "dana", card("dana"), EPOCH) is pending
    with pytest.raises(ApprovalRefused) as refused:
        check_approver(pending, "r-1", "clerk", card("clerk"), EPOCH, request_digest="d1")
    assert refused.value.reason == approver_refusal("clerk", card("clerk"), "claims_manager")


# ---------------------------------------------------------------------- its readers


async def test_a_grant_by_a_human_of_the_role_asked_authorizes_and_audits_clean() -> None:
    chain = approval_chain("dana")
    assert await executor_refusal(chain) is None
    assert audit_findings(chain) == []


@pytest.mark.parametrize(
    ("approver", "options", "executor_says", "auditor_says"),
    [
        (
            "clerk",
            {},
            "deciding this needs the role 'claims_manager'; clerk has ['approver']",
            "relies on clerk's grant, but clerk was not a human claims_manager",
        ),
        (
            "robot",
            {},
            "robot is a agent; only a human approves",
            "relies on robot's grant, but robot was not a human claims_manager",
        ),
        (
            "dana",
            {"escalate_to": "head_of_claims"},
            "deciding this needs the role 'head_of_claims'",
            "relies on dana's grant, but dana was not a human head_of_claims",
        ),
        (
            "sam",
            {"requester": "sam"},
            "sam requested issue_payment itself and cannot decide it",
            "sam approves its own request (self-approval)",
        ),
    ],
)
async def test_a_grant_the_rule_refuses_moves_no_money_and_is_named_by_the_audit(
    approver: str, options: dict[str, str], executor_says: str, auditor_says: str
) -> None:
    """Even with the policy service's approval citing it (a compromised or buggy policy
    service), the executor refuses before any side effect; the auditor names it too."""
    chain = approval_chain(approver, **options)
    reason = await executor_refusal(chain)
    assert reason is not None
    assert reason.startswith(f"approval by {approver} does not count: ")
    assert executor_says in reason
    assert any(auditor_says in problem for problem in audit_findings(chain))


async def test_an_escalation_s_role_holder_authorizes() -> None:
    chain = approval_chain("erin", escalate_to="head_of_claims")
    assert await executor_refusal(chain) is None
    assert audit_findings(chain) == []
