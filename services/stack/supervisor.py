"""Running the mesh's processes: start each with its environment and log file, watch
them, stop them in reverse order (SIGTERM, then SIGKILL after a grace period)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


class Supervisor:
    def __init__(self, logs: Path, cwd: Path) -> None:
        self.logs = logs
        self.cwd = cwd
        self.specs: dict[str, ProcessSpec] = {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._down: set[str] = set()  # killed on purpose, waiting for restart()

    def start(self, spec: ProcessSpec) -> None:
        self.specs[spec.name] = spec
        env = {**os.environ, **spec.env}
        with (self.logs / f"{spec.name}.log").open("ab") as sink:
            # A session of its own: Ctrl-C in the terminal reaches the supervisor, which
            # stops everyone in order, rather than every process at once.
            self.processes[spec.name] = subprocess.Popen(
                spec.argv,
                cwd=self.cwd,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        log.info("started %s (pid %d)", spec.name, self.processes[spec.name].pid)

    def restart(self, name: str) -> None:
        self._down.discard(name)
        self.start(self.specs[name])

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """Stop a process on purpose (a crash drill): it is not reported as exited
        until restart() brings it back."""
        self._down.add(name)
        process = self.processes[name]
        process.send_signal(signum)
        process.wait(timeout=10)

    def exited(self) -> dict[str, int]:
        """Processes that stopped on their own, with their exit codes."""
        return {
            name: code
            for name, p in self.processes.items()
            if name not in self._down and (code := p.poll()) is not None
        }

    def log_tail(self, name: str, lines: int = 20) -> str:
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self, grace: float = 10.0) -> dict[str, int]:
        codes: dict[str, int] = {}
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            try:
                codes[name] = process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", name, grace)
                process.kill()
                codes[name] = process.wait()
        return codes


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
