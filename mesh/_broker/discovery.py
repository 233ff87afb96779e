"""Finding a running `mesh up` without being told where it is.

`mesh up` writes where it listens (`mesh.json` in its data directory) and points the
user's state directory at it; a CLI command that was given no MESH_NATS_URL looks
there, and at `./.mesh/up` (where `mesh up` keeps its files by default), and uses a
mesh whose supervisor is still alive. A pointer left behind by a killed `mesh up`
names a mesh whose lock nobody holds and is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

import msgspec

from mesh.errors import AlreadyRunning

RUNNING_FILE = "mesh.json"
LOCK_FILE = "mesh.lock"  # held (flock) by the supervisor for as long as the mesh runs
DEFAULT_UP_DIR = Path(".mesh/up")
HINT = (
    "start one with `mesh up`, or set MESH_NATS_URL, MESH_DATA_DIR (the keys) and MESH_NKEY_AUTH=1"
)


class RunningMesh(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str
    subject_root: str
    data_dir: str  # absolute: the keys, logs and status of this mesh
    supervisor_pid: int
    ingress_http: str = ""

    @property
    def alive(self) -> bool:
        """Whether the supervisor that wrote this still runs: it holds the data dir's
        lock until it ends, however it ends (a pid alone could be anyone's by now)."""
        return lock_held(Path(self.data_dir))


def hold_lock(data_dir: Path) -> IO[str]:
    """Taken by the supervisor for the mesh's life (the kernel drops it when the
    process ends, even by SIGKILL). A second mesh on the same data dir is refused."""
    handle = (data_dir / LOCK_FILE).open("a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise AlreadyRunning(f"a mesh already runs from {data_dir}") from None
    return handle


def lock_held(data_dir: Path) -> bool:
    try:
        handle = (data_dir / LOCK_FILE).open("r")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def pointer_file() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "agent-mesh" / "current"


def write_running(mesh: RunningMesh) -> None:
    """Once the mesh is up: what runs from its data dir, and where it listens."""
    (Path(mesh.data_dir) / RUNNING_FILE).write_bytes(msgspec.json.encode(mesh))


def remove_running(mesh: RunningMesh) -> None:
    with contextlib.suppress(OSError):
        (Path(mesh.data_dir) / RUNNING_FILE).unlink()


def announce(mesh: RunningMesh) -> None:
    """`mesh up`: point the user's CLI at this mesh, from any directory."""
    pointer = pointer_file()
    with contextlib.suppress(OSError):  # a read-only home only costs the shortcut
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(mesh.data_dir)


def withdraw(mesh: RunningMesh) -> None:
    """`mesh up`, as it stops: the pointer goes, if it still names this mesh."""
    with contextlib.suppress(OSError):
        pointer = pointer_file()
        if pointer.read_text().strip() == mesh.data_dir:
            pointer.unlink()


def read_running(data_dir: Path) -> RunningMesh | None:
    """The mesh running from `data_dir`, if its supervisor is alive."""
    try:
        mesh = msgspec.json.decode((data_dir / RUNNING_FILE).read_bytes(), type=RunningMesh)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None
    return mesh if mesh.alive else None


def find_running(data_dir: Path | None = None) -> RunningMesh | None:
    """`data_dir`'s mesh if one is given; else the one under ./.mesh/up, else the one
    the user's pointer names."""
    if data_dir is not None:
        return read_running(data_dir.resolve())
    candidates = [DEFAULT_UP_DIR.resolve()]
    with contextlib.suppress(OSError):
        candidates.append(Path(pointer_file().read_text().strip()))
    for candidate in candidates:
        if (found := read_running(candidate)) is not None:
            return found
    return None
