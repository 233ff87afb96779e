"""Writing the generated authorization config and making the server load it: the
registry's adapter to the broker's configuration (what the config says is generated in
`mesh._broker.permissions`)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from contracts.cards import AgentRecord
from mesh.service import (
    ProvisioningError,
    StaticPrincipal,
    Topology,
    authorization_config,
    reload_server,
)

log = logging.getLogger(__name__)


class BrokerAuthorization:
    """Regenerates the server's authorization from the registry and reloads the server
    when (and only when) the text changed."""

    def __init__(
        self,
        auth_file: Path,
        pid_file: Path | None,
        principals: list[StaticPrincipal],
        topology: Topology,
        *,
        monitor_url: str | None = None,
    ) -> None:
        self.auth_file = auth_file
        self.pid_file = pid_file
        self.principals = principals
        self.topology = topology
        self.monitor_url = monitor_url

    def apply(self, records: Iterable[AgentRecord]) -> bool:
        # A removed principal keeps its entry (its past signatures) but not its user.
        active = [p for p in self.principals if p.active]
        text = authorization_config(records, active, self.topology)
        if self.auth_file.exists() and self.auth_file.read_text() == text:
            return False
        # Atomic replace: the server never reads a half-written file.
        fd, tmp = tempfile.mkstemp(dir=self.auth_file.parent, prefix=".auth-")
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        loaded_before = self._config_load_time()
        os.replace(tmp, self.auth_file)
        if self.pid_file is not None:
            reload_server(self.pid_file)
            self._confirm_reload(loaded_before)
            log.info("authorization regenerated and server reloaded")
        return True

    def _config_load_time(self) -> str | None:
        if self.monitor_url is None:
            return None
        try:
            with urllib.request.urlopen(f"{self.monitor_url}/varz", timeout=2) as response:
                return str(json.load(response).get("config_load_time"))
        except (OSError, ValueError) as exc:
            raise ProvisioningError("nats-server monitoring", repr(exc)) from exc

    def _confirm_reload(self, before: str | None) -> None:
        """A reload the server refused (say, an invalid config) leaves the old
        authorization in force: that must be an error, not a silent success."""
        if self.monitor_url is None:
            return
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if self._config_load_time() != before:
                return
            time.sleep(0.02)
        raise ProvisioningError(
            "nats-server authorization",
            f"the server did not load {self.auth_file} (see its log); the old "
            "authorization is still in force",
        )
