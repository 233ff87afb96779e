"""The ingress contract: what opens a case, and what is refused with which reasons."""

from __future__ import annotations

import json
from typing import Any

import pytest

from contracts import CaseOpened
from services.ingress.domain import Limits, Refusal, open_case

CLAIM: dict[str, Any] = {
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


def with_data(**changes: Any) -> bytes:
    return json.dumps({**CLAIM, "data": {**CLAIM["data"], **changes}}).encode()


def refused(body: bytes, source: str = "crm", **options: Any) -> Refusal:
    outcome = open_case(source, body, "ingress", **options)
    assert isinstance(outcome, Refusal), body[:200]
    assert outcome.problems
    assert len(outcome.errors) == len(outcome.problems)
    return outcome


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
        with_data(amount_cents=-1): "amount_cents",
        json.dumps({**CLAIM, "external_ref": "a b"}).encode(): "external_ref",
    }
    for body, reason in cases.items():
        assert reason in refused(body).errors[0], body


@pytest.mark.parametrize(
    ("body", "path", "code"),
    [
        (b"{not json", "$", "not_json"),
        (b"\xff\xfe{}", "$", "not_json"),
        (b'"\\ud800"', "$", "not_json"),  # a lone surrogate is no text (I-JSON)
        (b"[1, 2]", "$", "type"),
        (b'{"kind": "a", "kind": "b"}', "$", "duplicate_key"),
        (json.dumps({**CLAIM, "kind": "parking"}).encode(), "$.kind", "unknown_kind"),
        (json.dumps({**CLAIM, "extra": 1}).encode(), "$.extra", "unknown_field"),
        (json.dumps({**CLAIM, "external_ref": "CLM-7\n"}).encode(), "$.external_ref", "pattern"),
        (json.dumps({**CLAIM, "data": []}).encode(), "$.data", "type"),
        (with_data(amount_cents="64250"), "$.data.amount_cents", "type"),
        (with_data(amount_cents=True), "$.data.amount_cents", "type"),
        (with_data(amount_cents=42_001.5), "$.data.amount_cents", "type"),
        (with_data(amount_cents=0), "$.data.amount_cents", "range"),
        (with_data(amount_cents=10**30), "$.data.amount_cents", "range"),
        (with_data(policy_number="P-12345\n"), "$.data.policy_number", "pattern"),
        (with_data(claimant=""), "$.data.claimant", "length"),
        (with_data(claim_type="boat"), "$.data.claim_type", "enum"),
        (with_data(incident_date="2026-02-30"), "$.data.incident_date", "format"),
        (with_data(**{"odd 'name'": 1}), "$.data['odd \\'name\\'']", "unknown_field"),
    ],
)
def test_each_problem_has_a_path_and_a_code(body: bytes, path: str, code: str) -> None:
    problems = refused(body).problems
    assert (problems[0].path, problems[0].code) == (path, code), problems


def test_every_problem_is_named_not_just_the_first() -> None:
    body = json.dumps({**CLAIM, "data": {"amount_cents": "1", "colour": "red"}}).encode()
    found = {(p.path, p.code) for p in refused(body).problems}
    assert ("$.data.amount_cents", "type") in found
    assert ("$.data.colour", "unknown_field") in found
    assert ("$.data.policy_number", "required") in found
    assert len(found) == 7  # 5 required members missing, a type, an unknown member


def test_an_integer_may_be_written_as_json_schema_reads_it() -> None:
    # 42001.0 is the integer 42001 in JSON Schema's data model.
    opened = open_case("crm", with_data(amount_cents=42_001.0), "ingress")
    assert isinstance(opened, CaseOpened)
    assert opened.payload.data["amount_cents"] == 42_001
    assert isinstance(opened.payload.data["amount_cents"], int)


def test_the_body_is_bounded_in_size_and_depth_before_it_is_parsed() -> None:
    limits = Limits(max_body_bytes=1024, max_depth=32)
    too_large = refused(b" " * 1025, limits=limits).problems[0]
    assert too_large.code == "too_large"
    # Only the start of a large body is held; the size says how large it was.
    assert refused(b"{", limits=limits, size=10_000_000).problems[0].code == "too_large"
    deep = b"[" * 5_000 + b"]" * 5_000
    assert refused(deep).problems[0].code == "too_deep"
    in_a_string = json.dumps({**CLAIM, "external_ref": "[" * 100}).encode()
    assert refused(in_a_string).problems[0].code == "pattern"  # brackets in strings: no depth
    padded = json.dumps(CLAIM).encode().ljust(1024)
    assert isinstance(open_case("crm", padded, "ingress", limits=limits), CaseOpened)


def test_a_source_cannot_claim_another_sources_references() -> None:
    # "acme" + "eu-1" and "acme-eu" + "1" would both be "acme-eu-1": sources hold no "-".
    refusal = refused(json.dumps({**CLAIM, "external_ref": "1"}).encode(), source="acme-eu")
    assert "source 'acme-eu'" in refusal.errors[0]
    assert refusal.problems[0].code == "invalid_source"
    # A subject's tail "evil.crm" is not the source "crm".
    assert refused(json.dumps(CLAIM).encode(), source="evil.crm").problems[0].code == (
        "invalid_source"
    )
