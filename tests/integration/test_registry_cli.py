"""`mesh registry …` as an operator against a broker that enforces the registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesh.cli import app
from mesh.testing import eventually
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh
from tests.integration.test_registry import claims_agent

runner = CliRunner()


@pytest.fixture
async def mesh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SecuredMesh]:
    async with secured_mesh(tmp_path) as secured:
        seed = tmp_path / "operator.nk"
        secured.operator.save(seed)
        monkeypatch.setenv("MESH_NATS_URL", secured.url)
        monkeypatch.setenv("MESH_SUBJECT_ROOT", secured.topology.root)
        monkeypatch.setenv("MESH_NKEY_AUTH", "1")
        monkeypatch.setenv("MESH_OPERATOR_SEED_FILE", str(seed))
        yield secured


async def cli(*args: str) -> tuple[int, str]:
    """Exit code and stdout (logs go to stderr); on failure, everything."""
    # typer's runner calls asyncio.run, so it runs off the test's event loop.
    result = await asyncio.to_thread(runner.invoke, app, list(args))
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


async def test_an_operator_lists_inspects_and_suspends_agents(mesh: SecuredMesh) -> None:
    _, agent_nc = await mesh.run_agent(claims_agent())
    code, output = await cli("registry", "list", "--json")
    assert code == 0, output
    [row] = json.loads(output)
    assert row["card"]["agent_id"] == "intake"
    assert row["status"] == "active"

    code, output = await cli("registry", "list", "--action-type", "request_documents")
    assert code == 0, output
    assert "intake" in output
    code, output = await cli("registry", "list", "--event-type", "case_closed", "--json")
    assert json.loads(output) == []

    code, output = await cli("registry", "show", "intake")
    assert code == 0, output
    assert "owner:    claims-team" in output
    assert "may request request_documents" in output

    code, output = await cli("registry", "suspend", "intake", "--reason", "incident 42")
    assert code == 0, output
    assert "intake: suspended (incident 42)" in output
    await eventually(lambda: not agent_nc.is_connected, what="the agent cut off")

    code, output = await cli("registry", "revoke", "nobody", "--reason", "x")
    assert code == 2
    assert "no agent 'nobody' is registered" in output


async def test_without_the_operator_key_status_changes_are_refused(
    mesh: SecuredMesh, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_OPERATOR_SEED_FILE", str(tmp_path / "missing.nk"))
    code, output = await cli("registry", "revoke", "intake", "--reason", "x")
    assert code == 2
    assert "no operator seed" in output
