"""The public surface for agent authors: declare an agent, run it, steer settlement.

    agent = Agent(AgentCard(agent_id="intake", consumes=["case_opened"], ...))

    @agent.on(CaseOpened)
    async def on_case_opened(event: CaseOpened, ctx: HandlerContext) -> None: ...

Services (registry, policy, event store, …) build on `mesh.service` as well. The
modules under `mesh._*` are internal: `make lint` refuses a service that imports
them, and `tests/unit/test_public_api.py` pins both surfaces.

    mesh/
      __init__.py   this surface (agent authors)
      service.py    the surface for service authors
      errors.py     the one error tree, drawn in its docstring
      settings.py   MESH_* settings
      testing.py    a test kit for agent authors (real nats-server, agent in-process)
      _sdk/         the agent SDK's internals: Agent, `mesh run`, the case reader
      _runtime/     consume, dispatch, settle; retries, breakers, dead letters; services
      _broker/      NATS: connection, embedded server, streams, publish, read
      _trust/       identities, signatures, key directory, enrolment, authorization
      _support/     atomic files, stopping tasks, showing untrusted text
      cli/          the `mesh` command (services add subcommands by entry point)
"""

from mesh._broker.topology import Topology
from mesh._runtime.resilience import CircuitBreaker, RetryBudget, redelivery_span, retry_transient
from mesh._runtime.runtime import AgentRunner
from mesh._sdk.agent import Agent, HandlerContext
from mesh._sdk.waits import OpenWait
from mesh._trust.identity import Identity
from mesh.errors import (
    BrokerError,
    CircuitOpen,
    ConcurrencyConflict,
    ConfigurationError,
    HandlerError,
    MeshError,
    NotAuthorized,
    PermanentError,
    PermissionDenied,
    PublishFailed,
    SignatureError,
    TransientError,
)
from mesh.settings import MeshSettings

__all__ = [
    "Agent",
    "AgentRunner",
    "BrokerError",
    "CircuitBreaker",
    "CircuitOpen",
    "ConcurrencyConflict",
    "ConfigurationError",
    "HandlerContext",
    "HandlerError",
    "Identity",
    "MeshError",
    "MeshSettings",
    "NotAuthorized",
    "OpenWait",
    "PermanentError",
    "PermissionDenied",
    "PublishFailed",
    "RetryBudget",
    "SignatureError",
    "Topology",
    "TransientError",
    "redelivery_span",
    "retry_transient",
]
