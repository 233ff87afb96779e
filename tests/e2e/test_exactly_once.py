"""The demo's "each payment exactly once" can fail: with a gateway that really pays
twice (its idempotency guard broken on purpose, tests/e2e/double_capturing_gateway.py)
in the stack, the check reports every claim whose money moved twice — although the
case log alone looks perfect (one action_completed per request, every case final, the
audit verifies)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from rich.console import Console

from services.stack.demo import Demo, make_cases, print_summary
from services.stack.stack import running_stack

pytestmark = pytest.mark.e2e

DOUBLE_CAPTURING = [sys.executable, "-m", "tests.e2e.double_capturing_gateway"]


async def test_the_exactly_once_check_reports_a_gateway_that_pays_twice(tmp_path: Path) -> None:
    cases = [c for c in make_cases(40, seed=3) if c.kind != "gateway down"]
    async with running_stack(tmp_path / "mesh", argv={"gateway": DOUBLE_CAPTURING}) as stack:
        result = await Demo(stack, cases, Console(file=io.StringIO())).run(timeout=90)
    output = io.StringIO()
    print_summary(result, Console(file=output, width=200))
    summary = output.getvalue()

    # Everything else holds: the mesh did its part exactly once.
    assert not result.timed_out, summary
    assert result.all_final, summary
    assert result.report.ok, summary
    paid = {v.case_id for v in result.views.values() if v.outcome == "paid"}
    assert len(paid) >= 5, summary
    assert sorted(result.completions.values()) == [1] * len(paid), summary

    # The gateway did not, and the check says so, naming each claim paid twice.
    assert not result.paid_once, summary
    assert "each exactly once: NO" in summary
    twice = {p["idempotency_key"] for p in result.ledger if p["captures"] == 2}
    assert twice == {f"{case_id}:issue_payment" for case_id in paid}, summary
    problems = "\n".join(result.payment_problems)
    for key in twice:
        assert f"{key}: money moved 2 times" in problems
    assert "✗ crm-CLM-" in summary
