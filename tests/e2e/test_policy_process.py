"""`python -m services.policy` as its own process: SIGHUP re-reads the bundle; a valid
change is activated (an event in the log), an invalid one is refused and logged."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from contracts import PolicyBundleActivated
from mesh import Identity, MeshSettings
from mesh._broker.reading import read_subject
from mesh._broker.topology import Topology
from mesh.testing import eventually
from services.registry.app import RegistryService
from services.registry.settings import RegistrySettings

REPO = Path(__file__).resolve().parents[2]


async def test_sighup_activates_a_valid_bundle_and_refuses_a_broken_one(
    nats_url: str, nc: Client, topology: Topology, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "deploy" / "policies", bundle)
    log = tmp_path / "policy.log"
    env = {
        **os.environ,
        "MESH_NATS_URL": nats_url,
        "MESH_SUBJECT_ROOT": topology.root,
        "MESH_DATA_DIR": str(tmp_path / "data"),
        "MESH_POLICY_BUNDLE_DIR": str(bundle),
    }
    # The policy service needs the registry (requesters' cards, signers' keys).
    registry = RegistryService(
        nc,
        Identity.generate(),
        MeshSettings(subject_root=topology.root),
        RegistrySettings(),
        topology,
    )
    await registry.start()
    with log.open("wb") as sink:
        process = subprocess.Popen(  # noqa: ASYNC220  (spawned once; it is the subject)
            [sys.executable, "-m", "services.policy"],
            cwd=REPO,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:

        async def activations() -> list[PolicyBundleActivated]:
            stored = await read_subject(
                nc.jetstream(), topology.ops_stream, topology.subjects.history("ops", "policy")
            )
            return [s.event for s in stored if isinstance(s.event, PolicyBundleActivated)]

        [first] = await eventually(activations, timeout=20, what="the first activation")
        cedar = bundle / "payments.cedar"
        cedar.write_text(cedar.read_text().replace("100000", "200000"))
        process.send_signal(signal.SIGHUP)
        second = await eventually(
            lambda: _at_least(activations, 2), timeout=20, what="the reloaded bundle"
        )
        assert second[1].payload.previous_hash == first.payload.bundle_hash

        (bundle / "broken.cedar").write_text('permit(principal, action == Action::"x", resource);')
        process.send_signal(signal.SIGHUP)
        await eventually(
            lambda: "bundle refused, previous stays in force" in log.read_text(),
            timeout=20,
            what="the refusal logged",
        )
        assert len(await activations()) == 2
    finally:
        process.terminate()
        process.wait(20)
        await registry.stop()


async def _at_least(read, count: int):  # type: ignore[no-untyped-def]
    found = await read()
    return found if len(found) >= count else None
