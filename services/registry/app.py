"""The registry service: wiring and entry point (`python -m services.registry`)."""

from __future__ import annotations

import asyncio
import logging

import msgspec
from nats.aio.client import Client

from contracts.cards import AgentCard
from contracts.registry_api import ASKED_BY_NAME, OPERATIONS, RegistryReply
from mesh.service import (
    ConfigurationError,
    EventPublisher,
    Identity,
    MeshError,
    MeshSettings,
    RequestServer,
    Service,
    StaticPrincipal,
    Topology,
    ensure_stream,
    load_principals,
    provision_agent_durables,
    service_main,
)
from services.registry.broker_auth import BrokerAuthorization, ServerToReload
from services.registry.domain import RegistryRules, RegistryState
from services.registry.handlers import RegistryHandlers
from services.registry.rules import rules_for, vetted
from services.registry.settings import RegistrySettings
from services.registry.store import RegistryStore

log = logging.getLogger(__name__)


def _vetted(principals: list[StaticPrincipal], state: RegistryState) -> list[StaticPrincipal]:
    kept, dropped = vetted(principals, state)
    for name, clash in dropped:
        log.error("principal %r ignored: it would take %s", name, clash)
    return kept


class RegistryService:
    def __init__(
        self,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        registry: RegistrySettings,
        topology: Topology | None = None,
    ) -> None:
        self.nc = nc
        self.identity = identity
        self.settings = settings
        self.registry = registry
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.principals = (
            load_principals(registry.principals_file) if registry.principals_file else []
        )
        publisher = EventPublisher(
            self.js, identity, self.topology, timeout=settings.request_timeout, nc=nc
        )
        registry_keys = {identity.public_key} | {
            p.public_key for p in self.principals if p.role == "registry"
        }
        self.store = RegistryStore(self.js, publisher, self.topology, frozenset(registry_keys))
        self.handlers: RegistryHandlers | None = None
        self.server: RequestServer | None = None

    async def start(self) -> None:
        # The registry provisions the mesh's streams: under generated authorization,
        # agents may inspect streams but not create them.
        for config in self.topology.streams():
            await ensure_stream(self.js, config)
        await self.store.open()
        state = await self.store.rebuild()
        repaired = await self.store.reconcile_view(state)
        if repaired:
            log.info("registry view: %d record(s) repaired from history", repaired)
        principals = self.principals = _vetted(self.principals, state)
        authorization = None
        if self.registry.auth_file is not None:
            authorization = BrokerAuthorization(
                self.registry.auth_file,
                [
                    ServerToReload(pid_file, monitor_url)
                    for pid_file, monitor_url in self.registry.servers_to_reload()
                ],
                principals,
                self.topology,
            )
            await asyncio.to_thread(authorization.apply, list(state.records.values()))
        self.handlers = RegistryHandlers(
            state,
            self.store,
            self._rules(principals),
            principals=principals,
            authorization=authorization,
            stale_after=self.registry.stale_after,
            heartbeats=await self.store.heartbeats(),
            provision=self._provision_durables,
            registrations_per_second=self.registry.registrations_per_second,
        )
        for record in state.records.values():
            if record.status == "active":
                await self._provision_durables(record.card)
        # Agents ask their reads under their own name and are answered only on their own
        # inbox; services and operators ask unnamed.
        self.server = RequestServer(
            self.nc, self.topology.subjects, "registry", _refusal, private_replies=True
        )
        for operation in OPERATIONS:
            self.server.route(operation, self.handlers.serve, also_named=operation in ASKED_BY_NAME)
        await self.server.start()  # live on the server before we say so
        log.info("registry serving %d agents as %s", len(state.records), self.identity.public_key)

    def _rules(self, principals: list[StaticPrincipal]) -> RegistryRules:
        return rules_for(self.registry.service_id, self.registry.known_owners, principals)

    async def reload_principals(self) -> None:
        """SIGHUP: re-read the principals file (`mesh principals add|remove` wrote it)
        and regenerate the broker's authorization from it. A file that does not load
        changes nothing: the principals in force stay."""
        if self.registry.principals_file is None or self.handlers is None:
            return
        try:
            principals = load_principals(self.registry.principals_file)
        except ConfigurationError as exc:
            log.error("principals not reloaded, the ones in force stay: %s", exc)  # noqa: TRY400
            return
        async with self.handlers.writes:  # never in the middle of a registration
            principals = _vetted(principals, self.handlers.state)
            self.principals = principals
            try:
                await asyncio.to_thread(
                    self.handlers.reload_principals, principals, self._rules(principals)
                )
            except MeshError:
                log.exception("principals reloaded, but the broker's authorization was not")
                return
        log.info("principals reloaded: %d in force", sum(p.active for p in principals))

    async def _provision_durables(self, card: AgentCard) -> None:
        await provision_agent_durables(self.js, card, self.topology, self.settings)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()


def _refusal(reason: str) -> bytes:
    return msgspec.json.encode(RegistryReply(ok=False, error=reason))


async def _reload_principals(service: Service) -> None:
    assert isinstance(service, RegistryService)
    await service.reload_principals()


def main() -> None:
    own = RegistrySettings()
    service_main(
        own,
        lambda nc, identity, settings: RegistryService(nc, identity, settings, own),
        reload=_reload_principals,
    )


if __name__ == "__main__":
    main()
