"""The mesh runtime: what every service and agent uses."""

from mesh.agent import Agent, HandlerContext
from mesh.connection import connect
from mesh.dead_letters import DeadLetter, DeadLetterKind, DeadLetterSink
from mesh.embedded import EmbeddedNats
from mesh.errors import (
    BrokerError,
    CircuitOpen,
    ConcurrencyConflict,
    ConfigDrift,
    ConfigurationError,
    EmbeddedServerError,
    HandlerError,
    MeshError,
    PermanentError,
    PermissionDenied,
    ProvisioningError,
    PublishFailed,
    SignatureError,
    TransientError,
)
from mesh.identity import Identity, verify, verify_headers
from mesh.key_directory import KeyDirectory
from mesh.provisioning import (
    Outcome,
    ProvisionReport,
    ensure_consumer,
    ensure_key_value,
    ensure_stream,
)
from mesh.publisher import EventPublisher, Receipt
from mesh.reading import StoredEvent, read_case
from mesh.registry_client import RegistryClient, RegistryRefused
from mesh.resilience import CircuitBreaker, retry_transient
from mesh.runtime import AgentRunner
from mesh.settings import MeshSettings
from mesh.topology import Topology

__all__ = [
    "Agent",
    "AgentRunner",
    "BrokerError",
    "CircuitBreaker",
    "CircuitOpen",
    "ConcurrencyConflict",
    "ConfigDrift",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterKind",
    "DeadLetterSink",
    "EmbeddedNats",
    "EmbeddedServerError",
    "EventPublisher",
    "HandlerContext",
    "HandlerError",
    "Identity",
    "KeyDirectory",
    "MeshError",
    "MeshSettings",
    "Outcome",
    "PermanentError",
    "PermissionDenied",
    "ProvisionReport",
    "ProvisioningError",
    "PublishFailed",
    "Receipt",
    "RegistryClient",
    "RegistryRefused",
    "SignatureError",
    "StoredEvent",
    "Topology",
    "TransientError",
    "connect",
    "ensure_consumer",
    "ensure_key_value",
    "ensure_stream",
    "read_case",
    "retry_transient",
    "verify",
    "verify_headers",
]
