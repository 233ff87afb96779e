"""The policy engine, pure: bundles, decisions, decision tables, `mesh policy test`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts import ActionGrant, AgentCard
from mesh.cli import app
from services.policy.bundle import PolicyBundle, PolicyBundleInvalid
from services.policy.domain import ActionRequest, CaseClosure, decide, decide_for
from services.policy.tables import run_tables

REFERENCE = Path(__file__).resolve().parents[3] / "deploy" / "policies"
runner = CliRunner()


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(REFERENCE, target)
    return target


def adjudicator(**limits: int) -> AgentCard:
    return AgentCard(
        agent_id="adjudicator",
        name="Adjudication",
        version="1",
        owner="claims-team",
        purpose="decides payouts",
        actions=[ActionGrant(action_type="issue_payment", limits=dict(limits))],
    )


PAYEE = "DE89-0001"


def payment(
    amount: int, fraud_score: int = 0, *, accepted: bool | None = True, **options: Any
) -> ActionRequest:
    """A payout of a claim of 5,000,000 cents to its payee, screened `fraud_score`, that
    intake accepted (`accepted`; None: intake stated nothing)."""
    facts: dict[str, Any] = {
        "fraud_score": fraud_score,
        "amount_cents": 5_000_000,
        "currency": "EUR",
        "payee_account": PAYEE,
    }
    if accepted is not None:
        facts["claim_accepted"] = accepted
    return ActionRequest(
        request_id="r-1",
        case_id="c-1",
        action_type="issue_payment",
        parameters={"amount": amount, "currency": "EUR", "payee_account": PAYEE},
        case_facts=facts,
        **options,
    )


def test_the_reference_bundle_loads_and_its_hash_is_stable(bundle_dir: Path) -> None:
    first, again = PolicyBundle.load(REFERENCE), PolicyBundle.load(bundle_dir)
    assert first.hash == again.hash
    (bundle_dir / "payments.cedar").write_text(
        (bundle_dir / "payments.cedar").read_text().replace("100000", "100001")
    )
    assert PolicyBundle.load(bundle_dir).hash != first.hash


def test_a_decision_records_its_provenance() -> None:
    bundle = PolicyBundle.load(REFERENCE)
    decision = decide(bundle, adjudicator(), payment(250000))
    assert decision.outcome == "require_approval"
    assert decision.bundle_hash == bundle.hash
    [rule] = decision.determining
    assert rule.policy_id == "large-payouts-need-approval"
    assert "claims manager" in rule.rationale
    assert decision.approver_role == "claims_manager"
    assert decision.approval_sla is not None
    assert decision.approval_sla.total_seconds() == 4 * 3600
    assert decision.inputs["context"] == {
        "amount": 250000,
        "currency": "EUR",
        "payee_account": PAYEE,
    }
    assert decision.inputs["resource"]["fraud_score"] == 0


def test_forbid_wins_over_permit() -> None:
    decision = decide(PolicyBundle.load(REFERENCE), adjudicator(), payment(500, fraud_score=99))
    assert decision.outcome == "deny"
    assert [p.policy_id for p in decision.determining] == ["high-fraud-score"]


@pytest.mark.parametrize("accepted", [None, False])
def test_a_claim_intake_did_not_accept_is_not_paid(accepted: bool | None) -> None:
    """However clean its screening and small its payout: intake's `claim_accepted` is
    what lets a payment through, nothing else."""
    decision = decide(PolicyBundle.load(REFERENCE), adjudicator(), payment(500, accepted=accepted))
    assert decision.outcome == "deny"
    assert [p.policy_id for p in decision.determining] == ["pay-only-accepted-claims"]
    assert decision.reasons == ["forbidden by pay-only-accepted-claims"]
    assert "intake did not accept" in decision.determining[0].rationale
    accepted_claim = decide(PolicyBundle.load(REFERENCE), adjudicator(), payment(500))
    assert accepted_claim.outcome == "allow"
    assert accepted_claim.inputs["resource"]["claim_accepted"] is True


def test_the_reference_bundle_gathers_intake_s_acceptance_from_the_log() -> None:
    """The policy service asks the log for the facts the schema declares."""
    assert "claim_accepted" in PolicyBundle.load(REFERENCE).case_attributes


CLOSED = CaseClosure(sequence=7, actor="claims-intake", outcome="rejected")


def test_nothing_is_decided_in_a_closed_case() -> None:
    """A request stored after the case closed is denied before any policy runs, however
    good its facts (here those of a payout policy would allow)."""
    bundle = PolicyBundle.load(REFERENCE)
    assert decide(bundle, adjudicator(), payment(500)).outcome == "allow"
    decision = decide(bundle, adjudicator(), payment(500, closed=CLOSED))
    assert decision.outcome == "deny"
    assert decision.determining == []
    [reason] = decision.reasons
    assert "case c-1 was closed (rejected) by claims-intake at #7" in reason
    assert "no action is taken in a closed case" in reason
    assert decision.inputs["case_closed"] == {
        "sequence": 7,
        "actor": "claims-intake",
        "outcome": "rejected",
    }
    assert decision.inputs["resource"]["fraud_score"] == 0  # the facts are still recorded


def test_a_closed_case_refuses_every_action_and_every_requester() -> None:
    bundle = PolicyBundle.load(REFERENCE)
    documents = ActionRequest(
        request_id="r-2", case_id="c-1", action_type="request_documents", parameters={}
    )
    assert decide(bundle, adjudicator(), documents).outcome == "deny"  # not on its card
    clerk = AgentCard(
        agent_id="clerk",
        name="Clerk",
        version="1",
        owner="claims-team",
        purpose="asks for documents",
        actions=[ActionGrant(action_type="request_documents")],
    )
    assert decide(bundle, clerk, documents).outcome == "allow"
    closed = ActionRequest(
        request_id="r-2",
        case_id="c-1",
        action_type="request_documents",
        parameters={},
        closed=CLOSED,
    )
    assert decide(bundle, clerk, closed).outcome == "deny"
    assert decide_for(bundle, "clerk", clerk, closed).outcome == "deny"


def test_a_request_cedar_cannot_evaluate_is_denied_with_the_reason() -> None:
    request = ActionRequest(
        request_id="r", case_id="c", action_type="issue_payment", parameters={"amount": 5}
    )
    decision = decide(PolicyBundle.load(REFERENCE), adjudicator(), request)
    assert decision.outcome == "deny"
    assert "currency" in decision.reasons[0]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('permit(principal, action == Action::"teleport", resource);', "teleport"),
        ('@id("x")\n@outcome("maybe")\npermit(principal, action, resource);', "unknown @outcome"),
        (
            '@id("x")\n@outcome("require_approval")\nforbid(principal, action, resource);',
            "belongs on a permit",
        ),
        (
            '@id("x")\n@outcome("require_approval")\n@approval_sla("soon")\n'
            "permit(principal, action, resource);",
            "approval_sla",
        ),
        ('@id("small-payouts")\npermit(principal, action, resource);', "@id used twice"),
        ("permit(principal, action, resource) when { context.amount > };", "parse error"),
    ],
)
def test_an_invalid_bundle_is_refused_with_its_errors(
    bundle_dir: Path, text: str, error: str
) -> None:
    (bundle_dir / "broken.cedar").write_text(text)
    with pytest.raises(PolicyBundleInvalid, match=error):
        PolicyBundle.load(bundle_dir)


def test_decision_tables_pass_on_the_reference_policies() -> None:
    results = run_tables(REFERENCE)
    assert results
    assert [r.row.name for r in results if not r.passed] == []


def test_mesh_policy_test_names_the_row_that_fails(bundle_dir: Path) -> None:
    ok = runner.invoke(app, ["policy", "test", str(bundle_dir)])
    assert ok.exit_code == 0, ok.output
    table_path = bundle_dir / "tests" / "payments.json"
    table = json.loads(table_path.read_text())
    table["rows"][0]["expect"] = "deny"
    table_path.write_text(json.dumps(table))
    failed = runner.invoke(app, ["policy", "test", str(bundle_dir)])
    assert failed.exit_code == 1
    assert "FAIL payments.json: a small payout is allowed" in failed.output
    assert "expected deny, got allow" in failed.output
    assert "1 failed" in failed.output


def test_mesh_policy_test_reports_an_invalid_bundle(bundle_dir: Path) -> None:
    (bundle_dir / "broken.cedar").write_text('permit(principal, action == Action::"x", resource);')
    result = runner.invoke(app, ["policy", "test", str(bundle_dir)])
    assert result.exit_code == 2
    assert "invalid bundle" in result.output


def test_a_policy_that_fails_to_evaluate_denies(bundle_dir: Path) -> None:
    """An error in a forbid (here an overflow) must not fall through to an allow."""
    (bundle_dir / "overflow.cedar").write_text(
        '@id("overflowing-forbid")\n'
        'forbid(principal, action == Action::"issue_payment", resource)\n'
        "when { context.amount * 1000000000000000 > 0 };"
    )
    bundle = PolicyBundle.load(bundle_dir)
    decision = decide(bundle, adjudicator(), payment(50_000))
    assert decision.outcome == "deny"
    assert "policy evaluation failed" in decision.reasons[0]
