"""Bringing the whole mesh up as processes, and down again."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nats.aio.client import Client

from contracts.registry_api import RegistryQuery
from mesh._broker.cluster import NatsCluster, health_problems
from mesh._broker.connection import close
from mesh._broker.discovery import (
    RunningMesh,
    hold_lock,
    remove_running,
    write_running,
)
from mesh._broker.embedded import EmbeddedNats, free_port
from mesh._broker.topology import Topology
from mesh._trust.enrolment import issue_grant, write_grant
from mesh._trust.onboarding import connect_as
from mesh._trust.registry_client import RegistryClient, request_with_patience
from mesh.errors import AlreadyRunning, MeshError
from services.stack.layout import REPO, Layout, bootstrap
from services.stack.processes import (
    AGENT_IDS,
    AGENTS,
    CLAIMS_CARDS,
    SERVER,
    Observer,
    member_name,
    process_specs,
    replica_names,
)
from services.stack.supervisor import ProcessSpec, Supervisor


@dataclass
class Stack:
    layout: Layout
    topology: Topology
    servers: dict[str, EmbeddedNats]  # process name -> the server (or cluster member)
    supervisor: Supervisor
    operator_nc: Client
    ingress_http: str
    gateway_http: str
    extra_connections: list[Client] = field(default_factory=list)

    @property
    def server(self) -> EmbeddedNats:
        """The single server (a cluster's first member)."""
        return next(iter(self.servers.values()))

    @property
    def url(self) -> str:
        """Every server's URL, comma-joined: clients fail over between them."""
        return ",".join(server.url for server in self.servers.values())

    @property
    def clustered(self) -> bool:
        return len(self.servers) > 1

    async def wait_cluster_healthy(self, timeout: float = 60.0) -> None:
        """Until every member answers `/healthz` and they agree on a meta leader (a
        member that came back has caught up)."""
        await _wait_healthy(self.supervisor, self.servers, timeout)

    def gateway_client(self) -> httpx.AsyncClient:
        """The payment gateway, with its credential (for reconciliation)."""
        token = self.layout.http_token("gateway")
        return httpx.AsyncClient(
            base_url=self.gateway_http, timeout=10, headers={"Authorization": f"Bearer {token}"}
        )

    @property
    def registry(self) -> RegistryClient:
        return RegistryClient(self.operator_nc, self.topology.subjects)

    async def connect(self, principal: str) -> Client:
        nc = await connect_as(self.url, principal, self.layout.identity(principal))
        self.extra_connections.append(nc)
        return nc

    async def wait_agents(self, timeout: float = 60.0) -> None:
        """Until every claims agent is registered, active and heart-beating."""
        wanted = set(AGENT_IDS.values())
        deadline = time.monotonic() + timeout
        while True:
            records = await self.registry.find(RegistryQuery(status="active"))
            alive = {r.card.agent_id for r in records if not r.stale}
            if wanted <= alive:
                return
            self.check_processes()
            if time.monotonic() > deadline:
                raise MeshError(f"agents not up after {timeout:.0f}s: {sorted(wanted - alive)}")
            await asyncio.sleep(0.2)

    async def wait_service(self, operation: str, body: bytes = b"") -> None:
        """`service.operation`, or `service.operation.principal` for a service that
        knows who asks from the subject."""
        service, name, *principal = operation.split(".")
        subjects = self.topology.subjects
        await request_with_patience(
            self.operator_nc,
            subjects.service_as(service, name, principal[0])
            if principal
            else subjects.service(service, name),
            body,
            timeout=5,
            what=operation,
            patience=30,
        )

    async def wait_services(self) -> None:
        """Until policy, the case reader and the event store answer on NATS, and the
        ingress and the payment gateway on HTTP (after a start, or a restart)."""
        await self.wait_service("policy.pending.operator")
        await self.wait_service("reader.history.operator", b'{"case_id": "none"}')
        await self.wait_service("eventstore.status")
        await _wait_http(f"{self.ingress_http}/healthz")
        await _wait_http(f"{self.gateway_http}/v1/ledger")

    def check_processes(self) -> None:
        """Fails once the supervisor has given up on a process (a crash or two is
        its business: it brings the process back)."""
        failed = self.supervisor.failed()
        if failed:
            name, why = next(iter(failed.items()))
            raise MeshError(f"{name} keeps failing ({why}):\n{self.supervisor.log_tail(name)}")


async def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=1.0) as client:
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code < 500:
                    return
            if time.monotonic() > deadline:
                raise MeshError(f"{url} did not answer in {timeout:.0f}s")
            await asyncio.sleep(0.1)


async def _start_server(supervisor: Supervisor, server: EmbeddedNats) -> None:
    """nats-server as one of the supervised processes (so that it is brought back like
    any other), on ports chosen once: a restart reuses the same config."""
    last_error: MeshError | None = None
    for _ in range(3):  # a free port can be taken between probing and binding
        supervisor.start(ProcessSpec(SERVER, server.configure()))
        try:
            await asyncio.to_thread(server.wait_ready, supervisor.children[SERVER].exit_code)
        except MeshError as exc:
            last_error = exc
            supervisor.stop(SERVER)
        else:
            return
    assert last_error is not None
    raise last_error


def check_cluster_size(size: int) -> None:
    """A JetStream cluster keeps a quorum through one lost member from three members
    on; an even size adds a member without adding a loss it survives."""
    if size < 3 or size % 2 == 0:
        raise MeshError(f"--cluster takes an odd number of members, 3 or more (not {size})")


async def _wait_healthy(
    supervisor: Supervisor, members: dict[str, EmbeddedNats], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        problems = await asyncio.to_thread(health_problems, list(members.values()))
        if not problems:
            return
        failed = supervisor.failed()
        if gone := [name for name in members if name in failed]:
            raise MeshError(f"{gone[0]} keeps failing ({failed[gone[0]]})")
        if time.monotonic() > deadline:
            raise MeshError(f"NATS cluster not healthy after {timeout:.0f}s: {'; '.join(problems)}")
        await asyncio.sleep(0.1)


async def _start_cluster(supervisor: Supervisor, cluster: NatsCluster) -> dict[str, EmbeddedNats]:
    """Every member as a supervised process of its own (brought back like any other,
    on the same ports and store: a restart reruns the same config), formed into a
    healthy cluster before anything else starts."""
    last_error: MeshError | None = None
    for _ in range(3):  # a free port can be taken between probing and binding
        members = {member_name(i): node for i, node in enumerate(cluster.configure())}
        try:
            for name, node in members.items():
                supervisor.start(ProcessSpec(name, node.configure()))
            for name, node in members.items():
                await asyncio.to_thread(node.wait_ready, supervisor.children[name].exit_code)
            await _wait_healthy(supervisor, members, cluster.ready_timeout)
        except MeshError as exc:
            last_error = exc
            for name in members:
                if name in supervisor.children:
                    supervisor.stop(name)
        else:
            return members
    assert last_error is not None
    raise last_error


async def _watch(supervisor: Supervisor, on_event: Callable[[str], None]) -> None:
    while True:
        for line in supervisor.tick():
            on_event(line)
        await asyncio.sleep(0.1)


def _role(process: str, roles: set[str]) -> str:
    """Which of `roles` a process runs: itself, or the one it is a numbered replica of."""
    base, _, index = process.rpartition("-")
    return base if index.isdigit() and base in roles else process


def _check_standby_views(specs: dict[str, ProcessSpec], replicas: dict[str, int]) -> None:
    """Event store replicas take turns writing one database: PostgreSQL's, never a
    SQLite file each."""
    if replicas.get("eventstore", 1) == 1:
        return
    dsn = specs["eventstore-1"].env.get("MESH_EVENTSTORE_DSN") or os.environ.get(
        "MESH_EVENTSTORE_DSN", ""
    )
    if not dsn.startswith("postgresql"):
        raise MeshError(
            "event store replicas run active/standby on PostgreSQL views: set "
            "MESH_EVENTSTORE_DSN=postgresql://… (one database for all of them)"
        )


@contextlib.asynccontextmanager
async def running_stack(
    data_dir: Path,
    root: str = "mesh",
    on_step: Callable[[str], None] = lambda _: None,
    env: dict[str, dict[str, str]] | None = None,
    argv: dict[str, list[str]] | None = None,
    on_event: Callable[[str], None] = lambda _: None,
    cluster: int = 0,
    replicas: dict[str, int] | None = None,
    observers: Sequence[Observer] = (),
) -> AsyncIterator[Stack]:
    """The whole mesh, up and ready (every agent active), until the block ends. Every
    process, nats-server included, is supervised: one that exits is started again
    (`on_event` hears of it). `cluster`: run that many nats-server members (odd, 3 or
    more) as one JetStream cluster with R3 streams instead of the one embedded server.
    `replicas`: processes per agent, by short name (see `process_specs`)."""
    if cluster:
        check_cluster_size(cluster)
    # Resolved once, here: every child gets absolute paths, whatever its working
    # directory (they run from the checkout, the user may not).
    layout = Layout(await asyncio.to_thread(Path(data_dir).resolve))
    topology = Topology(root, replicas=3 if cluster else 1)
    layout.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock = hold_lock(layout.data_dir)  # until this block ends, however it ends
    except AlreadyRunning as exc:
        raise MeshError(str(exc)) from None
    supervisor = Supervisor(layout.logs, REPO, status_file=layout.status_file)
    watching: asyncio.Task[None] | None = None
    stack: Stack | None = None
    running: RunningMesh | None = None
    try:
        bootstrap(layout, topology)
        # The stack's operator enrols its own agents as any operator would: a signed,
        # expiring, one-time grant per agent, of exactly the scope its card asks for.
        operator = layout.identity("operator")
        for card in (*CLAIMS_CARDS, *(card for card, _ in observers)):
            grant = issue_grant(card, operator, "operator")
            write_grant(grant, layout.grant_file(card.agent_id))
        if cluster:
            # Each member in a directory of its own under nats/, every one including
            # the registry's one auth.conf beside them (an include is resolved against
            # the including file's directory).
            servers = await _start_cluster(
                supervisor,
                NatsCluster(layout.nats_dir, size=cluster, extra_config='include "../auth.conf"'),
            )
            on_step(
                f"nats-server cluster of {cluster} on {', '.join(s.url for s in servers.values())}"
                f" (JetStream R{topology.replicas}, fsync always, registry-enforced auth)"
            )
        else:
            server = EmbeddedNats(layout.nats_dir, extra_config='include "auth.conf"')
            await _start_server(supervisor, server)
            servers = {SERVER: server}
            on_step(
                f"nats-server on {server.url} (JetStream, fsync always, registry-enforced auth)"
            )
        watching = asyncio.create_task(_watch(supervisor, on_event), name="supervise")
        ports = {"ingress": free_port(), "gateway": free_port()}
        specs = {
            spec.name: spec
            for spec in process_specs(
                layout,
                topology,
                list(servers.values()),
                ports,
                replicas=replicas,
                observers=observers,
            )
        }
        # Per-process overrides (tests, benchmarks), by process or by the agent or
        # service it runs (every replica of it).
        for name, spec in list(specs.items()):
            role = _role(name, {*(env or {}), *(argv or {})})
            extra = {**(env or {}).get(role, {}), **(env or {}).get(name, {})}
            command = (argv or {}).get(name, (argv or {}).get(role, spec.argv))
            specs[name] = ProcessSpec(name, command, {**spec.env, **extra})
        _check_standby_views(specs, replicas or {})
        for process in replica_names("registry", (replicas or {}).get("registry", 1)):
            supervisor.start(specs[process])
        urls = ",".join(server.url for server in servers.values())
        operator_nc = await connect_as(urls, "operator", layout.identity("operator"))
        stack = Stack(
            layout,
            topology,
            servers,
            supervisor,
            operator_nc,
            ingress_http=f"http://127.0.0.1:{ports['ingress']}",
            gateway_http=f"http://127.0.0.1:{ports['gateway']}",
        )
        await stack.wait_service("registry.keys")
        on_step("registry up")
        for name in ("policy", "eventstore", "ingress", "reader", "gateway"):
            for process in replica_names(name, (replicas or {}).get(name, 1)):
                supervisor.start(specs[process])
        await stack.wait_services()
        on_step("policy, event store, ingress (NATS + HTTP), case reader and payment gateway up")
        for name in (*AGENTS, *(card.agent_id for card, _ in observers)):
            for process in replica_names(name, (replicas or {}).get(name, 1)):
                supervisor.start(specs[process])
        await stack.wait_agents()
        on_step(
            "claims agents registered, active and consuming: "
            + ", ".join(
                f"{name} x{(replicas or {}).get(name, 1)}"
                if (replicas or {}).get(name, 1) > 1
                else name
                for name in AGENTS
            )
        )
        # Where this mesh listens, for the CLI (`mesh status`, `mesh principals`…).
        running = RunningMesh(
            nats_url=stack.url,
            subject_root=topology.root,
            data_dir=str(layout.data_dir),
            supervisor_pid=os.getpid(),
            ingress_http=stack.ingress_http,
        )
        write_running(running)
        yield stack
    finally:
        if running is not None:
            remove_running(running)
        if watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
        if stack is not None:
            for nc in stack.extra_connections:
                await close(nc)
            await close(stack.operator_nc)
        # In reverse order of starting: the agents first, nats-server last.
        await asyncio.to_thread(supervisor.stop_all)
        lock.close()
