"""Finding a running `mesh up` without being told where it is.

`mesh up` writes where it listens (`mesh.json` in its data directory) and points the
user's state directory at it; a CLI command that was given no MESH_NATS_URL looks
there, and at `./.mesh/up` (where `mesh up` keeps its files by default), and uses a
mesh whose supervisor is still alive. A pointer left behind by a killed `mesh up`
names a dead process and is ignored.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import msgspec

RUNNING_FILE = "mesh.json"
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
        try:
            os.kill(self.supervisor_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process has the pid now
            return False
        return True


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
