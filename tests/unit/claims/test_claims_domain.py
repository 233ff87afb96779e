"""The claims rules as pure functions: what intake refuses, what raises a fraud score,
what a claim pays, and what an approved payment must carry before the gateway."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.events.actions import FactSource
from contracts.ingress import ClaimData
from services.agents.claims.cards import ADJUDICATION, FRAUD, INTAKE, PAYMENT
from services.agents.claims.domain import (
    CLAIM_ACCEPTED,
    COVERAGE_LIMIT,
    DEDUCTIBLE,
    REPORTING_WINDOW,
    SUSPICIOUS_WORDS,
    IntakeResult,
    PaymentInstruction,
    claim_accepted,
    fraud_score,
    intake,
    obligation_key,
    payment_instruction,
    payout,
    policy_active,
    read_claim,
)

TODAY = date(2026, 11, 20)
CLAIM_TYPES = sorted(COVERAGE_LIMIT)


def claim(**changes: Any) -> ClaimData:
    fields: dict[str, Any] = {
        "policy_number": "P-12345",
        "claimant": "Ada Lovelace",
        "claim_type": "auto",
        "amount_cents": 123_456,
        "incident_date": TODAY - timedelta(days=3),
        "description": "rear-ended at a red light",
        "payee_account": "DE89-0001",
    }
    fields.update(changes)
    return ClaimData(**fields)


# ------------------------------------------------------------------ reading a claim


def test_a_claim_is_read_from_the_json_data_of_case_opened() -> None:
    data = msgspec.to_builtins(claim())
    assert data["incident_date"] == "2026-11-17"  # as the log carries it
    assert read_claim(data) == claim()


def test_unreadable_claim_data_is_a_validation_error() -> None:
    data = msgspec.to_builtins(claim())
    del data["payee_account"]
    with pytest.raises(msgspec.ValidationError, match="payee_account"):
        read_claim(data)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        read_claim({**msgspec.to_builtins(claim()), "bonus": 1})
    with pytest.raises(msgspec.ValidationError, match="claim_type"):
        read_claim({**msgspec.to_builtins(claim()), "claim_type": "pet"})


# ------------------------------------------------------------------ intake


def test_a_claim_in_force_reported_in_time_and_within_cover_is_accepted() -> None:
    result = intake(claim(), TODAY)
    assert result.accepted
    assert result.reasons == []


@pytest.mark.parametrize(
    ("number", "active"), [("P-12345", True), ("P-12340", False), ("P-10000", False)]
)
def test_policies_whose_number_ends_in_zero_have_lapsed(number: str, active: bool) -> None:
    assert policy_active(number) is active
    assert intake(claim(policy_number=number), TODAY).accepted is active


def test_a_lapsed_policy_is_refused_and_named() -> None:
    result = intake(claim(policy_number="P-12340"), TODAY)
    assert not result.accepted
    assert result.reasons == ["policy P-12340 is not in force"]


def test_an_incident_in_the_future_is_refused() -> None:
    tomorrow = TODAY + timedelta(days=1)
    result = intake(claim(incident_date=tomorrow), TODAY)
    assert result.reasons == [f"incident date {tomorrow} is in the future"]
    assert intake(claim(incident_date=TODAY), TODAY).accepted  # today is not the future


def test_the_reporting_window_is_a_year_to_the_day() -> None:
    assert timedelta(days=365) == REPORTING_WINDOW
    assert intake(claim(incident_date=TODAY - REPORTING_WINDOW), TODAY).accepted
    late = intake(claim(incident_date=TODAY - REPORTING_WINDOW - timedelta(days=1)), TODAY)
    assert late.reasons == ["reported more than 365 days after the incident"]


@pytest.mark.parametrize("claim_type", CLAIM_TYPES)
def test_a_claim_far_above_the_cover_is_refused(claim_type: str) -> None:
    limit = COVERAGE_LIMIT[claim_type]
    assert intake(claim(claim_type=claim_type, amount_cents=4 * limit), TODAY).accepted
    result = intake(claim(claim_type=claim_type, amount_cents=4 * limit + 1), TODAY)
    assert result.reasons == [f"claimed {4 * limit + 1} cents, far above the {limit} cover"]


def test_every_reason_is_given_at_once_in_a_fixed_order() -> None:
    result = intake(
        claim(
            policy_number="P-99990",
            incident_date=TODAY - timedelta(days=400),
            claim_type="travel",
            amount_cents=4 * COVERAGE_LIMIT["travel"] + 1,
        ),
        TODAY,
    )
    assert not result.accepted
    assert [reason.split()[0] for reason in result.reasons] == ["policy", "reported", "claimed"]


def test_an_accepted_claim_states_intake_s_acceptance_as_a_fact() -> None:
    assert intake(claim(), TODAY).evidence == {"claim_accepted": True}
    assert CLAIM_ACCEPTED == "claim_accepted"  # the name the policy bundle reads


def test_a_rejected_claim_states_no_fact() -> None:
    """A rejection says why in its step (and closes the case); it states no fact."""
    assert intake(claim(policy_number="P-12340"), TODAY).evidence == {}


def test_intake_alone_is_the_authority_for_the_acceptance() -> None:
    assert INTAKE.facts == [CLAIM_ACCEPTED]
    for other in (FRAUD, ADJUDICATION, PAYMENT):
        assert CLAIM_ACCEPTED not in other.facts


def _fact(value: Any) -> dict[str, FactSource]:
    source = FactSource(
        name=CLAIM_ACCEPTED, value=value, event_id="e-1", actor="claims-intake", sequence=2
    )
    return {CLAIM_ACCEPTED: source}


@pytest.mark.parametrize(
    ("facts", "accepted"),
    [
        ({}, False),
        (_fact(True), True),
        (_fact(False), False),
        (_fact("true"), False),
        (_fact(1), False),
        (_fact(None), False),
    ],
)
def test_only_an_explicit_true_acceptance_counts(
    facts: dict[str, FactSource], accepted: bool
) -> None:
    assert claim_accepted(facts) is accepted


def test_the_acceptance_fact_follows_the_verdict() -> None:
    assert IntakeResult(accepted=True, reasons=[]).evidence == {CLAIM_ACCEPTED: True}
    assert IntakeResult(accepted=False, reasons=["lapsed"]).evidence == {}


# ------------------------------------------------------------------ fraud score


def test_a_plain_claim_scores_the_baseline_with_no_signal() -> None:
    assert fraud_score(claim()) == (5, [])


@pytest.mark.parametrize("word", SUSPICIOUS_WORDS)
def test_each_suspicious_word_adds_45_and_is_named(word: str) -> None:
    score, signals = fraud_score(claim(description=f"It was {word.upper()}, honestly"))
    assert score == 50  # found whatever the case
    assert signals == [f"description mentions {word!r}"]


def test_an_amount_at_the_edge_of_the_cover_and_a_round_amount_raise_the_score() -> None:
    limit = COVERAGE_LIMIT["home"]
    edge = int(0.9 * limit) + 1
    assert fraud_score(claim(claim_type="home", amount_cents=edge)) == (
        25,
        ["amount at the edge of the cover"],
    )
    assert fraud_score(claim(claim_type="home", amount_cents=int(0.9 * limit) - 1))[0] == 5
    assert fraud_score(claim(amount_cents=300_000)) == (15, ["a round amount"])
    assert fraud_score(claim(amount_cents=300_001))[0] == 5


def test_the_score_is_capped_at_100() -> None:
    everything = ", ".join(SUSPICIOUS_WORDS)
    score, signals = fraud_score(claim(description=everything, amount_cents=COVERAGE_LIMIT["auto"]))
    assert score == 100
    assert len(signals) == len(SUSPICIOUS_WORDS) + 2  # every signal named, though capped


def test_two_suspicious_words_put_a_claim_above_the_policy_s_fraud_bar() -> None:
    # The reference policy forbids paying above 80: two signals in the text suffice.
    assert fraud_score(claim(description="staged, cash only"))[0] == 95


@given(
    description=st.text(max_size=200),
    claim_type=st.sampled_from(CLAIM_TYPES),
    amount=st.integers(min_value=1, max_value=1_000_000_000),
)
def test_the_score_is_within_0_and_100_and_every_point_above_5_has_a_signal(
    description: str, claim_type: str, amount: int
) -> None:
    score, signals = fraud_score(
        claim(description=description, claim_type=claim_type, amount_cents=amount)
    )
    assert 5 <= score <= 100
    assert (score == 5) == (signals == [])


# ------------------------------------------------------------------ payout


@pytest.mark.parametrize("claim_type", CLAIM_TYPES)
def test_the_payout_is_the_claim_less_the_deductible(claim_type: str) -> None:
    deductible = DEDUCTIBLE[claim_type]
    assert payout(claim(claim_type=claim_type, amount_cents=deductible + 42_001)) == 42_001


def test_the_payout_never_exceeds_the_cover_less_the_deductible() -> None:
    limit, deductible = COVERAGE_LIMIT["travel"], DEDUCTIBLE["travel"]
    assert payout(claim(claim_type="travel", amount_cents=3 * limit)) == limit - deductible


def test_a_claim_within_the_deductible_pays_nothing() -> None:
    assert payout(claim(claim_type="home", amount_cents=DEDUCTIBLE["home"])) == 0
    assert payout(claim(claim_type="home", amount_cents=1)) == 0
    assert payout(claim(claim_type="health", amount_cents=1)) == 1  # no deductible


@given(claim_type=st.sampled_from(CLAIM_TYPES), amount=st.integers(1, 1_000_000_000))
def test_the_payout_is_never_negative_nor_more_than_claimed_or_covered(
    claim_type: str, amount: int
) -> None:
    paid = payout(claim(claim_type=claim_type, amount_cents=amount))
    assert 0 <= paid <= amount
    assert paid <= COVERAGE_LIMIT[claim_type] - DEDUCTIBLE[claim_type]


@given(claim_type=st.sampled_from(CLAIM_TYPES), amount=st.integers(1, 100_000_000))
def test_claiming_more_never_pays_less(claim_type: str, amount: int) -> None:
    assert payout(claim(claim_type=claim_type, amount_cents=amount + 1)) >= payout(
        claim(claim_type=claim_type, amount_cents=amount)
    )


# ------------------------------------------------------------------ paying


def test_the_obligation_is_one_payout_per_claim() -> None:
    assert obligation_key("case-1", "issue_payment") == "case-1:issue_payment"
    # Not the request: a second request in the same case discharges the same obligation.
    assert obligation_key("case-1", "issue_payment") != obligation_key("case-2", "issue_payment")


def test_an_approved_payment_with_its_three_parameters_can_be_paid() -> None:
    parameters = {"amount": 42_001, "currency": "EUR", "payee_account": "DE89-0001"}
    assert payment_instruction(parameters) == PaymentInstruction(
        amount=42_001, currency="EUR", payee_account="DE89-0001"
    )


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"amount": 0}, "Expected `int` >= 1"),
        ({"amount": -5}, "Expected `int` >= 1"),
        ({"amount": "42001"}, "Expected `int`, got `str`"),  # strict: no coercion
        ({"amount": 42_001.0}, "Expected `int`, got `float`"),
        ({"currency": "EURO"}, "length <= 3"),
        ({"currency": "E"}, "length >= 3"),
        ({"payee_account": "DE8"}, "length >= 4"),
        ({"payee_account": "D" * 65}, "length <= 64"),
        ({"memo": "and a bit more"}, "unknown field `memo`"),
    ],
)
def test_parameters_that_cannot_be_paid_are_refused_with_the_reason(
    change: dict[str, Any], why: str
) -> None:
    parameters = {"amount": 42_001, "currency": "EUR", "payee_account": "DE89-0001", **change}
    refused = payment_instruction(parameters)
    assert isinstance(refused, str)
    assert refused.startswith("the approved parameters cannot be paid: ")
    assert why in refused


@pytest.mark.parametrize("missing", ["amount", "currency", "payee_account"])
def test_a_missing_parameter_is_refused(missing: str) -> None:
    parameters = {"amount": 42_001, "currency": "EUR", "payee_account": "DE89-0001"}
    del parameters[missing]
    refused = payment_instruction(parameters)
    assert isinstance(refused, str)
    assert f"missing required field `{missing}`" in refused
