"""Which nats-servers the registry reloads after regenerating authorization: the one
server of the single-server settings, or every member of a cluster, each with the
monitoring URL that confirms its reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.registry.settings import RegistrySettings


def test_every_cluster_member_comma_separated_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_REGISTRY_SERVER_PID_FILES", "/run/a.pid, /run/b.pid,/run/c.pid")
    monkeypatch.setenv("MESH_REGISTRY_SERVER_MONITOR_URLS", "http://h:1,http://h:2,http://h:3")
    assert RegistrySettings().servers_to_reload() == [
        (Path("/run/a.pid"), "http://h:1"),
        (Path("/run/b.pid"), "http://h:2"),
        (Path("/run/c.pid"), "http://h:3"),
    ]


def test_the_single_server_settings_still_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_REGISTRY_SERVER_PID_FILE", "/run/nats.pid")
    monkeypatch.setenv("MESH_REGISTRY_SERVER_MONITOR_URL", "http://h:8222")
    assert RegistrySettings().servers_to_reload() == [(Path("/run/nats.pid"), "http://h:8222")]


def test_no_monitoring_means_reloads_are_signalled_not_confirmed() -> None:
    settings = RegistrySettings(server_pid_files=[Path("/a.pid"), Path("/b.pid")])
    assert settings.servers_to_reload() == [(Path("/a.pid"), None), (Path("/b.pid"), None)]
    assert RegistrySettings().servers_to_reload() == []


def test_a_monitoring_url_per_server_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_REGISTRY_SERVER_PID_FILES", "/run/a.pid,/run/b.pid")
    monkeypatch.setenv("MESH_REGISTRY_SERVER_MONITOR_URLS", "http://h:1")
    with pytest.raises(ValidationError, match="1 server monitor URL"):
        RegistrySettings()
