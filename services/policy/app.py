"""The policy service's entry point: `python -m services.policy`."""

from __future__ import annotations

import asyncio
import logging
import signal

from mesh.app import nats_url
from mesh.connection import close, connect
from mesh.errors import MeshError
from mesh.identity import Identity
from mesh.onboarding import inbox_prefix
from mesh.settings import MeshSettings
from services.policy.bundle import PolicyBundleInvalid
from services.policy.service import PolicyService
from services.policy.settings import PolicySettings

log = logging.getLogger(__name__)


async def run(settings: MeshSettings, policy: PolicySettings) -> None:
    seed = policy.seed_file or settings.data_dir / "keys" / f"{policy.service_id}.nk"
    identity = Identity.load_or_create(seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with nats_url(settings) as url:
        nc = await connect(
            url,
            name=f"service:{policy.service_id}",
            identity=identity if settings.nkey_auth else None,
            inbox_prefix=inbox_prefix(policy.service_id) if settings.nkey_auth else None,
            connect_timeout=settings.connect_timeout,
        )
        service = PolicyService(nc, identity, settings, policy)
        reloads: set[asyncio.Task[None]] = set()

        async def reload_bundle() -> None:
            # SIGHUP: re-read the bundle directory. An invalid bundle is refused with its
            # errors in the log, and the one in force stays in force.
            try:
                await service.activate(policy.bundle_dir)
            except PolicyBundleInvalid as exc:
                log.error("bundle refused, previous stays in force: %s", exc)  # noqa: TRY400
            except MeshError:
                log.exception("could not activate the bundle")

        def on_hangup() -> None:
            task = asyncio.create_task(reload_bundle())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hangup)
        try:
            await service.start()
            await stop.wait()
        finally:
            await service.stop()
            await close(nc)


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(MeshSettings(), PolicySettings()))
