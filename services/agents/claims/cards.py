"""The claims agents' cards: who each is, who answers for it, what it may do."""

from __future__ import annotations

from contracts.authorship import APPROVAL_CHAIN_TYPES
from contracts.cards import ActionGrant, AgentCard
from services.agents.claims.domain import CLAIM_ACCEPTED

OWNER = "claims-team"
VERSION = "1.0.0"


def card(agent_id: str, name: str, purpose: str, **scope: list[str]) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=name,
        version=VERSION,
        owner=OWNER,
        purpose=purpose,
        consumes=scope.get("consumes", []),
        produces=scope.get("produces", []),
        reads=scope.get("reads", []),
        facts=scope.get("facts", []),
    )


INTAKE = card(
    "claims-intake",
    "Claims intake",
    "checks that a claim is covered and complete, waiting for a theft's police report",
    consumes=["case_opened", "evidence_received", "timer_fired"],
    produces=[
        "case_step_completed",
        "case_closed",
        "case_escalated",
        "case_waiting",
        "wait_ended",
        "timer_set",
        "timer_fired",
        "timer_cancelled",
    ],
    facts=[CLAIM_ACCEPTED],  # no claim is paid unless intake accepted it
)
FRAUD = card(
    "claims-fraud",
    "Fraud screening",
    "scores the fraud risk of an accepted claim",
    consumes=["case_step_completed"],
    produces=["case_step_completed"],
    reads=["case_opened"],
    facts=["fraud_score"],  # nobody else's fraud_score counts
)
ADJUDICATION = AgentCard(
    agent_id="claims-adjudication",
    name="Adjudication",
    version=VERSION,
    owner=OWNER,
    purpose="decides the payout and asks to pay it",
    consumes=["case_step_completed", "action_denied", "approval_expired"],
    produces=["case_step_completed", "action_requested", "case_closed"],
    reads=["case_opened"],
    facts=["payout_cents"],
    # The card's own ceiling, checked before any policy runs.
    actions=[ActionGrant(action_type="issue_payment", limits={"max_amount": 5_000_000})],
)
PAYMENT = card(
    "claims-payment",
    "Payment",
    "pays approved claims through the payment gateway, exactly once",
    consumes=["action_approved"],
    produces=["action_completed", "action_failed", "case_closed", "case_escalated"],
    # The approval chain it proves before paying (what it consumes it reads anyway).
    reads=[name for name in APPROVAL_CHAIN_TYPES if name != "action_approved"],
)
