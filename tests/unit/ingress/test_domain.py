"""The ingress contract: what opens a case, and what is refused with which reasons."""

from __future__ import annotations

import json

from contracts import CaseOpened
from services.ingress.domain import Refusal, open_case

CLAIM = {
    "kind": "insurance_claim",
    "external_ref": "CLM-7",
    "data": {
        "policy_number": "P-12345",
        "claimant": "A. Jansen",
        "claim_type": "auto",
        "amount_cents": 42_001,
        "incident_date": "2026-10-01",
        "payee_account": "DE89-12345678",
    },
}


def test_a_valid_claim_opens_a_case_named_by_source_and_reference() -> None:
    opened = open_case("crm", json.dumps(CLAIM).encode(), "ingress")
    assert isinstance(opened, CaseOpened)
    assert opened.case_id == "crm-CLM-7"
    assert opened.actor == "ingress"
    assert opened.payload.data["currency"] == "EUR"  # defaults are filled in


def test_bad_input_is_refused_with_the_reasons() -> None:
    cases = {
        b"{not json": "request:",
        json.dumps({**CLAIM, "kind": "parking"}).encode(): "kind 'parking' is not handled",
        json.dumps({**CLAIM, "extra": 1}).encode(): "unknown field",
        json.dumps({**CLAIM, "data": {**CLAIM["data"], "amount_cents": -1}}).encode(): (
            "amount_cents"
        ),
        json.dumps({**CLAIM, "external_ref": "a b"}).encode(): "external_ref",
    }
    for body, reason in cases.items():
        refused = open_case("crm", body, "ingress")
        assert isinstance(refused, Refusal), body
        assert reason in refused.errors[0], (body, refused.errors)


def test_a_source_cannot_claim_another_sources_references() -> None:
    # "acme" + "eu-1" and "acme-eu" + "1" would both be "acme-eu-1": sources hold no "-".
    refused = open_case("acme-eu", json.dumps({**CLAIM, "external_ref": "1"}).encode(), "x")
    assert isinstance(refused, Refusal)
    assert "source 'acme-eu'" in refused.errors[0]
