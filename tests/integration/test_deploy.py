"""deploy/ is checked against the code, since no Docker engine and no Kubernetes run
here: every container runs a module that exists, every MESH_* setting it is given is one
the code reads, the cluster configs are valid for the real nats-server binary, and the
Kubernetes manifests are valid for the Kubernetes schemas and agree with the code."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic_settings import BaseSettings

from mesh._broker.embedded import find_binary, server_config
from mesh._trust.identity import Identity
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
    for name in ("policy", "payment-1", "payment-2"):
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


# --- Kubernetes (deploy/k8s) -------------------------------------------------------
# Not applied to a cluster (none here, and no helm): every manifest is validated against
# the Kubernetes schemas that kubernetes-validate ships in its wheel (offline), and
# checked against the code as the compose file is. The NATS chart is not rendered; its
# values are checked key by key against the chart's, and the server config they make
# (re-rendered here the way the chart's config templates do) is run through nats-server -t.

K8S = DEPLOY / "k8s"
KUBERNETES_VERSION = "1.32.0"
NOT_MANIFESTS = {"kustomization.yaml", "nats-values.yaml", "secrets.example.yaml"}
NATS_POD = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats"}
NATS_CLIENT = {"agent-mesh/nats-client": "true"}
AGENTS = {"intake", "fraud", "adjudication", "payment"}
SETTINGS_OF: dict[str, type[BaseSettings]] = {
    "services.registry": RegistrySettings,
    "services.policy": PolicySettings,
    "services.eventstore": EventStoreSettings,
    "services.ingress": IngressSettings,
    "services.reader": ReaderSettings,
    "services.agents.claims.gateway": GatewaySettings,
}
# Value paths of the nats/nats chart (2.12.5, values.yaml) that nats-values.yaml may
# set; helm ignores a key the chart does not have, so a misspelt one would be lost.
# `merge` and `patch` take free-form config, container or pod fields.
CHART_VALUE_PATHS = {
    "fullnameOverride",
    "config.cluster.enabled",
    "config.cluster.replicas",
    "config.cluster.merge",
    "config.jetstream.enabled",
    "config.jetstream.fileStore.enabled",
    "config.jetstream.fileStore.dir",
    "config.jetstream.fileStore.pvc.enabled",
    "config.jetstream.fileStore.pvc.size",
    "config.jetstream.fileStore.pvc.storageClassName",
    "config.jetstream.memoryStore.enabled",
    "config.jetstream.merge",
    "config.monitor.enabled",
    "config.monitor.port",
    "config.merge",
    "container.image.repository",
    "container.image.tag",
    "container.resources",
    "container.patch",
    "podTemplate.topologySpreadConstraints",
    "podTemplate.patch",
    "podDisruptionBudget.enabled",
    "natsBox.enabled",
}
FREE_FORM = {"merge", "patch", "resources", "topologySpreadConstraints"}


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name not in NOT_MANIFESTS:
            found += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in k8s_documents() if doc["kind"] == kind}


MESH_IMAGE = "agent-mesh:latest"


def mesh_workloads() -> dict[str, dict[str, Any]]:
    """Every part of the mesh: services as Deployments, agents as StatefulSets (each
    pod learns its ordinal, its MESH_REPLICA); PostgreSQL's StatefulSet is not ours."""
    found = {**of_kind("Deployment"), **of_kind("StatefulSet")}
    return {
        name: workload
        for name, workload in found.items()
        if main_container(workload)["image"] == MESH_IMAGE
    }


def compose_parts(compose: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The mesh's compose services by the part they run (`fraud-1`, `fraud-2` → fraud),
    each as many times as it runs (a service's `deploy.replicas`)."""
    parts: dict[str, list[dict[str, Any]]] = {}
    for name, spec in compose["services"].items():
        if "build" not in spec:
            continue
        base, _, index = name.rpartition("-")
        part = base if index.isdigit() else name
        count = spec.get("deploy", {}).get("replicas", 1)
        parts.setdefault(part, []).extend([spec] * count)
    return parts


def example_secrets() -> dict[str, dict[str, str]]:
    documents = yaml.safe_load_all((K8S / "secrets.example.yaml").read_text())
    return {doc["metadata"]["name"]: doc["stringData"] for doc in documents}


def nats_values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "nats-values.yaml").read_text())
    return loaded


def main_container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    container: dict[str, Any] = containers[0]
    return container


def module_of(deployment: dict[str, Any]) -> str:
    args = main_container(deployment)["args"]  # the image's entrypoint is `python -m`
    return str(args[2] if args[:2] == ["mesh", "run"] else args[0])


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels selectors are evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - NOT_MANIFESTS
    assert sorted(kustomization["resources"]) == sorted(manifests)
    assert kustomization["namespace"] == "agent-mesh"


@pytest.mark.parametrize(
    "document", k8s_documents(), ids=lambda d: f"{d[0]}:{d[1]['kind']}/{d[1]['metadata']['name']}"
)
def test_every_manifest_is_valid_for_kubernetes(document: tuple[str, dict[str, Any]]) -> None:
    # Strict: a field the schema does not have is an error, not silently dropped.
    # Raises SchemaNotFoundError for a kind Kubernetes does not have, ValidationError else.
    kubernetes_validate.validate(document[1], KUBERNETES_VERSION, strict=True)


def test_the_secret_placeholders_are_valid_secrets() -> None:
    for doc in yaml.safe_load_all((K8S / "secrets.example.yaml").read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl to run kustomize")
def test_kustomize_builds_the_manifests_into_one_namespace() -> None:
    built = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False
    )
    assert built.returncode == 0, built.stderr
    documents = [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    assert len(documents) == len(k8s_documents())
    for doc in documents:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "agent-mesh", doc["metadata"]["name"]


def test_every_part_of_compose_runs_in_kubernetes_as_many_times(compose: dict[str, Any]) -> None:
    workloads = mesh_workloads()
    parts = compose_parts(compose)
    assert set(workloads) == set(parts)
    for name, workload in workloads.items():
        for spec in parts[name]:
            assert main_container(workload)["args"] == spec["command"], name
        assert importlib.util.find_spec(module_of(workload)) is not None, name
        assert workload["spec"]["replicas"] == len(parts[name]), name


def test_agent_replicas_each_know_which_one_they_are(compose: dict[str, Any]) -> None:
    """`mesh up --replicas` gives replica i of N `MESH_REPLICA=i/N`; so do compose (one
    service per replica) and Kubernetes (the StatefulSet's pod ordinal)."""
    for name, specs in compose_parts(compose).items():
        if name in AGENTS:
            count = len(specs)
            given = sorted(spec["environment"]["MESH_REPLICA"] for spec in specs)
            assert given == [f"{i}/{count}" for i in range(count)], name
    for name, workload in of_kind("StatefulSet").items():
        if name not in AGENTS:
            continue
        env = main_container(workload)["env"]
        index = next(e for e in env if e["name"] == "POD_INDEX")
        assert index["valueFrom"]["fieldRef"]["fieldPath"] == (
            "metadata.labels['apps.kubernetes.io/pod-index']"
        )
        replica = next(e for e in env if e["name"] == "MESH_REPLICA")
        assert env.index(index) < env.index(replica)  # $(POD_INDEX) is defined before
        assert replica["value"] == f"$(POD_INDEX)/{workload['spec']['replicas']}", name
        service = of_kind("Service")[workload["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", name
    assert set(of_kind("StatefulSet")) >= AGENTS


def test_every_deployment_has_its_own_service_account_and_resources() -> None:
    accounts = of_kind("ServiceAccount")
    seen = set()
    for name, deployment in mesh_workloads().items():
        pod = deployment["spec"]["template"]["spec"]
        account = pod["serviceAccountName"]
        assert account in accounts, name
        assert account not in seen, name
        seen.add(account)
        assert accounts[account]["automountServiceAccountToken"] is False
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"] + pod.get("initContainers", []):
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
            assert "memory" in container["resources"]["limits"], name
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment, secrets read from their placeholders."""
    secrets = example_secrets()
    env = {}
    for variable in container["env"]:
        if "fieldRef" in variable.get("valueFrom", {}):
            continue  # the pod's own (its ordinal): see pod_fields
        if "valueFrom" in variable:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["key"] in secrets[ref["name"]], f"no secret {ref['name']}/{ref['key']}"
            env[variable["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            # $(NAME) is expanded by Kubernetes from the variables defined before it;
            # here, as for the first pod of a StatefulSet.
            env[variable["name"]] = re.sub(
                r"\$\((\w+)\)", lambda m: pod_fields(container)[m.group(1)], variable["value"]
            )
    return env


def pod_fields(container: dict[str, Any]) -> dict[str, str]:
    """Variables a container takes from its pod's fields, as the first pod has them."""
    first_pod = {"metadata.labels['apps.kubernetes.io/pod-index']": "0"}
    return {
        v["name"]: first_pod[v["valueFrom"]["fieldRef"]["fieldPath"]]
        for v in container["env"]
        if "fieldRef" in v.get("valueFrom", {})
    }


@pytest.mark.parametrize("name", sorted(mesh_workloads()))
def test_every_deployment_setting_is_one_the_code_reads_and_accepts(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    deployment = mesh_workloads()[name]
    env = literal_env(main_container(deployment))
    known = known_variables()
    for variable in env:
        assert variable.startswith("MESH_"), f"{name}: {variable}"
        assert variable in known, f"{name}: {variable} is read by nothing"
    # And the code parses them: the shared settings and the service's own.
    for variable in [v for v in os.environ if v.startswith("MESH_")]:
        monkeypatch.delenv(variable)
    for variable, value in env.items():
        monkeypatch.setenv(variable, value)
    module = module_of(deployment)
    settings = MeshSettings()
    if module in SETTINGS_OF:
        SETTINGS_OF[module]()
    if module != "services.agents.claims.gateway":  # the only part that is no NATS client
        urls = env["MESH_NATS_URL"].split(",")
        replicas = nats_values()["config"]["cluster"]["replicas"]
        assert urls == [f"nats://nats-{i}.nats-headless:4222" for i in range(replicas)]
        assert settings.stream_replicas == replicas == 3
        assert settings.nkey_auth is True


def credential_files(deployment: dict[str, Any]) -> dict[str, Path]:
    env = literal_env(main_container(deployment))
    files = {k: Path(v) for k, v in env.items() if k.endswith("_FILE")}
    files.pop("MESH_REGISTRY_AUTH_FILE", None)  # what the registry writes, not reads
    return files


@pytest.mark.parametrize("name", sorted(mesh_workloads()))
def test_every_credential_is_read_from_its_own_read_only_secret(name: str) -> None:
    deployment = mesh_workloads()[name]
    pod = deployment["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in main_container(deployment)["volumeMounts"]}
    secrets = example_secrets()
    module = module_of(deployment)
    files = credential_files(deployment)
    # The file each part reads its key from, by the setting it reads.
    if module.rsplit(".", 1)[-1] in AGENTS:
        agent_id = importlib.import_module(module).agent.card.agent_id
        assert files["MESH_AGENT_SEED_FILE"].name == f"{agent_id}.nk"
        assert files["MESH_ENROLMENT_GRANT_FILE"].name == f"{agent_id}.grant.json"
        expected_secret = f"mesh-{agent_id}"
    elif module in SETTINGS_OF and "seed_file" in SETTINGS_OF[module].model_fields:
        prefix = SETTINGS_OF[module].model_config["env_prefix"]
        assert f"{prefix}SEED_FILE" in files, f"{name} reads no seed from a secret"
        expected_secret = f"mesh-{name}"
    else:
        assert not files
        assert name == "gateway"
        return
    for variable, path in files.items():
        mount = mounts[str(path.parent)]
        secret = volumes[mount["name"]]["secret"]
        assert mount["readOnly"] is True, f"{name}: {variable}"
        assert secret["secretName"] == expected_secret, f"{name}: {variable}"
        assert "items" not in secret  # every key is a file named as the key
        assert path.name in secrets[expected_secret], f"{name}: {variable} is no key"
        assert secret["defaultMode"] & 0o007 == 0, "a seed must not be world-readable"


def test_replicated_deployments_have_a_disruption_budget_and_singletons_never_overlap() -> None:
    budgets = of_kind("PodDisruptionBudget")
    replicated = set()
    for name, deployment in mesh_workloads().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets.values() if matches(b["spec"]["selector"], labels)]
        if deployment["spec"]["replicas"] > 1:
            replicated.add(name)
            assert [b["spec"] for b in covering] == [
                {"minAvailable": 1, "selector": covering[0]["spec"]["selector"]}
            ], name
        else:
            assert not covering, f"{name}: a budget on one replica blocks every drain"
            assert deployment["spec"]["strategy"]["type"] == "Recreate", name
    # Every part but the payment gateway (a stand-in for the bank's, with its ledger).
    assert replicated == {"registry", "policy", "eventstore", "ingress", "reader", *AGENTS}


def test_the_ingress_is_probed_on_the_port_it_serves() -> None:
    container = main_container(of_kind("Deployment")["ingress"])
    env = literal_env(container)
    (port,) = container["ports"]
    assert int(env["MESH_INGRESS_HTTP_PORT"]) == port["containerPort"]
    assert env["MESH_INGRESS_HTTP_HOST"] == "0.0.0.0"
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    service = of_kind("Service")["ingress"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    gateway = main_container(of_kind("Deployment")["gateway"])
    assert gateway["readinessProbe"]["tcpSocket"]["port"] == gateway["ports"][0]["name"]


def allowed(direction: str, labels: dict[str, str]) -> set[tuple[str, int]]:
    """What the pod may reach (egress) or be reached by (ingress): (peer, port) pairs,
    the peer named by its pods' app.kubernetes.io/name, `dns` or `anywhere`."""
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    pairs = set()
    for policy in of_kind("NetworkPolicy").values():
        spec = policy["spec"]
        if direction not in spec["policyTypes"] or not matches(spec["podSelector"], labels):
            continue
        for rule in spec.get(key, []):
            peers = ["anywhere"]
            if peers_key in rule:
                peers = []
                for peer in rule[peers_key]:
                    if "namespaceSelector" in peer:
                        assert peer["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
                        peers.append("dns")
                    elif peer["podSelector"]["matchLabels"] == NATS_CLIENT:
                        peers.append("nats-clients")
                    else:
                        peers.append(peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"])
            pairs |= {(p, port["port"]) for p in peers for port in rule["ports"]}
    return pairs


def test_the_network_is_closed_but_for_what_the_mesh_needs() -> None:
    deny = of_kind("NetworkPolicy")["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    dns = {("dns", 53)}
    extra_egress = {"eventstore": {("postgres", 5432)}, "payment": {("gateway", 8099)}}
    for name, deployment in mesh_workloads().items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        if name == "gateway":
            assert allowed("Egress", labels) == dns
            assert allowed("Ingress", labels) == {("payment", 8099)}
            continue
        assert matches({"matchLabels": NATS_CLIENT}, labels), name
        assert allowed("Egress", labels) == {("nats", 4222)} | dns | extra_egress.get(name, set())
        assert allowed("Ingress", labels) == ({("anywhere", 8080)} if name == "ingress" else set())
    postgres = of_kind("StatefulSet")["postgres"]["spec"]["template"]["metadata"]["labels"]
    assert allowed("Ingress", postgres) == {("eventstore", 5432)}
    assert allowed("Egress", postgres) == dns
    # The chart's NATS pods: clients on 4222, the other servers on 6222.
    assert allowed("Ingress", NATS_POD) == {("nats-clients", 4222), ("nats", 6222)}
    assert allowed("Egress", NATS_POD) == {("nats", 6222)} | dns


def value_paths(values: dict[str, Any], prefix: str = "") -> set[str]:
    paths = set()
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and key not in FREE_FORM:
            paths |= value_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def test_the_nats_values_use_only_keys_the_chart_has() -> None:
    # The chart itself is not rendered: no helm binary here, and no network to fetch it.
    assert value_paths(nats_values()) <= CHART_VALUE_PATHS
    values = nats_values()
    assert values["config"]["cluster"]["enabled"] is True
    assert values["config"]["jetstream"]["enabled"] is True
    assert values["config"]["jetstream"]["fileStore"]["pvc"]["enabled"] is True
    assert values["config"]["jetstream"]["memoryStore"]["enabled"] is False


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def chart_config(values: dict[str, Any], root: Path) -> str:
    """nats.conf as the chart's files/config/{config,jetstream,cluster}.yaml make it from
    these values (only the parts they touch), formatted as its nats.formatConfig does:
    JSON, `…$include` keys as include directives, `<< x >>` unquoted. Paths under root."""
    config = values["config"]
    jetstream, cluster = config["jetstream"], config["cluster"]
    store = jetstream["fileStore"]
    server = {
        "server_name": "nats-0",
        "lame_duck_grace_period": "10s",
        "lame_duck_duration": "30s",
        "pid_file": str(root / "var/run/nats/nats.pid"),
        "port": 4222,
        "http_port": config["monitor"]["port"],
        "jetstream": deep_merge(
            {
                "max_memory_store": 0,
                "store_dir": str(root / store["dir"].lstrip("/")),
                "max_file_store": f"<< {store['pvc']['size']} >>",
            },
            jetstream.get("merge", {}),
        ),
        "cluster": deep_merge(
            {
                "name": "nats",
                "port": 6222,
                "no_advertise": True,
                "routes": [
                    f"nats://nats-{i}.nats-headless:6222" for i in range(cluster["replicas"])
                ],
            },
            cluster.get("merge", {}),
        ),
    }
    text = json.dumps(deep_merge(server, config.get("merge", {})), indent=2, sort_keys=True)
    text = re.sub(r'".*\$include": "(.*)",?', r"include \1;", text)
    return re.sub(r'"<<\s+(.*?)\s+>>"', r"\1", text)


def test_the_nats_values_make_the_server_the_code_requires(tmp_path: Path) -> None:
    values = nats_values()
    # What every server the code starts has (mesh._broker.embedded), the chart's too.
    required = server_config(port=1, monitor_port=2, store_dir=tmp_path, name="x")
    required_payload = re.search(r"max_payload: (\S+)", required)
    assert required_payload is not None
    assert "sync_interval: always" in required
    assert values["config"]["jetstream"]["merge"]["sync_interval"] == "always"
    assert values["config"]["merge"]["max_payload"] == f"<< {required_payload.group(1)} >>"
    assert values["config"]["cluster"]["replicas"] == 3

    # The registry's init container writes the first auth.conf where the servers include
    # it from: run its script as it is in registry.yaml, on a principals file of real keys.
    registry = of_kind("Deployment")["registry"]["spec"]["template"]["spec"]
    (bootstrap,) = registry["initContainers"]
    auth_mount = next(m for m in bootstrap["volumeMounts"] if m["name"] == "nats-auth")
    env = {e["name"]: e["value"] for e in bootstrap["env"]}
    auth_dir = tmp_path / "etc/mesh-auth"
    auth_dir.mkdir(parents=True)
    principals = [
        {"name": name, "public_key": Identity.generate().public_key, "role": name}
        for name in ("registry", "policy", "eventstore", "ingress", "reader", "operator")
    ]
    (tmp_path / "principals.json").write_text(json.dumps(principals))
    env["MESH_REGISTRY_PRINCIPALS_FILE"] = str(tmp_path / "principals.json")
    env["MESH_REGISTRY_AUTH_FILE"] = env["MESH_REGISTRY_AUTH_FILE"].replace(
        auth_mount["mountPath"], str(auth_dir)
    )
    assert bootstrap["command"][:2] == ["python", "-c"]
    script = bootstrap["command"][2]
    for _ in range(2):  # the second run finds the file and leaves it
        ran = subprocess.run(
            [sys.executable, "-c", script],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
    assert "authorization" in (auth_dir / "auth.conf").read_text()

    # The servers mount that volume where the include points (relative to the chart's
    # /etc/nats-config/nats.conf), and nats-server accepts the config with it.
    (mount,) = [p["value"] for p in values["container"]["patch"] if p["path"] == "/volumeMounts/-"]
    assert mount["mountPath"] == "/etc/mesh-auth"
    include = values["config"]["merge"]["zzz$include"]
    assert (Path("/etc/nats-config") / include).resolve() == Path("/etc/mesh-auth/auth.conf")
    conf = tmp_path / "etc/nats-config/nats.conf"
    conf.parent.mkdir(parents=True)
    (tmp_path / "var/run/nats").mkdir(parents=True)
    text = chart_config(values, tmp_path)
    conf.write_text(text)
    assert '"sync_interval": "always"' in text
    assert "include ../mesh-auth/auth.conf;" in text
    checked = subprocess.run(
        [str(find_binary(None)), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
