"""`mesh case …`, `mesh audit …` and `mesh projections …` against a running event store,
as an operator on a registry-enforcing broker."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts import ActionCompleted, ApprovalRequired, CaseClosed
from mesh.cli import app
from tests.integration.claims_flow import (
    approve,
    claims_manager,
    open_claim,
    start_claims,
    wait_for,
)
from tests.integration.databases import Databases
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh

cli = CliRunner()


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SecuredMesh]:
    (tmp_path / "mesh").mkdir()
    async with secured_mesh(tmp_path / "mesh") as secured:
        seed = tmp_path / "operator.nk"
        secured.operator.save(seed)
        for name, value in {
            "MESH_NATS_URL": secured.url,
            "MESH_SUBJECT_ROOT": secured.topology.root,
            "MESH_NKEY_AUTH": "1",
            "MESH_OPERATOR_SEED_FILE": str(seed),
        }.items():
            monkeypatch.setenv(name, value)
        yield secured


async def mesh_cli(*args: str) -> tuple[int, str]:
    result = await asyncio.to_thread(cli.invoke, app, list(args))
    return result.exit_code, result.output


async def test_an_operator_and_an_auditor_work_from_the_command_line(
    mesh: SecuredMesh, databases: Databases, tmp_path: Path
) -> None:
    store = await mesh.start_eventstore(databases.new("sqlite"))
    await start_claims(mesh)
    manager = await claims_manager(mesh)
    await open_claim(mesh, "small", 20_000)
    await open_claim(mesh, "large", 250_000)
    await wait_for(mesh, "small", CaseClosed)
    await wait_for(mesh, "large", ApprovalRequired)
    code, _ = await mesh_cli("projections", "status")
    assert code == 0
    await asyncio.sleep(0.05)
    waiting_since = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.05)
    await approve(mesh, "large", manager)
    await wait_for(mesh, "large", ActionCompleted)
    await wait_for(mesh, "large", CaseClosed)
    await store.checkpoint_now()  # the views have caught up with the log (they lag it)

    code, output = await mesh_cli("case", "list", "--json")
    assert code == 0, output
    assert {c["case_id"]: c["status"] for c in json.loads(output)} == {
        "small": "closed",
        "large": "closed",
    }
    code, output = await mesh_cli("case", "list", "--status", "open")
    assert code == 0, output
    assert "small" not in output
    code, output = await mesh_cli("case", "show", "large")
    assert code == 0, output
    assert "outcome paid" in output
    code, output = await mesh_cli("case", "show", "large", "--json")
    assert code == 0, output
    [payment] = json.loads(output)["actions"]
    assert (payment["action_type"], payment["approver"]) == ("issue_payment", "maria")
    code, output = await mesh_cli("case", "show", "nope")
    assert code == 2
    assert "no case 'nope'" in output

    code, output = await mesh_cli("audit", "show", "large")
    assert code == 0, output
    assert "maria approved" in output
    assert "large-payouts-need-approval" in output
    assert "needs a claims_manager's approval" in output

    # As it stood while it waited for the manager, from the log alone.
    code, output = await mesh_cli("audit", "replay", "large", "--at", waiting_since, "--json")
    assert code == 0, output
    then = json.loads(output)
    assert then["case"]["pending_approvals"] == 1
    assert then["actions"][0]["status"] == "awaiting_approval"
    code, output = await mesh_cli("audit", "replay", "large", "--at", "2026-01-01T00:00:00")
    assert code == 2
    assert "no time zone" in output

    for scope in (["--case", "large"], ["--all"]):
        code, output = await mesh_cli("audit", "verify", *scope)
        assert code == 0, output
        assert "verified" in output
    code, output = await mesh_cli("audit", "verify")
    assert code == 2
    assert "exactly one of" in output

    bundle = tmp_path / "all.json"
    code, output = await mesh_cli("audit", "export", "--all", "--out", str(bundle))
    assert code == 0, output
    code, output = await mesh_cli("audit", "verify", "--bundle", str(bundle), "--json")
    assert code == 0, output
    report = json.loads(output)
    assert report["ok"]
    assert report["cases"] == 2
    code, output = await mesh_cli("audit", "verify", "--bundle", str(tmp_path / "nope.json"))
    assert code == 2
    assert "cannot read bundle" in output

    code, output = await mesh_cli(
        "projections", "activity", "--actor", "claims-adjudication", "--json"
    )
    assert code == 0, output
    assert {row["event_type"]: row["events"] for row in json.loads(output)} == {
        "action_requested": 2,
        "case_step_completed": 2,
    }

    rebuilt = databases.new("sqlite")
    code, output = await mesh_cli("projections", "rebuild", "--dsn", rebuilt)
    assert code == 0, output
    assert "rebuilt" in output
