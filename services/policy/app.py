"""The policy service: wiring and entry point (`python -m services.policy`).

Every `action_requested` gets a decision event; humans' approvals and missed deadlines
resolve the ones that wait. Built on the agent SDK (one durable over the case events it
decides on), as a static principal: its decision subjects are ones no agent card may
produce, so the broker refuses a forged decision from an agent.

    handlers.py   reactions: action_requested, approval_granted/_rejected; activate
    domain.py     deciding one request (pure);   approvals.py  human approvals (pure)
    evidence.py   what the log's history establishes;  case_log.py  reading it
    store.py      the approvals KV bucket;       deadlines.py  approval deadlines (timers)
    pending.py    the pending-approvals endpoint
"""

from __future__ import annotations

import logging

from nats.aio.client import Client

from mesh.service import (
    Agent,
    AgentRunner,
    Identity,
    KeyDirectory,
    MeshError,
    MeshSettings,
    RegistryClient,
    Service,
    Topology,
    provision_streams,
    service_main,
    topology_for,
)
from services.policy.bundle import PolicyBundleInvalid
from services.policy.case_log import CaseLog
from services.policy.handlers import PolicyHandlers, policy_card
from services.policy.pending import PendingApprovals, pending_server
from services.policy.settings import PolicySettings
from services.policy.store import ApprovalStore

log = logging.getLogger(__name__)


class PolicyService:
    def __init__(
        self,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        policy: PolicySettings,
        topology: Topology | None = None,
    ) -> None:
        self.nc = nc
        self.policy = policy
        self.topology = topology or topology_for(settings)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.registry = RegistryClient(nc, self.topology.subjects)
        self.keys = KeyDirectory()
        self.approvals = ApprovalStore(self.js, self.topology)
        case_log = CaseLog(self.js, self.topology, self.keys, policy.service_id)
        # The handlers must be on the agent before its runner exists (it checks them
        # against the card); what they emit themselves goes through that runner.
        self.handlers = PolicyHandlers(
            policy.service_id, self.keys, self.approvals, case_log, lambda e: self.runner.emit(e)
        )
        self.agent = Agent(policy_card(policy.service_id))
        self.handlers.subscribe(self.agent)
        self.runner = AgentRunner(
            self.agent,
            nc=nc,
            identity=identity,
            settings=settings,
            topology=self.topology,
            key_directory=self.keys,  # forged or revoked approvals never reach a handler
        )
        self.requests = pending_server(
            nc,
            self.topology.subjects,
            PendingApprovals(self.approvals, self.keys),
            private_replies=settings.nkey_auth,
        )

    async def start(self) -> None:
        if self.runner.provision:
            await provision_streams(self.js, self.topology)
        await self.handlers.activate(self.policy.bundle_dir)
        await self.approvals.open()
        await self.keys.follow(self.nc, self.topology, self.registry)
        await self.runner.start()
        await self.requests.start()

    async def stop(self) -> None:
        await self.requests.stop()
        await self.runner.stop()
        await self.keys.close()


def main() -> None:
    policy = PolicySettings()

    async def reload_bundle(service: Service) -> None:
        # SIGHUP: re-read the bundle directory. An invalid bundle is refused with its
        # errors in the log, and the one in force stays in force.
        assert isinstance(service, PolicyService)
        try:
            await service.handlers.activate(policy.bundle_dir)
        except PolicyBundleInvalid as exc:
            log.error("bundle refused, previous stays in force: %s", exc)  # noqa: TRY400
        except MeshError:
            log.exception("could not activate the bundle")

    service_main(
        policy,
        lambda nc, identity, settings: PolicyService(nc, identity, settings, policy),
        reload=reload_bundle,
    )
