"""The `mesh` command line as an operator runs it beside a stack: told only the mesh's
data dir (it finds the servers from mesh.json), none of the test's MESH_* settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.stack.stack import Stack

REPO = Path(__file__).resolve().parents[2]


def mesh_cli(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["MESH_DATA_DIR"] = str(stack.layout.data_dir)
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
