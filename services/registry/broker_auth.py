"""Writing the generated authorization config and making the servers load it: the
registry's adapter to the broker's configuration (what the config says is generated in
`mesh._broker.permissions`).

On a cluster every member includes the same file and each is reloaded in turn; each
reload is confirmed by the member's monitoring endpoint (its config load time moves).
A member that is down at that moment is skipped: it reads the file when it starts. A
member that is up but did not take the file, or no member at all taking it, is an
error — the old authorization would still be in force there.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from contracts.cards import AgentRecord
from mesh.service import (
    MeshError,
    ProvisioningError,
    StaticPrincipal,
    Topology,
    authorization_config,
    reload_server,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerToReload:
    """One nats-server that includes the authorization file: where it writes its pid,
    and its monitoring URL (http://host:8222), which confirms each reload (None: a
    reload is signalled, not confirmed)."""

    pid_file: Path
    monitor_url: str | None = None

    @property
    def name(self) -> str:
        return self.monitor_url or str(self.pid_file)


class _Down(Exception):
    """The server is not running at the moment (it reads the file when it starts)."""


class BrokerAuthorization:
    """Regenerates the servers' authorization from the registry and reloads every
    server when (and only when) the text changed."""

    def __init__(
        self,
        auth_file: Path,
        servers: Sequence[ServerToReload],
        principals: list[StaticPrincipal],
        topology: Topology,
        *,
        confirm_timeout: float = 5.0,
    ) -> None:
        self.auth_file = auth_file
        self.servers = list(servers)
        self.principals = principals
        self.topology = topology
        self.confirm_timeout = confirm_timeout
        # False after a reload some running member did not confirm: the next apply
        # reloads again even though the file is unchanged, until every member has it.
        self._current = True

    def apply(self, records: Iterable[AgentRecord]) -> bool:
        # A removed principal keeps its entry (its past signatures) but not its user.
        active = [p for p in self.principals if p.active]
        text = authorization_config(records, active, self.topology)
        if self.auth_file.exists() and self.auth_file.read_text() == text and self._current:
            return False
        # Atomic replace: a server never reads a half-written file.
        fd, tmp = tempfile.mkstemp(dir=self.auth_file.parent, prefix=".auth-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, self.auth_file)
        if self.servers:
            self._reload_all()
        return True

    def _reload_all(self) -> None:
        reloaded: list[str] = []
        down: list[str] = []
        failed: list[ProvisioningError] = []
        self._current = False
        for server in self.servers:  # every member is signalled, whatever one answers
            try:
                self._reload(server)
            except _Down as exc:
                down.append(f"{server.name} ({exc})")
            except ProvisioningError as exc:
                failed.append(exc)
            else:
                reloaded.append(server.name)
        if failed:
            raise ProvisioningError(
                "nats-server authorization", "; ".join(exc.reason for exc in failed)
            )
        if not reloaded:
            raise ProvisioningError(
                "nats-server authorization",
                f"no server took {self.auth_file}: {'; '.join(down)}",
            )
        if down:
            log.warning(
                "authorization regenerated; reloaded %s, down (they read it as they start): %s",
                ", ".join(reloaded),
                "; ".join(down),
            )
        else:
            log.info("authorization regenerated and %d server(s) reloaded", len(reloaded))
        self._current = True

    def _reload(self, server: ServerToReload) -> None:
        """SIGHUP, then until the server's config load time moves. Read after the file
        was replaced, so whatever load follows (the reload, or a restart in between)
        read the new file."""
        before = _config_load_time(server) if server.monitor_url else None
        try:
            reload_server(server.pid_file)
        except MeshError as exc:
            if len(self.servers) == 1 and server.monitor_url is None:
                raise  # as it always was: nothing says whether the lone server is up
            raise _Down(str(exc)) from exc
        if server.monitor_url is None:
            return
        deadline = time.monotonic() + self.confirm_timeout
        gone: _Down | None = None
        while time.monotonic() < deadline:
            try:
                if _config_load_time(server) != before:
                    return
            except _Down as exc:
                gone = exc  # went down since: it reads the new file as it starts again
            else:
                gone = None
            time.sleep(0.02)
        if gone is not None:
            raise gone
        raise ProvisioningError(
            "nats-server authorization",
            f"the server at {server.monitor_url} did not load {self.auth_file} (see its"
            " log); the old authorization is still in force there",
        )


def _config_load_time(server: ServerToReload) -> str:
    try:
        with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=2) as response:
            return str(json.load(response).get("config_load_time"))
    except (OSError, ValueError) as exc:
        raise _Down(f"monitoring: {exc!r}") from exc
