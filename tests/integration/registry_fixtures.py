"""A mesh whose broker enforces the registry: a real nats-server running the generated
authorization config, the registry service, an operator and a harness principal."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from contracts.cards import AgentCard, AgentRecord, SignedStatement
from mesh._broker.connection import close, connect
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.permissions import authorization_config
from mesh._broker.topology import Topology
from mesh._runtime.runtime import AgentRunner
from mesh._sdk.agent import Agent
from mesh._sdk.app import StartedAgent, start_agent
from mesh._trust.enrolment import issue_grant, write_grant
from mesh._trust.identity import Identity
from mesh._trust.onboarding import card_with_key, connect_as, inbox_prefix
from mesh._trust.principals import StaticPrincipal, write_principals
from mesh._trust.registry_client import RegistryClient
from mesh.settings import MeshSettings
from mesh.testing import unique_root
from services.eventstore.app import EventStoreService
from services.eventstore.settings import EventStoreSettings
from services.policy.app import PolicyService
from services.policy.settings import PolicySettings
from services.reader.service import ReaderService
from services.registry.app import RegistryService
from services.registry.settings import RegistrySettings

KNOWN_OWNER = "claims-team"
SCREENER_CARD = AgentCard(
    agent_id="screener",
    name="Fraud screening",
    version="1",
    owner=KNOWN_OWNER,
    purpose="checks a claim and scores its fraud risk",
    produces=["case_step_completed"],
    # The one authority for each (intake's verdict: no claim is paid unless accepted).
    facts=["fraud_score", "claim_accepted"],
)


@dataclass
class SecuredMesh:
    directory: Path
    server: EmbeddedNats
    topology: Topology
    registry_identity: Identity
    operator: Identity
    harness: Identity
    policy_identity: Identity
    store_identity: Identity
    registry_settings: RegistrySettings
    settings: MeshSettings
    registry_nc: Client | None = None
    service: RegistryService | None = None
    harness_nc: Client | None = None
    connections: list[Client] = field(default_factory=list)
    started: list[StartedAgent] = field(default_factory=list)
    policy_services: list[PolicyService] = field(default_factory=list)
    stores: list[EventStoreService] = field(default_factory=list)
    reader_identity: Identity = field(default_factory=Identity.generate)
    # The ingress's key: cases opened with it state the claim's facts with authority.
    ingress_identity: Identity = field(default_factory=Identity.generate)
    readers: list[ReaderService] = field(default_factory=list)
    standbys: list[RegistryService] = field(default_factory=list)
    # An enrolled fraud screener: the authority for `fraud_score` (see SCREENER_CARD).
    screener: Identity = field(default_factory=Identity.generate)
    _screener_enrolled: bool = False

    async def ensure_screener(self) -> Identity:
        if not self._screener_enrolled:
            await self.enrol(SCREENER_CARD, self.screener)
            self._screener_enrolled = True
        return self.screener

    async def start_eventstore(self, dsn: str, **options: Any) -> EventStoreService:
        nc = await connect(
            self.url,
            name="eventstore",
            identity=self.store_identity,
            inbox_prefix=inbox_prefix("eventstore"),
        )
        self.connections.append(nc)
        service = EventStoreService(
            nc,
            self.store_identity,
            self.settings,
            EventStoreSettings(dsn=dsn, **{"fetch_wait": 0.1, **options}),
            self.topology,
        )
        await service.start()
        self.stores.append(service)
        return service

    async def stop_eventstore(self, service: EventStoreService) -> None:
        self.stores.remove(service)
        await service.stop()

    async def start_policy(self, bundle_dir: Path) -> PolicyService:
        nc = await connect(
            self.url,
            name="policy",
            identity=self.policy_identity,
            inbox_prefix=inbox_prefix("policy"),
        )
        self.connections.append(nc)
        service = PolicyService(
            nc,
            self.policy_identity,
            self.settings,
            PolicySettings(bundle_dir=bundle_dir),
            self.topology,
        )
        await service.start()
        self.policy_services.append(service)
        return service

    async def operator_client(self) -> RegistryClient:
        nc = await connect_as(self.url, "operator", self.operator)
        self.connections.append(nc)
        return self.client(nc)

    @property
    def runners(self) -> list[AgentRunner]:
        return [started.runner for started in self.started]

    @property
    def url(self) -> str:
        return self.server.url

    async def start_registry(self) -> RegistryService:
        self.registry_nc = await connect(
            self.url,
            name="registry",
            identity=self.registry_identity,
            inbox_prefix=inbox_prefix("registry"),
        )
        self.service = RegistryService(
            self.registry_nc,
            self.registry_identity,
            self.settings,
            self.registry_settings,
            self.topology,
        )
        await self.service.start()
        return self.service

    async def stop_registry(self) -> None:
        if self.service is not None:
            await self.service.stop()
        if self.registry_nc is not None:
            await close(self.registry_nc)  # lost with a broker restart: not an error
        self.service, self.registry_nc = None, None

    async def start_standby_registry(self) -> tuple[RegistryService, Client]:
        """A second registry process, same key and settings: it stands by while the
        first one holds the writer lease."""
        nc = await connect(
            self.url,
            name="registry-standby",
            identity=self.registry_identity,
            inbox_prefix=inbox_prefix("registry"),
        )
        self.connections.append(nc)
        service = RegistryService(
            nc, self.registry_identity, self.settings, self.registry_settings, self.topology
        )
        await service.start()
        self.standbys.append(service)
        return service, nc

    def client(self, nc: Client) -> RegistryClient:
        return RegistryClient(nc, self.topology.subjects)

    def grant(self, card: AgentCard) -> SignedStatement:
        """The operator's one-time enrolment grant of exactly this card's scope."""
        return issue_grant(card, self.operator, "operator")

    async def enrol(self, card: AgentCard, identity: Identity) -> AgentRecord:
        """Register a new agent with a grant the operator issued for its card."""
        assert self.harness_nc is not None
        card = card_with_key(card, identity)
        return await self.client(self.harness_nc).register(card, identity, grant=self.grant(card))

    async def run_agent(
        self, agent: Agent, identity: Identity | None = None, *, check_signers: bool = False
    ) -> tuple[AgentRunner, Client]:
        """What `mesh run` does with MESH_ONBOARD=1, in-process, with a grant the
        operator issued for its card."""
        grant_file = self.directory / f"{agent.card.agent_id}-{uuid.uuid4().hex[:8]}.grant"
        write_grant(self.grant(agent.card), grant_file)
        settings = self.settings.model_copy(
            update={
                "onboard": True,
                "onboard_wait": 5.0,
                "check_signers": check_signers,
                "enrolment_grant_file": grant_file,
            }
        )
        started = await start_agent(agent, identity or Identity.generate(), self.url, settings)
        self.started.append(started)
        return started.runner, started.nc

    async def start_reader(self) -> ReaderService:
        """The case reader agents read cases through under enforcement."""
        nc = await connect(
            self.url,
            name="reader",
            identity=self.reader_identity,
            inbox_prefix=inbox_prefix("reader"),
        )
        self.connections.append(nc)
        reader = ReaderService(nc, self.settings, self.topology)
        await reader.start()
        self.readers.append(reader)
        return reader

    async def close(self) -> None:
        for reader in self.readers:
            await reader.stop()
        for store in self.stores:
            await store.stop()
        for service in self.policy_services:
            await service.stop()
        for started in self.started:
            await started.stop()
        for standby in self.standbys:
            await standby.stop()
        for nc in self.connections:
            await close(nc)
        if self.harness_nc is not None:
            await close(self.harness_nc)
        await self.stop_registry()
        await asyncio.to_thread(self.server.stop)


@contextlib.asynccontextmanager
async def secured_mesh(directory: Path) -> AsyncIterator[SecuredMesh]:
    topology = Topology(unique_root())
    registry_identity, operator, harness, policy, store, reader, ingress = (
        Identity.generate() for _ in range(7)
    )
    principals = [
        StaticPrincipal("registry", registry_identity.public_key, "registry"),
        StaticPrincipal("operator", operator.public_key, "operator"),
        StaticPrincipal("harness", harness.public_key, "service"),
        StaticPrincipal("policy", policy.public_key, "policy"),
        StaticPrincipal("eventstore", store.public_key, "eventstore"),
        StaticPrincipal("reader", reader.public_key, "reader"),
        StaticPrincipal("ingress", ingress.public_key, "ingress"),
    ]
    principals_file = directory / "principals.json"
    write_principals(principals_file, principals)
    auth_file = directory / "auth.conf"
    auth_file.write_text(authorization_config([], principals, topology))
    server = EmbeddedNats(directory, extra_config='include "auth.conf"')
    await asyncio.to_thread(server.start)
    mesh = SecuredMesh(
        directory=directory,
        server=server,
        topology=topology,
        registry_identity=registry_identity,
        operator=operator,
        harness=harness,
        policy_identity=policy,
        store_identity=store,
        reader_identity=reader,
        ingress_identity=ingress,
        registry_settings=RegistrySettings(
            known_owners=[KNOWN_OWNER],
            principals_file=principals_file,
            auth_file=auth_file,
            server_pid_file=server.pid_path,
            server_monitor_url=f"http://127.0.0.1:{server.monitor_port}",
            stale_after=5.0,
            lease_timeout=2.0,
            standby_poll=0.1,
        ),
        settings=MeshSettings(
            subject_root=topology.root,
            ack_wait=5.0,
            fetch_wait=0.2,
            max_deliver=3,
            retry_base_delay=0.02,
            retry_max_delay=0.1,
            request_timeout=2.0,
            heartbeat_interval=0.5,
            timer_sweep_every=1.0,
        ),
    )
    try:
        await mesh.start_registry()
        await mesh.start_reader()
        mesh.harness_nc = await connect(
            mesh.url, name="harness", identity=harness, inbox_prefix=inbox_prefix("harness")
        )
        yield mesh
    finally:
        await mesh.close()
