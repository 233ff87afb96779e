"""The public surface for service authors: what a mesh service (registry, policy, event
store, ingress, reader, or one of yours) builds on.

Agents import `mesh`; services import `mesh` and this module, never `mesh._*`
(`make lint` enforces it with import-linter). A name added here is a promise:
`tests/unit/test_public_api.py` pins the list.
"""

from __future__ import annotations

from mesh._broker.connection import (
    client_of,
    close,
    connect,
    on_reconnect,
)
from mesh._broker.direct_get import (
    broker_time,
    read_direct,
)
from mesh._broker.embedded import (
    reload_server,
)
from mesh._broker.errors import (
    broker_errors,
)
from mesh._broker.permissions import (
    authorization_config,
)
from mesh._broker.provisioning import (
    ensure_key_value,
    ensure_stream,
)
from mesh._broker.publisher import (
    EventPublisher,
)
from mesh._broker.reading import (
    read_case,
    read_subject,
)
from mesh._broker.stored_messages import (
    RawMessage,
    StoredEvent,
)
from mesh._broker.stream_provisioning import (
    provision_streams,
)
from mesh._broker.stream_reader import (
    StreamReader,
    read_raw,
)
from mesh._broker.topology import (
    Topology,
    topology_for,
)
from mesh._runtime.command_line import (
    run,
    running_mesh_settings,
    session,
)
from mesh._runtime.dead_letters import (
    DeadLetterSink,
)
from mesh._runtime.durables import (
    provision_agent_durables,
)
from mesh._runtime.endpoints import Request, RequestServer
from mesh._runtime.replays import (
    resolve_replay,
)
from mesh._runtime.replies import (
    is_inbox,
    respond,
)
from mesh._runtime.resilience import (
    RetryBudget,
    TokenBucket,
    redelivery_span,
    retry_transient,
)
from mesh._runtime.runtime import (
    AgentRunner,
)
from mesh._runtime.service_process import (
    Service,
    service_main,
)
from mesh._sdk.agent import (
    Agent,
    HandlerContext,
)
from mesh._support.files import (
    write_atomically,
)
from mesh._support.tasks import (
    stop_task,
)
from mesh._support.text import (
    shown,
)
from mesh._trust.approval_chain import (
    AMOUNT,
    MAX_DELEGATION_DEPTH,
    ActingFor,
    DecisionScope,
    acting_for,
    approver_refusal,
    human_decision_refusal,
    is_delegate,
    own_limit,
    role_asked,
    root_problems,
    widening,
)
from mesh._trust.authorization import (
    signed_actor,
)
from mesh._trust.enrolment import (
    signing_operator,
)
from mesh._trust.facts import (
    Statement,
    authoritative_facts,
    prior_actions,
)
from mesh._trust.identity import (
    SIGNATURE_HEADER,
    SIGNER_HEADER,
    Identity,
    message_digest,
    signed_bytes,
    verify,
    verify_headers,
)
from mesh._trust.key_directory import (
    KeyDirectory,
)
from mesh._trust.onboarding import (
    ONBOARDING_ID,
    connect_as,
    inbox_prefix,
)
from mesh._trust.principals import (
    StaticPrincipal,
    load_principals,
    static_cards,
)
from mesh._trust.registry_client import (
    KEY_PROOFS_HEADER,
    RegistryClient,
    request_with_patience,
)
from mesh.errors import (
    BrokerError,
    CircuitOpen,
    ConcurrencyConflict,
    ConfigurationError,
    CredentialsRevoked,
    MeshError,
    NotAuthorized,
    PermanentError,
    ProvisioningError,
    ReadRefused,
    Refused,
    RegistryRefused,
    ReplayRefused,
    SignatureError,
    StoreRefused,
    TransientError,
)
from mesh.settings import (
    MeshSettings,
)

__all__ = [
    "Agent",
    "AgentRunner",
    "BrokerError",
    "CircuitOpen",
    "ConcurrencyConflict",
    "ConfigurationError",
    "CredentialsRevoked",
    "DeadLetterSink",
    "EventPublisher",
    "HandlerContext",
    "Identity",
    "KEY_PROOFS_HEADER",
    "KeyDirectory",
    "MeshError",
    "MeshSettings",
    "NotAuthorized",
    "ONBOARDING_ID",
    "PermanentError",
    "ProvisioningError",
    "RawMessage",
    "ReadRefused",
    "Refused",
    "RegistryClient",
    "RegistryRefused",
    "ReplayRefused",
    "Request",
    "RequestServer",
    "RetryBudget",
    "SIGNATURE_HEADER",
    "SIGNER_HEADER",
    "Service",
    "SignatureError",
    "Statement",
    "StaticPrincipal",
    "StoreRefused",
    "StoredEvent",
    "StreamReader",
    "TokenBucket",
    "Topology",
    "TransientError",
    "AMOUNT",
    "MAX_DELEGATION_DEPTH",
    "ActingFor",
    "DecisionScope",
    "acting_for",
    "approver_refusal",
    "authoritative_facts",
    "authorization_config",
    "broker_errors",
    "broker_time",
    "client_of",
    "close",
    "connect",
    "connect_as",
    "ensure_key_value",
    "ensure_stream",
    "provision_streams",
    "human_decision_refusal",
    "is_delegate",
    "own_limit",
    "root_problems",
    "widening",
    "inbox_prefix",
    "is_inbox",
    "load_principals",
    "message_digest",
    "on_reconnect",
    "prior_actions",
    "provision_agent_durables",
    "read_case",
    "read_direct",
    "read_raw",
    "read_subject",
    "redelivery_span",
    "reload_server",
    "request_with_patience",
    "resolve_replay",
    "respond",
    "retry_transient",
    "role_asked",
    "run",
    "running_mesh_settings",
    "service_main",
    "session",
    "shown",
    "signed_actor",
    "signed_bytes",
    "signing_operator",
    "static_cards",
    "stop_task",
    "topology_for",
    "verify",
    "verify_headers",
    "write_atomically",
]
