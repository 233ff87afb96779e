"""Process wiring for `mesh run`: settings → identity → NATS (URL or embedded) → agent."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client

from mesh._broker.connection import close, connect
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.topology import topology_for
from mesh._runtime.runtime import AgentRunner
from mesh._sdk.agent import Agent
from mesh._trust.enrolment import load_grant
from mesh._trust.identity import Identity
from mesh._trust.key_directory import KeyDirectory
from mesh._trust.onboarding import connect_as, inbox_prefix, register
from mesh._trust.registry_client import RegistryClient
from mesh.errors import ConfigurationError, CredentialsRevoked
from mesh.settings import MeshSettings

log = logging.getLogger(__name__)


def load_agent(target: str) -> Agent:
    """`package.module` (attribute `agent`) or `package.module:attribute`."""
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import agent module {module_name!r}: {exc}") from exc
    candidate = getattr(module, attribute or "agent", None)
    if not isinstance(candidate, Agent):
        raise ConfigurationError(
            f"{module_name} has no Agent named {attribute or 'agent'!r} "
            "(use module:attribute to name it)"
        )
    return candidate


def agent_identity(settings: MeshSettings, agent_id: str) -> Identity:
    if settings.agent_seed is not None:
        return Identity(settings.agent_seed.get_secret_value())
    if settings.agent_seed_file is not None:
        return Identity.load(settings.agent_seed_file)
    # A stable key per agent across restarts, kept 0600 in the data dir.
    return Identity.load_or_create(settings.data_dir / "keys" / f"{agent_id}.nk")


@contextlib.asynccontextmanager
async def nats_url(settings: MeshSettings) -> AsyncIterator[str]:
    """The configured URL, or an embedded server started for the duration."""
    if settings.nats_url:
        yield settings.nats_url
        return
    server = EmbeddedNats(
        Path(settings.data_dir) / "nats",
        port=settings.embedded_port,
        binary=settings.nats_server_bin,
    )
    await asyncio.to_thread(server.start)
    log.info("started embedded nats-server at %s", server.url)
    try:
        yield server.url
    finally:
        await asyncio.to_thread(server.stop)


@dataclass
class StartedAgent:
    """An agent connected and consuming; `stop()` undoes all of it."""

    nc: Client
    runner: AgentRunner
    directory: KeyDirectory | None
    credentials_refused: asyncio.Event

    async def stop(self) -> None:
        await self.runner.stop()
        if self.directory is not None:
            await self.directory.close()
        # close, not drain: every fetched message is settled by now, and nats-py's
        # drain waits out its 30 s timeout on a pull subscription's inbox.
        await close(self.nc)


async def start_agent(
    agent: Agent, identity: Identity, url: str, settings: MeshSettings
) -> StartedAgent:
    """Connect (registering first with MESH_ONBOARD), follow the registry's keys (with
    MESH_CHECK_SIGNERS), and start consuming: what `mesh run` does before it waits."""
    topology = topology_for(settings)
    refused = asyncio.Event()
    if settings.onboard:
        # Under the registry's enforcement every consumer verifies signatures and
        # signers: what a compromised peer slips into the log must not reach a handler.
        settings = settings.model_copy(update={"verify_signatures": True, "check_signers": True})
        grant = load_grant(settings.enrolment_grant_file) if settings.enrolment_grant_file else None
        record = await register(
            url, agent.card, identity, topology.subjects, wait=settings.onboard_wait, grant=grant
        )
        log.info("agent %s is %s in the registry", agent.card.agent_id, record.status)
        nc = await connect_as(
            url, agent.card.agent_id, identity, on_credentials_refused=refused.set
        )
    else:
        nc = await connect(
            url,
            name=f"agent:{agent.card.agent_id}",
            identity=identity if settings.nkey_auth else None,
            inbox_prefix=inbox_prefix(agent.card.agent_id) if settings.nkey_auth else None,
            connect_timeout=settings.connect_timeout,
            on_credentials_refused=refused.set,
        )
    # Under the registry's enforcement the agent asks the registry under its own name.
    registry = RegistryClient(
        nc, topology.subjects, asker=agent.card.agent_id if settings.onboard else None
    )
    directory = KeyDirectory() if settings.check_signers else None
    try:
        if directory is not None:
            await directory.follow(nc, topology, registry)
        runner = AgentRunner(
            agent,
            nc=nc,
            identity=identity,
            settings=settings,
            topology=topology,
            key_directory=directory,
            registry=registry if settings.onboard else None,
            provision=not settings.onboard,  # under enforcement the registry provisions
            read_through_reader=settings.onboard,
        )
        await runner.start()
    except BaseException:
        if directory is not None:
            await directory.close()
        await close(nc)
        raise
    return StartedAgent(nc, runner, directory, refused)


async def run_agent(agent: Agent, settings: MeshSettings) -> None:
    identity = agent_identity(settings, agent.card.agent_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with nats_url(settings) as url:
        started = await start_agent(agent, identity, url, settings)
        try:
            log.info("agent %s running against %s", agent.card.agent_id, url)
            waits = {
                asyncio.create_task(started.runner.wait()): "loop",
                asyncio.create_task(stop.wait()): "signal",
                asyncio.create_task(started.credentials_refused.wait()): "refused",
            }
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
            for task in done:
                if waits[task] == "loop":
                    task.result()  # the loop died: surface why
                if waits[task] == "refused":
                    raise CredentialsRevoked(agent.card.agent_id)
        finally:
            await started.stop()
            log.info("agent %s stopped", agent.card.agent_id)
