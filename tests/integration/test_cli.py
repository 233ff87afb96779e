"""The `mesh` command line against a real server."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from nats.aio.client import Client
from typer.testing import CliRunner

from contracts import CaseOpened, CaseStepCompleted
from mesh import HandlerContext, PermanentError
from mesh._broker.provisioning import ensure_stream
from mesh._broker.topology import Topology
from mesh.cli import app
from mesh.testing import MeshTestKit, eventually
from tests.integration.agents import complete_step, stepper
from tests.integration.test_agent_runtime import FAST

runner = CliRunner()


@pytest.fixture
def cli_env(nats_url: str, topology: Topology, monkeypatch: pytest.MonkeyPatch) -> Topology:
    monkeypatch.setenv("MESH_NATS_URL", nats_url)
    monkeypatch.setenv("MESH_SUBJECT_ROOT", topology.root)
    return topology


async def test_streams_provision_creates_then_reports_drift(cli_env: Topology, nc: Client) -> None:
    # typer's runner calls asyncio.run, so it runs off this test's event loop.
    first = await asyncio.to_thread(runner.invoke, app, ["streams", "provision"])
    assert first.exit_code == 0, first.output
    assert f"stream {cli_env.cases_stream}: created" in first.output

    js = nc.jetstream()
    live = (await js.stream_info(cli_env.ops_stream)).config
    await js.update_stream(dataclasses.replace(live, max_msgs=10))
    drifted = await asyncio.to_thread(runner.invoke, app, ["streams", "provision"])
    assert drifted.exit_code == 1
    assert f"stream {cli_env.ops_stream}: drifted" in drifted.output
    assert "max_msgs: declared -1, server has 10" in drifted.output


async def test_dlq_list_and_replay(cli_env: Topology, nats_url: str) -> None:
    broken = True

    async def sometimes(event: CaseOpened, ctx: HandlerContext) -> None:
        if broken:
            raise PermanentError("no policy number")
        await complete_step(event, ctx)

    async with MeshTestKit(
        stepper(sometimes), nats_url=nats_url, root=cli_env.root, settings=FAST
    ) as kit:
        opened = await kit.open_case("claim")
        await eventually(kit.dead_letters, what="a dead letter")
        listed = await asyncio.to_thread(runner.invoke, app, ["dlq", "list", "--json"])
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.stdout)
        assert row["kind"] == "permanent"
        assert "no policy number" in row["reason"]

        broken = False
        replayed = await asyncio.to_thread(runner.invoke, app, ["dlq", "replay", "1"])
        assert replayed.exit_code == 0, replayed.output
        await kit.wait_for(CaseStepCompleted, opened.case_id)

        missing = await asyncio.to_thread(runner.invoke, app, ["dlq", "replay", "99"])
        assert missing.exit_code == 2
        assert "no dead letter at sequence 99" in missing.output


def test_a_bad_agent_target_is_a_clear_error(cli_env: Topology) -> None:
    result = runner.invoke(app, ["run", "tests.integration.no_such_module"])
    assert result.exit_code == 2
    assert "cannot import agent module" in result.output
    result = runner.invoke(app, ["run", "tests.integration.agents:card"])
    assert result.exit_code == 2
    assert "has no Agent named 'card'" in result.output


def test_keys_new_prints_a_user_nkey() -> None:
    result = runner.invoke(app, ["keys", "new"])
    keys = json.loads(result.output)
    assert keys["public_key"].startswith("U")
    assert keys["seed"].startswith("SU")


def test_contracts_check_passes_on_the_committed_schemas() -> None:
    result = runner.invoke(app, ["contracts", "check"])
    assert result.exit_code == 0, result.output


async def test_the_kit_starts_its_own_server_when_given_no_url() -> None:
    async with MeshTestKit(stepper()) as kit:
        assert kit.url != ""
        opened = await kit.open_case("claim")
        await kit.wait_for(CaseStepCompleted, opened.case_id)


async def test_provisioning_is_safe_to_run_concurrently(nc: Client, topology: Topology) -> None:
    config = topology.streams()[0]
    reports = await asyncio.gather(*(ensure_stream(nc.jetstream(), config) for _ in range(5)))
    assert sum(r.outcome.value == "created" for r in reports) >= 1
    assert all(r.outcome.value in ("created", "unchanged") for r in reports)
