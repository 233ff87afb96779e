"""`mesh demo` works from any directory: every path is resolved once, before any child
starts, so a child (which runs from the checkout) never reads another run's keys."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


def _demo(cwd: Path, data_dir: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    return subprocess.run(
        [sys.executable, "-m", "mesh", "demo", "--cases", "6", "--data-dir", data_dir],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_runs_from_another_directory_and_then_from_the_checkout(tmp_path: Path) -> None:
    elsewhere = _demo(tmp_path, ".mesh/demo")
    assert elsewhere.returncode == 0, elsewhere.stdout[-3000:] + elsewhere.stderr[-3000:]
    assert (tmp_path / ".mesh" / "demo" / "keys" / "operator.nk").exists()
    # The checkout's root after a run elsewhere: its own keys, not the other run's.
    relative = f".mesh/test-{uuid.uuid4().hex[:8]}"
    try:
        here = _demo(REPO, relative)
        assert here.returncode == 0, here.stdout[-3000:] + here.stderr[-3000:]
        assert (REPO / relative / "keys" / "operator.nk").read_bytes() != (
            tmp_path / ".mesh" / "demo" / "keys" / "operator.nk"
        ).read_bytes()
    finally:
        shutil.rmtree(REPO / relative, ignore_errors=True)
