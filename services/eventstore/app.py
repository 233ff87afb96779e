"""The event store, wired: it projects the case stream into the views (projector.py,
views/), signs checkpoints of the log (checkpoints.py) and answers queries and manifest
pages (handlers.py, manifests.py). `python -m services.eventstore` runs it.

Active/standby. Any number of replicas may run on one PostgreSQL database, under one
service id and one seed (one signer identity, the one the registry knows for the
event store). Exactly one of them — the holder of the database's writer lease
(views/lease.py) — projects, and so is the only one that signs checkpoints and answers
`checkpoint`; every replica answers the reads (one of them per request: a queue
group). A standby tries for the lease every `standby_poll` seconds and, once it has
it, projects from the committed position; an active that loses the lease (its session
ended: frozen too long, cut off, the database restarted) stops and stands by. On
SQLite the store is a single instance: the lease is always its own.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client

from contracts.eventstore_api import StoreStatus
from mesh.service import (
    EventPublisher,
    Identity,
    KeyDirectory,
    MeshError,
    MeshSettings,
    RegistryClient,
    RequestServer,
    Topology,
    provision_streams,
    service_main,
    stop_task,
    topology_for,
)
from services.eventstore.checkpoints import Checkpoints
from services.eventstore.handlers import Endpoints, refusal
from services.eventstore.manifests import ManifestPages
from services.eventstore.projector import Projector
from services.eventstore.settings import EventStoreSettings
from services.eventstore.views import LeaseLost, Position, ViewStore, WriterLease

log = logging.getLogger(__name__)


class EventStoreService:
    def __init__(
        self,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        store_settings: EventStoreSettings,
        topology: Topology | None = None,
        *,
        store: ViewStore | None = None,
        provision: bool = True,
    ) -> None:
        self.nc = nc
        self.identity = identity
        self.settings = settings
        self.store_settings = store_settings
        self.topology = topology or topology_for(settings)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.provision = provision
        self.store = store
        self.keys = KeyDirectory()
        self.registry = RegistryClient(nc, self.topology.subjects)
        publisher = EventPublisher(self.js, identity, self.topology, nc=nc)
        self.checkpoints = Checkpoints(self.js, publisher, identity, self.topology, store_settings)
        # Reads: every replica, one of them per request.
        self.server = RequestServer(
            nc, self.topology.subjects, "eventstore", refusal, queue="eventstore"
        )
        # `checkpoint`: the active alone (only the writer can catch up and sign).
        self.active_server: RequestServer | None = None
        self.lease: WriterLease | None = None
        self.projector: Projector | None = None
        self.endpoints: Endpoints | None = None
        self.active = False  # holds the writer lease and projects
        self._task: asyncio.Task[Position] | None = None
        self._leading: asyncio.Task[None] | None = None

    @property
    def last_checkpoint(self) -> int:
        return self.checkpoints.last

    async def start(self) -> None:
        if self.provision:
            await provision_streams(self.js, self.topology)
        if self.store is None:
            dsn = self.store_settings.database_url(self.settings.data_dir)
            self.store = await asyncio.to_thread(ViewStore.open, dsn)
        await self.keys.follow(self.nc, self.topology, self.registry)
        await self.checkpoints.load()
        own = self.store_settings
        self.lease = self.store.lease(own.lease_timeout)
        self.projector = Projector(
            self.js,
            self.topology,
            self.store,
            self.keys,
            batch=own.batch,
            fetch_wait=own.fetch_wait,
            on_progress=self.checkpoints.after_batch,
            lease=self.lease,
        )
        pages = ManifestPages(self.store, self.identity, self.topology, own.service_id)
        self.endpoints = Endpoints(
            self.store, self.projector, self.checkpoints, pages, self.registry
        )
        self.endpoints.route(self.server)
        await self.server.start()
        # Alone (or first), it projects by the time start() returns.
        if await self._try_lease():
            await self._take_over()
        else:
            log.info("%s standing by: another instance writes the views", own.service_id)
        self._leading = asyncio.create_task(self._lead(), name="eventstore-lease")

    async def stop(self) -> None:
        await self.server.stop()
        await stop_task(self._leading)
        await self._step_down()
        await self.checkpoints.stop()
        await self.keys.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def checkpoint_now(self, timeout: float = 30.0) -> StoreStatus:
        """Catch up with everything the stream holds now, and sign a checkpoint of it."""
        assert self.endpoints is not None, "start() first"
        if not self.active:
            raise MeshError("this event store is a standby: the active one signs checkpoints")
        return await self.endpoints.checkpoint_now(timeout)

    # ------------------------------------------------------------ active/standby

    async def _lead(self) -> None:
        """Hold the lease while it lasts; stand by and try for it otherwise."""
        own = self.store_settings
        while True:
            try:
                if not self.active:
                    if not await self._try_lease():
                        await asyncio.sleep(own.standby_poll)
                        continue
                    await self._take_over()
                await self._hold()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the event store's active term failed; standing by")
            await self._step_down()
            await asyncio.sleep(own.standby_poll)

    async def _try_lease(self) -> bool:
        assert self.lease is not None
        try:
            return await asyncio.to_thread(self.lease.try_acquire)
        except MeshError as exc:
            log.warning("cannot try for the writer lease now: %s", exc)
            return False

    async def _take_over(self) -> None:
        assert self.projector is not None
        assert self.endpoints is not None
        log.info("%s active: projecting the views", self.store_settings.service_id)
        self.active = True
        try:
            await self.checkpoints.load()  # what the previous active signed
        except MeshError as exc:
            log.warning("the signed checkpoints could not be read now: %s", exc)
        self._task = asyncio.create_task(self.projector.run(), name="projector")
        self.active_server = RequestServer(self.nc, self.topology.subjects, "eventstore", refusal)
        self.endpoints.route_active(self.active_server)
        await self.active_server.start()

    async def _hold(self) -> None:
        """While the projector runs and the lease holds: ping it well within its
        timeout. Returns when either ends."""
        assert self.lease is not None
        assert self._task is not None
        every = self.store_settings.lease_timeout / 4
        while True:
            done, _ = await asyncio.wait([self._task], timeout=every)
            if done:
                try:
                    self._task.result()
                except LeaseLost as exc:
                    log.warning("standing by: %s", exc)
                except Exception:
                    log.exception("the projector stopped; standing by")
                return
            if not await asyncio.to_thread(self.lease.keep):
                log.warning("standing by: the writer lease is gone")
                return

    async def _step_down(self) -> None:
        self.active = False
        if self.active_server is not None:
            server, self.active_server = self.active_server, None
            try:
                await server.stop()
            except Exception:
                # Stepping down goes on regardless: the lease is gone either way.
                log.exception("could not stop the active-only request server")
        await stop_task(self._task)
        self._task = None
        await self.checkpoints.stop()
        if self.projector is not None:
            self.projector.position = None  # a standby reports the database's position
        if self.lease is not None:
            # After any write still running in its thread: the lock outlives it.
            await asyncio.to_thread(self.lease.release)


def main() -> None:
    own = EventStoreSettings()
    service_main(own, lambda nc, identity, settings: EventStoreService(nc, identity, settings, own))
