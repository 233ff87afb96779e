"""The registry service: wiring and entry point (`python -m services.registry`).

Active/standby. Any number of replicas may run; exactly one — the holder of the writer
lease (lease.py) — serves: it provisions, decides, appends to the history, writes the
view and the broker's authorization, and answers every request. A standby tries for
the lease every `standby_poll` seconds and, once it has it, rebuilds the state from the
history and serves; an active whose term ends (its renewals refused or unconfirmed for
the lease timeout, as when it was frozen) stops serving and stands by. The history
itself is kept whole by each append's condition on the stream's newest sequence
(store.py), lease or not."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client

from contracts.cards import AgentCard
from contracts.registry_api import ASKED_BY_NAME, OPERATIONS, RegistryReply
from mesh.service import (
    BrokerError,
    ConfigurationError,
    EventPublisher,
    Identity,
    MeshError,
    MeshSettings,
    RequestServer,
    Service,
    StaticPrincipal,
    Topology,
    load_principals,
    provision_agent_durables,
    provision_streams,
    retry_transient,
    service_main,
    stop_task,
)
from services.registry.broker_auth import BrokerAuthorization, ServerToReload
from services.registry.domain import RegistryRules, RegistryState
from services.registry.handlers import RegistryHandlers
from services.registry.lease import WriterLease
from services.registry.rules import rules_for, vetted
from services.registry.settings import RegistrySettings
from services.registry.store import RegistryStore

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self.lease = WriterLease(
            self.js, self.topology, registry.lease_timeout, identity, frozenset(registry_keys)
        )
        self.store = RegistryStore(
            self.js, publisher, self.topology, frozenset(registry_keys), fence=self.lease.check
        )
        self.active = False  # holds the writer lease, and so serves
        self._serving = asyncio.Event()
        self.handlers: RegistryHandlers | None = None
        self.server: RequestServer | None = None
        self._leading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.lease.open()
        first_term = await self._try_lease()
        if not first_term:
            log.info("registry standing by: another instance is the writer")
        self._leading = asyncio.create_task(self._lead(first_term), name="registry-lease")
        if first_term:
            # Alone (or first), it serves by the time start() returns.
            serving = asyncio.create_task(self._serving.wait())
            await asyncio.wait({serving, self._leading}, return_when=asyncio.FIRST_COMPLETED)
            serving.cancel()
            if self._leading.done():
                self._leading.result()  # what stopped it

    # ------------------------------------------------------------ active/standby

    async def _lead(self, holding: bool) -> None:
        """Serve a term while the lease is ours; stand by and try for it otherwise."""
        poll = self.registry.standby_poll
        failures = 0  # terms in a row that failed: what fails again waits longer
        while True:
            try:
                if holding or await self._try_lease():
                    await self._serve_term()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception("the registry's term as the writer failed; standing by")
            holding = False
            await self._step_down()
            await asyncio.sleep(min(poll * 2 ** min(failures, 8), self.lease.timeout))

    async def _try_lease(self) -> bool:
        try:
            return await self.lease.try_acquire()
        except MeshError as exc:
            log.warning("cannot try for the registry's writer lease now: %s", exc)
            return False

    async def _serve_term(self) -> None:
        """One term: the lease is renewed from the moment it is ours, while the state is
        rebuilt and the durables provisioned (slow on a cluster that is electing
        leaders) and then while it serves. Returns once the lease is lost; a take-over
        that fails ends the term (and releases the lease) with its error."""
        renewing = asyncio.create_task(self._renew_until_lost(), name="registry-renew")
        taking = asyncio.create_task(self._take_over(), name="registry-take-over")
        try:
            await asyncio.wait({renewing, taking}, return_when=asyncio.FIRST_COMPLETED)
            if taking.done():
                taking.result()
                await renewing
        finally:
            await stop_task(taking)
            await stop_task(renewing)
        log.warning("standing by: this registry's term as the writer has ended")

    async def _renew_until_lost(self) -> None:
        while True:
            if not await self.lease.renew():
                return
            await asyncio.sleep(self.lease.timeout / 4)

    async def _take_over(self) -> None:
        """Become the writer: the state is rebuilt from the history *after* the lease
        is ours, so it holds every write of the previous writer that the stream took."""
        # The registry provisions the mesh's streams: under generated authorization,
        # agents may inspect streams but not create them.
        # Each step patiently: a take-over is most likely while the cluster is in
        # trouble (a member died with the writer), and the lease is renewed meanwhile.
        await _patiently(lambda: provision_streams(self.js, self.topology))
        await _patiently(self.store.open)
        state = await _patiently(self.store.rebuild)
        repaired = await _patiently(lambda: self.store.reconcile_view(state))
        if repaired:
            log.info("registry view: %d record(s) repaired from history", repaired)
        if self.registry.principals_file:  # as it is now: it may have changed meanwhile
            self.principals = load_principals(self.registry.principals_file)
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
            self.lease.check()
            await asyncio.to_thread(authorization.apply, list(state.records.values()))
        self.handlers = RegistryHandlers(
            state,
            self.store,
            self._rules(principals),
            principals=principals,
            authorization=authorization,
            stale_after=self.registry.stale_after,
            heartbeats=await _patiently(self.store.heartbeats),
            provision=self._provision_durables,
            registrations_per_second=self.registry.registrations_per_second,
        )
        for record in state.records.values():
            if record.status == "active":
                await _patiently(functools.partial(self._provision_durables, record.card))
        # Agents ask their reads under their own name and are answered only on their own
        # inbox; services and operators ask unnamed.
        self.server = RequestServer(
            self.nc, self.topology.subjects, "registry", _refusal, private_replies=True
        )
        for operation in OPERATIONS:
            self.server.route(operation, self.handlers.serve, also_named=operation in ASKED_BY_NAME)
        await self.server.start()  # live on the server before we say so
        self.active = True
        self._serving.set()
        log.info(
            "registry active, serving %d agents as %s",
            len(state.records),
            self.identity.public_key,
        )

    async def _step_down(self) -> None:
        """Stop serving; give the lease up if this registry still holds it (a take-over
        that failed), so that a standby — or this one, next — need not wait it out."""
        self.active = False
        self._serving.clear()
        if self.server is not None:
            # A closed connection has no subscriptions left to take down.
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await self.server.stop()
        self.server = None
        self.handlers = None
        await self.lease.release()

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
        await stop_task(self._leading)
        await self._step_down()


async def _patiently(step: Callable[[], Awaitable[T]]) -> T:
    """A take-over step, retried while the broker answers late or not at all."""
    return await retry_transient(
        step, attempts=10, maximum=2.0, deadline=30.0, retry_on=lambda e: isinstance(e, BrokerError)
    )


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
