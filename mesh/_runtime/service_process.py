"""Running a mesh service (registry, policy, …) as its own process: its key, its NATS
connection (authenticated by that key under broker enforcement), and a clean stop on
SIGINT/SIGTERM. SIGHUP goes to the service's `reload`, if it has one."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from nats.aio.client import Client

from mesh._broker.connection import close, connect
from mesh._sdk.app import nats_url
from mesh._trust.identity import Identity
from mesh._trust.onboarding import inbox_prefix
from mesh.settings import MeshSettings

log = logging.getLogger(__name__)


class Service(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class OwnSettings(Protocol):
    """What every service's own settings (`MESH_<SERVICE>_*`) say about its identity."""

    @property
    def service_id(self) -> str: ...

    @property
    def seed_file(self) -> Path | None: ...


def service_main(
    own: OwnSettings,
    build: Callable[[Client, Identity, MeshSettings], Service],
    reload: Callable[[Service], Awaitable[None]] | None = None,
) -> None:
    """The entry point of a service process (`python -m services.<name>`): logging, the
    shared settings from the environment, then `run_service` until a signal."""
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = MeshSettings()
    asyncio.run(
        run_service(
            settings,
            own.service_id,
            own.seed_file,
            lambda nc, identity: build(nc, identity, settings),
            reload=reload,
        )
    )


def service_identity(settings: MeshSettings, service_id: str, seed_file: Path | None) -> Identity:
    return Identity.load_or_create(seed_file or settings.data_dir / "keys" / f"{service_id}.nk")


async def run_service(
    settings: MeshSettings,
    service_id: str,
    seed_file: Path | None,
    build: Callable[[Client, Identity], Service],
    reload: Callable[[Service], Awaitable[None]] | None = None,
) -> None:
    identity = service_identity(settings, service_id, seed_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with nats_url(settings) as url:
        nc = await connect(
            url,
            name=f"service:{service_id}",
            identity=identity if settings.nkey_auth else None,
            inbox_prefix=inbox_prefix(service_id) if settings.nkey_auth else None,
            connect_timeout=settings.connect_timeout,
        )
        service = build(nc, identity)
        reloads: set[asyncio.Task[None]] = set()
        if reload is not None:
            hangup = reload

            def on_hangup() -> None:
                task = asyncio.ensure_future(hangup(service))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            await service.start()
            log.info("%s running against %s", service_id, url)
            await stop.wait()
        finally:
            await service.stop()
            await close(nc)
