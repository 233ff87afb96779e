"""The policy service's entry point: `python -m services.policy`."""

from __future__ import annotations

import asyncio
import logging

from mesh.errors import MeshError
from mesh.service_process import Service, run_service
from mesh.settings import MeshSettings
from services.policy.bundle import PolicyBundleInvalid
from services.policy.service import PolicyService
from services.policy.settings import PolicySettings

log = logging.getLogger(__name__)


async def run(settings: MeshSettings, policy: PolicySettings) -> None:
    async def reload_bundle(service: Service) -> None:
        # SIGHUP: re-read the bundle directory. An invalid bundle is refused with its
        # errors in the log, and the one in force stays in force.
        assert isinstance(service, PolicyService)
        try:
            await service.activate(policy.bundle_dir)
        except PolicyBundleInvalid as exc:
            log.error("bundle refused, previous stays in force: %s", exc)  # noqa: TRY400
        except MeshError:
            log.exception("could not activate the bundle")

    await run_service(
        settings,
        policy.service_id,
        policy.seed_file,
        lambda nc, identity: PolicyService(nc, identity, settings, policy),
        reload=reload_bundle,
    )


def main() -> None:
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(MeshSettings(), PolicySettings()))
