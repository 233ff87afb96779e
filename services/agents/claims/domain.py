"""Claims rules, as pure functions: coverage, fraud scoring, payout."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Annotated, Any

import msgspec

from contracts.envelope import Event
from contracts.events.actions import ActionCompleted, FactSource
from contracts.ingress import ClaimData

# What each kind of policy covers, in cents, and the deductible the claimant carries.
COVERAGE_LIMIT = {"auto": 2_500_000, "home": 5_000_000, "travel": 500_000, "health": 1_000_000}
DEDUCTIBLE = {"auto": 10_000, "home": 25_000, "travel": 5_000, "health": 0}
REPORTING_WINDOW = timedelta(days=365)
SUSPICIOUS_WORDS = ("staged", "cash only", "no witnesses", "total loss again")
# A theft is covered only on a police report: intake asks for one and waits this long.
THEFT_WORDS = ("theft", "stolen", "break-in")
POLICE_REPORT = "police_report"
POLICE_REPORT_WAIT = timedelta(days=14)
# The fact intake states (and is the one authority for) when it accepts a claim: no
# payment without it, whoever screened or adjudicated the case afterwards.
CLAIM_ACCEPTED = "claim_accepted"


@dataclass(frozen=True)
class IntakeResult:
    accepted: bool
    reasons: list[str]

    @property
    def evidence(self) -> dict[str, Any]:
        """What intake's step states as facts: `claim_accepted: true` for an accepted
        claim; nothing for a rejected one (its step says why, and it closes the case)."""
        return {CLAIM_ACCEPTED: True} if self.accepted else {}


def claim_accepted(facts: dict[str, FactSource]) -> bool:
    """Did intake (the authority for it, as `facts` already establish) accept the claim?
    Only an explicit `true` counts: a missing, false or odd value does not."""
    fact = facts.get(CLAIM_ACCEPTED)
    return fact is not None and fact.value is True


def obligation_key(case_id: str, action_type: str) -> str:
    """The business obligation a side effect discharges: one payout per claim. It is the
    gateway's idempotency key, so however often an approval arrives — redelivered,
    replayed, or a second request's — the claim is paid once."""
    return f"{case_id}:{action_type}"


def paid_by_another(history: Iterable[Event], action_type: str, request_id: str) -> str | None:
    """The request whose completed `action_type` already discharged the obligation
    (one payout per claim), in the case's verified `history`; None if no other did."""
    return next(
        (
            event.payload.request_id
            for event in history
            if isinstance(event, ActionCompleted)
            and event.payload.action_type == action_type
            and event.payload.request_id != request_id
        ),
        None,
    )


class PaymentInstruction(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an approved `issue_payment` must carry to be paid: a positive amount in
    cents, a currency and a payee account — checked again right before the gateway,
    whatever the policy said."""

    amount: Annotated[int, msgspec.Meta(gt=0)]
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
    payee_account: Annotated[str, msgspec.Meta(min_length=4, max_length=64)]


def payment_instruction(parameters: dict[str, Any]) -> PaymentInstruction | str:
    """The instruction, or why these parameters cannot be paid."""
    try:
        return msgspec.convert(parameters, PaymentInstruction, strict=True)
    except msgspec.ValidationError as exc:
        return f"the approved parameters cannot be paid: {exc}"


def read_claim(data: dict[str, Any]) -> ClaimData:
    """The claim carried by case_opened (already validated by the ingress)."""
    return msgspec.convert(data, ClaimData, strict=False)


def policy_active(policy_number: str) -> bool:
    """The reference book of business: policies whose number ends in 0 have lapsed."""
    return not policy_number.endswith("0")


def intake(claim: ClaimData, today: date) -> IntakeResult:
    reasons = []
    if not policy_active(claim.policy_number):
        reasons.append(f"policy {claim.policy_number} is not in force")
    if claim.incident_date > today:
        reasons.append(f"incident date {claim.incident_date} is in the future")
    elif today - claim.incident_date > REPORTING_WINDOW:
        reasons.append(f"reported more than {REPORTING_WINDOW.days} days after the incident")
    limit = COVERAGE_LIMIT[claim.claim_type]
    if claim.amount_cents > 4 * limit:
        reasons.append(f"claimed {claim.amount_cents} cents, far above the {limit} cover")
    return IntakeResult(accepted=not reasons, reasons=reasons)


def needs_police_report(claim: ClaimData) -> bool:
    """A claim for a theft is covered only once a police report is on file."""
    text = claim.description.lower()
    return any(word in text for word in THEFT_WORDS)


def fraud_score(claim: ClaimData) -> tuple[int, list[str]]:
    """0 (clean) to 100, with the signals that raised it."""
    score, signals = 5, []
    text = claim.description.lower()
    for word in SUSPICIOUS_WORDS:
        if word in text:
            score += 45
            signals.append(f"description mentions {word!r}")
    limit = COVERAGE_LIMIT[claim.claim_type]
    if claim.amount_cents >= 0.9 * limit:
        score += 20
        signals.append("amount at the edge of the cover")
    if claim.amount_cents % 100_000 == 0:
        score += 10
        signals.append("a round amount")
    return min(score, 100), signals


def payout(claim: ClaimData) -> int:
    """What the policy pays, in cents: the claim within the cover, less the deductible."""
    covered = min(claim.amount_cents, COVERAGE_LIMIT[claim.claim_type])
    return max(0, covered - DEDUCTIBLE[claim.claim_type])
