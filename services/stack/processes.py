"""What the stack runs: nats-server, the services and the claims agents, each process
with its command line and the environment that configures it."""

from __future__ import annotations

import json
from collections.abc import Sequence

from contracts.cards import AgentCard
from mesh._broker.embedded import EmbeddedNats, free_port
from mesh._broker.topology import Topology
from mesh.errors import ConfigurationError
from services.agents.claims.cards import ADJUDICATION, FRAUD, INTAKE, PAYMENT
from services.stack.layout import POLICIES, Layout
from services.stack.supervisor import ProcessSpec, python_module

AGENTS = ("intake", "fraud", "adjudication", "payment")
AGENT_IDS = {
    "intake": "claims-intake",
    "fraud": "claims-fraud",
    "adjudication": "claims-adjudication",
    "payment": "claims-payment",
}
SERVER = "nats-server"  # the single server; a cluster's members are nats-server-1, -2…
SERVICES = ("registry", "policy", "eventstore", "ingress", "reader", "gateway")
# Services that may run as several processes: they share their consumers (the policy's
# are partitioned like an agent's) and answer requests in one queue group each; the
# event store runs active/standby, which needs PostgreSQL views; the registry runs
# active/standby on its writer lease (the standby serves nothing until it takes over).
REPLICATED_SERVICES = ("registry", "policy", "ingress", "reader", "eventstore")
CLAIMS_CARDS = (INTAKE, FRAUD, ADJUDICATION, PAYMENT)
Observer = tuple[AgentCard, str]  # a card, and the `mesh run` target that runs it


def member_name(index: int) -> str:
    """The process name of a cluster's member `index` (0-based)."""
    return f"{SERVER}-{index + 1}"


def replica_names(name: str, count: int) -> list[str]:
    """The process names of an agent or service run as `count` replicas: its name alone
    for one."""
    return [name] if count == 1 else [f"{name}-{i + 1}" for i in range(count)]


def role_of(process: str) -> str:
    """The agent or service a process runs (`policy-2` → `policy`)."""
    base, _, index = process.rpartition("-")
    return base if index.isdigit() and base in (*AGENTS, *REPLICATED_SERVICES) else process


def parse_replicas(values: Sequence[str]) -> dict[str, int]:
    """`NAME=N` options (NAME an agent's short name or its id, or a replicated service)
    → replicas by short name."""
    by_id = {agent_id: name for name, agent_id in AGENT_IDS.items()}
    found: dict[str, int] = {}
    for value in values:
        name, _, count = value.partition("=")
        name = by_id.get(name, name)
        known = (*AGENTS, *REPLICATED_SERVICES)
        if name not in known or not count.isdigit() or not 1 <= int(count) <= 16:
            raise ConfigurationError(
                f"--replicas takes NAME=N with NAME one of {', '.join(known)} (or an "
                f"agent's id) and N from 1 to 16, not {value!r}"
            )
        found[name] = int(count)
    return found


def process_specs(
    layout: Layout,
    topology: Topology,
    servers: Sequence[EmbeddedNats],
    ports: dict[str, int],
    replicas: dict[str, int] | None = None,
    observers: Sequence[Observer] = (),
) -> list[ProcessSpec]:
    """`servers`: the one embedded server, or every member of a cluster. Every client
    is given every member's URL (and fails over between them); every member is
    reloaded by the registry after it regenerates the authorization they all include.
    `replicas`: how many processes run an agent (by short name; one if not given):
    replica i of N prefers the work partitions p with p % N == i. `observers`: more
    agents beside the claims agents (a card and its `mesh run` target), enrolled alike
    and named by agent id (tests run an order-checking agent this way)."""
    common = {
        "MESH_NATS_URL": ",".join(server.url for server in servers),
        "MESH_STREAM_REPLICAS": str(topology.replicas),
        "MESH_PARTITIONS": str(topology.partitions),
        "MESH_PIN_TIMEOUT": "3",
        "MESH_SUBJECT_ROOT": topology.root,
        "MESH_DATA_DIR": str(layout.data_dir),
        "MESH_NKEY_AUTH": "1",
        "MESH_HEARTBEAT_INTERVAL": "2",
        "MESH_ACK_WAIT": "10",
        "MESH_FETCH_WAIT": "0.5",
        "MESH_RETRY_BASE_DELAY": "0.2",
        "MESH_RETRY_MAX_DELAY": "3",
        "MESH_BREAKER_FAILURE_THRESHOLD": "8",
        "MESH_BREAKER_RESET_TIMEOUT": "2",
        "MESH_MAX_DELIVER": "10",
        "PYTHONUNBUFFERED": "1",
    }
    specs = [
        ProcessSpec(
            "registry",
            python_module("services.registry"),
            {
                **common,
                "MESH_REGISTRY_SEED_FILE": str(layout.seed("registry")),
                "MESH_REGISTRY_PRINCIPALS_FILE": str(layout.principals_file),
                "MESH_REGISTRY_AUTH_FILE": str(layout.auth_file),
                "MESH_REGISTRY_SERVER_PID_FILES": ",".join(str(s.pid_path) for s in servers),
                "MESH_REGISTRY_SERVER_MONITOR_URLS": ",".join(
                    f"http://127.0.0.1:{server.monitor_port}" for server in servers
                ),
                "MESH_REGISTRY_KNOWN_OWNERS": json.dumps(["claims-team", "claims-desk"]),
                "MESH_REGISTRY_STALE_AFTER": "10",
            },
        ),
        ProcessSpec(
            "policy",
            python_module("services.policy"),
            {
                **common,
                "MESH_POLICY_SEED_FILE": str(layout.seed("policy")),
                "MESH_POLICY_BUNDLE_DIR": str(POLICIES),
            },
        ),
        ProcessSpec(
            "eventstore",
            python_module("services.eventstore"),
            {
                **common,
                "MESH_EVENTSTORE_SEED_FILE": str(layout.seed("eventstore")),
                "MESH_EVENTSTORE_FETCH_WAIT": "0.2",
            },
        ),
        ProcessSpec(
            "ingress",
            python_module("services.ingress"),
            {
                **common,
                "MESH_INGRESS_SEED_FILE": str(layout.seed("ingress")),
                "MESH_INGRESS_HTTP_PORT": str(ports["ingress"]),
                "MESH_INGRESS_HTTP_TOKENS_FILE": str(layout.http_tokens_file),
            },
        ),
        ProcessSpec(
            "reader",
            python_module("services.reader"),
            {**common, "MESH_READER_SEED_FILE": str(layout.seed("reader"))},
        ),
        ProcessSpec(
            "gateway",
            python_module("services.agents.claims.gateway"),
            {
                "MESH_GATEWAY_PORT": str(ports["gateway"]),
                "MESH_GATEWAY_TOKEN": layout.http_token("gateway"),
                "MESH_GATEWAY_LEDGER": str(layout.data_dir / "gateway.db"),
                "PYTHONUNBUFFERED": "1",
            },
        ),
    ]
    specs = [
        replica
        for spec in specs
        for replica in _replicated(spec, (replicas or {}).get(spec.name, 1), ports)
    ]
    targets = [(name, AGENT_IDS[name], f"services.agents.claims.{name}") for name in AGENTS]
    targets += [(card.agent_id, card.agent_id, target) for card, target in observers]
    for name, agent_id, target in targets:
        count = (replicas or {}).get(name, 1)
        for index, process in enumerate(replica_names(name, count)):
            specs.append(
                ProcessSpec(
                    process,
                    python_module("mesh", "run", target),
                    {
                        **common,
                        **({"MESH_REPLICA": f"{index}/{count}"} if count > 1 else {}),
                        "MESH_ONBOARD": "1",
                        "MESH_CHECK_SIGNERS": "1",
                        "MESH_ENROLMENT_GRANT_FILE": str(layout.grant_file(agent_id)),
                        "MESH_GATEWAY_URL": f"http://127.0.0.1:{ports['gateway']}",
                        # Only the payment agent is given the gateway's credential.
                        **(
                            {"MESH_GATEWAY_TOKEN": layout.http_token("gateway")}
                            if name == "payment"
                            else {}
                        ),
                    },
                )
            )
    return specs


def _replicated(spec: ProcessSpec, count: int, ports: dict[str, int]) -> list[ProcessSpec]:
    """A service's spec as `count` processes; each ingress replica gets an HTTP port of
    its own (`ports["ingress-2"]`…, the first keeps `ports["ingress"]`)."""
    if count == 1:
        return [spec]
    out = []
    for index, name in enumerate(replica_names(spec.name, count)):
        env = dict(spec.env)
        if spec.name == "ingress" and index:
            env["MESH_INGRESS_HTTP_PORT"] = str(ports.setdefault(name, free_port()))
        out.append(ProcessSpec(name, spec.argv, env))
    return out
