"""The policy service's entry point: `python -m services.policy`."""

from __future__ import annotations

import logging

from mesh.service import MeshError, Service, service_main
from services.policy.bundle import PolicyBundleInvalid
from services.policy.service import PolicyService
from services.policy.settings import PolicySettings

log = logging.getLogger(__name__)


def main() -> None:
    policy = PolicySettings()

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

    service_main(
        policy,
        lambda nc, identity, settings: PolicyService(nc, identity, settings, policy),
        reload=reload_bundle,
    )
