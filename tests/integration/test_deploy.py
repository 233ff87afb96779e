"""deploy/ is checked against the code, since no Docker engine runs here: every
container runs a module that exists, every MESH_* setting it is given is one the code
reads, and the cluster configs are valid for the real nats-server binary."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from mesh._broker.embedded import find_binary
from mesh.settings import MeshSettings
from services.agents.claims.gateway import GatewaySettings
from services.eventstore.settings import EventStoreSettings
from services.ingress.settings import IngressSettings
from services.policy.settings import PolicySettings
from services.reader.settings import ReaderSettings
from services.registry.settings import RegistrySettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS: list[type[BaseSettings]] = [
    MeshSettings,
    RegistrySettings,
    PolicySettings,
    EventStoreSettings,
    IngressSettings,
    ReaderSettings,
    GatewaySettings,
]


def known_variables() -> set[str]:
    names = set()
    for settings in SETTINGS:
        prefix = settings.model_config.get("env_prefix", "")
        names |= {f"{prefix}{field}".upper() for field in settings.model_fields}
    return names | {"MESH_GATEWAY_URL"}  # read by the payment agent itself


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def test_every_container_runs_a_module_that_exists(compose: dict[str, Any]) -> None:
    mesh_services = {name: spec for name, spec in compose["services"].items() if "build" in spec}
    assert {"registry", "policy", "eventstore", "ingress", "reader", "gateway"} <= set(
        mesh_services
    )
    agents = set()
    for name, spec in mesh_services.items():
        command = spec["command"]
        module = command[2] if command[:2] == ["mesh", "run"] else command[0]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        if command[:2] == ["mesh", "run"]:
            agents.add(module.rsplit(".", 1)[-1])
    assert agents == {"intake", "fraud", "adjudication", "payment"}


def test_every_setting_given_is_one_the_code_reads(compose: dict[str, Any]) -> None:
    known = known_variables()
    for name, spec in compose["services"].items():
        for variable in spec.get("environment", {}):
            if variable.startswith("MESH_"):
                assert variable in known, f"{name}: {variable} is read by nothing"


def test_the_views_go_to_postgresql_and_streams_are_replicated(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["eventstore"]["environment"]["MESH_EVENTSTORE_DSN"].startswith("postgresql://")
    for name in ("policy", "payment"):
        assert services[name]["environment"]["MESH_STREAM_REPLICAS"] == "3"
    assert len(services["policy"]["environment"]["MESH_NATS_URL"].split(",")) == 3


@pytest.mark.parametrize("node", [1, 2, 3])
def test_the_cluster_configs_are_valid_for_nats_server(node: int, tmp_path: Path) -> None:
    config = (DEPLOY / "cluster" / f"nats-{node}.conf").read_text()
    assert "sync_interval: always" in config
    for peer in (1, 2, 3):
        assert f"nats-route://nats-{peer}:6222" in config
    # nats-server -t parses the config (with an authorization block to include) and exits.
    shutil.copy(DEPLOY / "cluster" / f"nats-{node}.conf", tmp_path / "nats.conf")
    (tmp_path / "auth.conf").write_text("authorization { users: [{user: a, password: b}] }\n")
    text = (tmp_path / "nats.conf").read_text().replace("/data", str(tmp_path / "data"))
    (tmp_path / "nats.conf").write_text(text.replace("/config/", f"{tmp_path}/"))
    checked = subprocess.run(
        [str(find_binary(None)), "-t", "-c", str(tmp_path / "nats.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_image_holds_the_code_and_the_policies() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for needed in ("contracts", "mesh", "services", "deploy/policies", "pip install"):
        assert needed in dockerfile
