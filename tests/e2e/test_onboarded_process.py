"""`mesh run` with MESH_ONBOARD=1: the agent process registers its card with the
operator's enrolment grant, runs with the credentials the registry grants, and stops
when the operator revokes it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from contracts import CaseStepCompleted
from mesh._broker.reading import read_case
from mesh._trust.enrolment import write_grant
from mesh._trust.onboarding import connect_as
from mesh.testing import eventually
from tests.integration.agents import onboarded
from tests.integration.registry_fixtures import SecuredMesh, secured_mesh
from tests.integration.test_registry import open_case

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    async with secured_mesh(tmp_path) as secured:
        yield secured


async def test_an_onboarded_agent_process_works_until_revoked(
    mesh: SecuredMesh, tmp_path: Path
) -> None:
    log = tmp_path / "agent.log"
    grant = tmp_path / "onboarded.grant.json"
    write_grant(mesh.grant(onboarded.card), grant)  # the operator's one-time grant
    env = {
        **os.environ,
        "MESH_NATS_URL": mesh.url,
        "MESH_SUBJECT_ROOT": mesh.topology.root,
        "MESH_DATA_DIR": str(tmp_path / "agent"),
        "MESH_ONBOARD": "1",
        "MESH_CHECK_SIGNERS": "1",
        "MESH_FETCH_WAIT": "0.2",
        "MESH_HEARTBEAT_INTERVAL": "0.5",
        "MESH_ENROLMENT_GRANT_FILE": str(grant),
    }
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: ASYNC220  (spawned once; it is the subject)
            [sys.executable, "-m", "mesh", "run", "tests.integration.agents:onboarded"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        assert mesh.harness_nc is not None
        client = mesh.client(mesh.harness_nc)

        async def active() -> bool:
            try:
                return (await client.get("onboarded")).status == "active"
            except Exception:
                return False

        await eventually(active, timeout=20, what="the agent registered and active")
        await open_case(mesh, "claim-7")

        async def stepped() -> bool:
            assert mesh.harness_nc is not None
            history = await read_case(mesh.harness_nc.jetstream(), mesh.topology, "claim-7")
            return any(isinstance(s.event, CaseStepCompleted) for s in history)

        await eventually(stepped, timeout=20, what="the process handling a case")

        operator_nc = await connect_as(mesh.url, "operator", mesh.operator)
        mesh.connections.append(operator_nc)
        await mesh.client(operator_nc).change_status(
            "revoke", "onboarded", "decommissioned", mesh.operator
        )
        code = await eventually(lambda: process.poll(), timeout=20, what="the process to exit")
        assert code == 2
        assert "the broker refused our credentials" in log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
