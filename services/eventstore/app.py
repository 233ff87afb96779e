"""The event store, wired: it projects the case stream into the views (projector.py,
views/), signs checkpoints of the log (checkpoints.py) and answers queries and manifest
pages (handlers.py, manifests.py). `python -m services.eventstore` runs it."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client

from contracts.eventstore_api import StoreStatus
from mesh.service import (
    EventPublisher,
    Identity,
    KeyDirectory,
    MeshSettings,
    RegistryClient,
    RequestServer,
    Topology,
    ensure_stream,
    service_main,
    stop_task,
)
from services.eventstore.checkpoints import Checkpoints
from services.eventstore.handlers import Endpoints, refusal
from services.eventstore.manifests import ManifestPages
from services.eventstore.projector import Projector
from services.eventstore.settings import EventStoreSettings
from services.eventstore.views import Position, ViewStore


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
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.provision = provision
        self.store = store
        self.keys = KeyDirectory()
        self.registry = RegistryClient(nc, self.topology.subjects)
        publisher = EventPublisher(self.js, identity, self.topology, nc=nc)
        self.checkpoints = Checkpoints(self.js, publisher, identity, self.topology, store_settings)
        self.server = RequestServer(nc, self.topology.subjects, "eventstore", refusal)
        self.projector: Projector | None = None
        self.endpoints: Endpoints | None = None
        self._task: asyncio.Task[Position] | None = None

    @property
    def last_checkpoint(self) -> int:
        return self.checkpoints.last

    async def start(self) -> None:
        if self.provision:
            for config in self.topology.streams():
                await ensure_stream(self.js, config)
        if self.store is None:
            dsn = self.store_settings.database_url(self.settings.data_dir)
            self.store = await asyncio.to_thread(ViewStore.open, dsn)
        await self.keys.follow(self.nc, self.topology, self.registry)
        await self.checkpoints.load()
        own = self.store_settings
        self.projector = Projector(
            self.js,
            self.topology,
            self.store,
            self.keys,
            batch=own.batch,
            fetch_wait=own.fetch_wait,
            on_progress=self.checkpoints.after_batch,
        )
        self._task = asyncio.create_task(self.projector.run(), name="projector")
        pages = ManifestPages(self.store, self.identity, self.topology, own.service_id)
        self.endpoints = Endpoints(
            self.store, self.projector, self.checkpoints, pages, self.registry
        )
        self.endpoints.route(self.server)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        await stop_task(self._task)
        await self.checkpoints.stop()
        await self.keys.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    async def checkpoint_now(self, timeout: float = 30.0) -> StoreStatus:
        """Catch up with everything the stream holds now, and sign a checkpoint of it."""
        assert self.endpoints is not None, "start() first"
        return await self.endpoints.checkpoint_now(timeout)


def main() -> None:
    own = EventStoreSettings()
    service_main(own, lambda nc, identity, settings: EventStoreService(nc, identity, settings, own))
