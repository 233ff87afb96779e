"""`mesh up` as a process manager: every process it runs, nats-server included, is
brought back after a SIGKILL with nobody's help, the mesh still ends every case
afterwards, a process that keeps crashing is given up on loudly, and nothing it
started outlives it — not even when `mesh up` itself is killed with SIGKILL."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from services.stack.demo import Demo, make_cases
from services.stack.processes import SERVER
from services.stack.stack import running_stack
from services.stack.supervisor import RestartPolicy, Supervisor
from tests.e2e.test_mesh import check

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]


async def _back(supervisor: Supervisor, name: str, old_pid: int, timeout: float) -> int:
    """Until the supervisor runs `name` again, as a new process."""
    deadline = time.monotonic() + timeout
    while True:
        pid = supervisor.pid(name)
        if pid is not None and pid != old_pid:
            return pid
        assert time.monotonic() < deadline, f"{name} not back after {timeout}s"
        await asyncio.sleep(0.05)


async def test_every_process_killed_comes_back_and_the_mesh_still_works(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    async with running_stack(tmp_path / "mesh", on_event=events.append) as stack:
        supervisor = stack.supervisor
        names = list(supervisor.children)
        assert names[0] == SERVER
        for name in names:
            old = supervisor.pid(name)
            assert old is not None, name
            await asyncio.to_thread(supervisor.kill, name)
            await _back(supervisor, name, old, timeout=15)
        assert all(supervisor.children[n].restarts == 1 for n in names), events
        assert not supervisor.failed()
        assert any("nats-server killed by SIGKILL" in line for line in events), events
        status = json.loads(stack.layout.status_file.read_text())
        assert {p["name"]: p["state"] for p in status["processes"]} == dict.fromkeys(
            names, "running"
        )
        # Nobody restarted anything by hand: the mesh must still end every case, once
        # every process it restarted serves again (a pid is not yet a listening port).
        await stack.wait_services()
        await stack.wait_agents()
        result = await Demo(stack, make_cases(40, seed=5), Console(file=io.StringIO())).run(
            timeout=90
        )
    check(result)


async def test_a_process_that_keeps_crashing_is_given_up_on_loudly(tmp_path: Path) -> None:
    events: list[str] = []
    async with running_stack(tmp_path / "mesh", on_event=events.append) as stack:
        supervisor = stack.supervisor
        supervisor.policy = RestartPolicy(first_delay=0.05, max_crashes=2)
        for crash in range(3):
            old = supervisor.pid("reader")
            assert old is not None
            await asyncio.to_thread(supervisor.kill, "reader")
            if crash < 2:
                await _back(supervisor, "reader", old, timeout=10)
        deadline = time.monotonic() + 5
        while "reader" not in supervisor.failed():
            assert time.monotonic() < deadline, events
            await asyncio.sleep(0.05)
        assert any("reader FAILED" in line and "gave up" in line for line in events), events
        # The rest keeps running; the failure shows until an operator acts.
        assert all(supervisor.pid(n) for n in supervisor.children if n != "reader")
        with pytest.raises(Exception, match="reader keeps failing"):
            stack.check_processes()
        supervisor.restart("reader")
        assert supervisor.pid("reader") is not None
        assert not supervisor.failed()


def _mesh(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone in all but name (its parent, killed, cannot reap it yet).
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


def test_mesh_up_is_found_by_the_cli_and_leaves_nothing_behind_when_killed(
    tmp_path: Path,
) -> None:
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    # A clean environment: no MESH_* variables, the user's state in a temp dir.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    output = tmp_path / "mesh-up.out"
    with output.open("wb") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "mesh", "up", "--data-dir", "up-data"],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        running = tmp_path / "up-data" / "mesh.json"
        deadline = time.monotonic() + 120
        while not running.exists():
            assert up.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "mesh up did not come up"
            time.sleep(0.2)
        # From another directory, told nothing: the CLI finds the running mesh.
        status = _mesh("status", "--json", cwd=elsewhere, env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        processes = json.loads(status.stdout)["processes"]
        assert {p["state"] for p in processes} == {"running"}
        pids = [p["pid"] for p in processes]
        assert len(pids) == 11
        assert all(pids)
        listed = _mesh("registry", "list", "--json", cwd=elsewhere, env=env)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "claims-payment" in listed.stdout
        table = _mesh("status", cwd=elsewhere, env=env)
        assert "nats-server" in table.stdout
        assert "running" in table.stdout

        up.send_signal(signal.SIGKILL)
        up.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in pids if _alive(pid)], "orphans outlived mesh up"
        # The pointer a killed `mesh up` left names a dead process: not a mesh.
        gone = _mesh("status", cwd=elsewhere, env=env)
        assert gone.returncode == 1
        assert "no running mesh found" in gone.stdout + gone.stderr
        assert "MESH_NATS_URL" in gone.stdout + gone.stderr
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
