"""Running the mesh's processes like a process manager: start each with its environment
and log file, bring back whatever exits on its own (after a back-off that grows with
repeated crashes), give up loudly on a process that keeps crashing, and stop them all
in reverse order (SIGTERM, then SIGKILL after a grace period).

Every child dies with the supervisor: it is started with a parent-death signal, so a
supervisor killed with SIGKILL leaves nothing behind. The supervisor's view of its
children is written to a status file after every change, for `mesh status`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import msgspec

log = logging.getLogger(__name__)

State = Literal["running", "backoff", "stopped", "failed"]

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessSpec:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RestartPolicy:
    """Back-off doubles from `first_delay` up to `max_delay` with each crash inside
    `window` seconds; more than `max_crashes` crashes inside the window and the
    supervisor stops trying (a process that cannot start is a fault to show, not to
    hide behind an endless loop)."""

    first_delay: float = 0.2
    max_delay: float = 10.0
    window: float = 60.0
    max_crashes: int = 5


class ChildStatus(msgspec.Struct, frozen=True, kw_only=True):
    """One process as `mesh status` shows it."""

    name: str
    state: State
    pid: int | None
    restarts: int
    last_exit: int | None  # exit code (negative: the signal that ended it)
    since: float  # wall-clock time of the last change of state
    reason: str = ""


class SupervisorStatus(msgspec.Struct, frozen=True, kw_only=True):
    supervisor_pid: int
    written_at: float
    processes: list[ChildStatus]


@dataclass
class _Child:
    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    state: State = "stopped"
    restarts: int = 0
    last_exit: int | None = None
    since: float = field(default_factory=time.time)
    reason: str = ""
    restart_at: float = 0.0
    crashes: deque[float] = field(default_factory=deque)
    held: bool = False  # stopped on purpose: not brought back until restart()

    def exit_code(self) -> int | None:
        return self.process.poll() if self.process is not None else None


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """In the child between fork and exec: ask the kernel for SIGTERM when the parent
    dies, so that no process of the mesh outlives a supervisor killed with SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before the request took effect
        os._exit(1)


class Supervisor:
    """Call `tick()` often (the stack does, every 100 ms): it notices exits and starts
    what is due. Popen is only ever called from the thread that calls `start`/`tick`
    (the parent-death signal is tied to the thread that forked)."""

    def __init__(
        self,
        logs: Path,
        cwd: Path,
        *,
        policy: RestartPolicy | None = None,
        status_file: Path | None = None,
    ) -> None:
        self.logs = logs
        self.cwd = cwd
        self.policy = policy or RestartPolicy()
        self.status_file = status_file
        self.children: dict[str, _Child] = {}

    # -- starting and stopping ------------------------------------------------------

    def start(self, spec: ProcessSpec) -> None:
        child = self.children.setdefault(spec.name, _Child(spec))
        child.spec = spec
        child.held = False
        self._launch(child)
        self._write_status()

    def _launch(self, child: _Child) -> None:
        env = {**os.environ, **child.spec.env}
        with (self.logs / f"{child.spec.name}.log").open("ab") as sink:
            # A session of its own: Ctrl-C in the terminal reaches the supervisor, which
            # stops everyone in order, rather than every process at once.
            child.process = subprocess.Popen(
                child.spec.argv,
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self._set(child, "running", "")
        log.info("started %s (pid %d)", child.spec.name, child.process.pid)

    def restart(self, name: str) -> None:
        """Start a process now: one held down on purpose, waiting out its back-off, or
        given up on. A running process is left alone."""
        child = self.children[name]
        if child.state == "running" and child.process and child.process.poll() is None:
            return
        child.held = False
        child.crashes.clear()
        if child.state != "running":
            child.restarts += 1
        self._launch(child)
        self._write_status()

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        """A crash drill: signal the process and wait for it to end; the supervisor
        brings it back as it would after any crash."""
        process = self.children[name].process
        if process is not None and process.poll() is None:
            process.send_signal(signum)
            process.wait(timeout=10)

    def stop(self, name: str, grace: float = 10.0) -> None:
        """Stop a process on purpose and keep it down until `restart(name)`."""
        child = self.children[name]
        child.held = True
        self._terminate([child], grace)
        self._set(child, "stopped", "stopped on purpose")
        self._write_status()

    def stop_all(self, grace: float = 10.0) -> dict[str, int]:
        children = list(reversed(self.children.values()))
        for child in children:
            child.held = True
        codes = self._terminate(children, grace)
        for child in children:
            self._set(child, "stopped", "the mesh stopped")
        self._write_status()
        return codes

    @staticmethod
    def _terminate(children: list[_Child], grace: float) -> dict[str, int]:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for child in children:
            if child.process is None:
                continue
            try:
                codes[child.spec.name] = child.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0fs; killing it", child.spec.name, grace)
                child.process.kill()
                codes[child.spec.name] = child.process.wait()
            child.last_exit = codes[child.spec.name]
        return codes

    # -- watching -------------------------------------------------------------------

    def tick(self) -> list[str]:
        """Notice exits and start what is due; returns what happened, one line each
        (for the terminal running `mesh up`)."""
        now = time.monotonic()
        events: list[str] = []
        for child in self.children.values():
            if child.held or child.state in ("stopped", "failed"):
                continue
            if child.state == "running":
                assert child.process is not None
                code = child.process.poll()
                if code is not None:
                    events.append(self._crashed(child, code, now))
            elif child.state == "backoff" and now >= child.restart_at:
                child.restarts += 1
                try:
                    self._launch(child)
                except OSError as exc:
                    events.append(self._crashed(child, -1, now, f"cannot start: {exc}"))
                else:
                    events.append(f"{child.spec.name} restarted (pid {self.pid(child.spec.name)})")
        if events:
            self._write_status()
        return events

    def _crashed(self, child: _Child, code: int, now: float, why: str = "") -> str:
        name = child.spec.name
        child.last_exit = code
        reason = why or (
            f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        )
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - self.policy.window:
            child.crashes.popleft()
        if len(child.crashes) > self.policy.max_crashes:
            self._set(
                child,
                "failed",
                f"{reason}; gave up after {len(child.crashes)} crashes in "
                f"{self.policy.window:.0f}s",
            )
            log.error("%s: %s\n%s", name, child.reason, self.log_tail(name))
            return f"{name} FAILED: {child.reason} (log: {self.logs / (name + '.log')})"
        delay = min(self.policy.first_delay * 2 ** (len(child.crashes) - 1), self.policy.max_delay)
        child.restart_at = now + delay
        self._set(child, "backoff", f"{reason}; restarting in {delay:.1f}s")
        log.warning("%s %s; restarting in %.1fs", name, reason, delay)
        return f"{name} {child.reason}"

    def _set(self, child: _Child, state: State, reason: str) -> None:
        child.state, child.reason, child.since = state, reason, time.time()

    # -- reporting ------------------------------------------------------------------

    def failed(self) -> dict[str, str]:
        """Processes the supervisor gave up on, with why."""
        return {n: c.reason for n, c in self.children.items() if c.state == "failed"}

    def pid(self, name: str) -> int | None:
        process = self.children[name].process
        return process.pid if process is not None and process.poll() is None else None

    def status(self) -> SupervisorStatus:
        return SupervisorStatus(
            supervisor_pid=os.getpid(),
            written_at=time.time(),
            processes=[
                ChildStatus(
                    name=name,
                    state=child.state,
                    pid=child.process.pid
                    if child.process is not None and child.state == "running"
                    else None,
                    restarts=child.restarts,
                    last_exit=child.last_exit,
                    since=child.since,
                    reason=child.reason,
                )
                for name, child in self.children.items()
            ],
        )

    def _write_status(self) -> None:
        if self.status_file is None:
            return
        partial = self.status_file.with_suffix(".tmp")
        partial.write_bytes(msgspec.json.encode(self.status()))
        partial.replace(self.status_file)  # readers never see half a file

    def log_tail(self, name: str, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            text = (self.logs / f"{name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""


def read_status(path: Path) -> SupervisorStatus:
    return msgspec.json.decode(path.read_bytes(), type=SupervisorStatus)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
