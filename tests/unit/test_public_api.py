"""The public surfaces are deliberate: adding or removing a name is a visible change.

Three surfaces: `contracts` (the wire), `mesh` (agent authors, with its test kit
`mesh.testing`), `mesh.service` (service authors). `make lint` runs this file, and mypy
refuses a name a surface does not list.
"""

from __future__ import annotations

import contracts
import mesh
import mesh.service
import mesh.testing

CONTRACTS = [
    "ActionApproved",
    "ActionCompleted",
    "ActionCompletedPayload",
    "ActionDecisionPayload",
    "ActionDenied",
    "ActionFailed",
    "ActionFailedPayload",
    "ActionGrant",
    "ActionRequested",
    "ActionRequestedPayload",
    "AgentActivated",
    "AgentCard",
    "AgentCardUpdated",
    "AgentCardUpdatedPayload",
    "AgentKey",
    "AgentRecord",
    "AgentRegistered",
    "AgentRegisteredPayload",
    "AgentRevoked",
    "AgentStatusChangePayload",
    "AgentSuspended",
    "ApprovalEscalated",
    "ApprovalExpired",
    "ApprovalGranted",
    "ApprovalGrantedPayload",
    "ApprovalRejected",
    "ApprovalRejectedPayload",
    "ApprovalRequired",
    "ApprovalRequiredPayload",
    "ApprovalTimedOutPayload",
    "CATALOG",
    "CaseClosed",
    "CaseClosedPayload",
    "CaseEscalated",
    "CaseEscalatedPayload",
    "CaseOpened",
    "CaseOpenedPayload",
    "CaseStepCompleted",
    "CaseStepCompletedPayload",
    "CircuitStateChanged",
    "CircuitStateChangedPayload",
    "ContractError",
    "DecisionProvenance",
    "Event",
    "EventCatalog",
    "EventDecoder",
    "InvalidSubject",
    "LogCheckpointed",
    "LogCheckpointedPayload",
    "MalformedEvent",
    "ParsedSubject",
    "Period",
    "PolicyBundleActivated",
    "PolicyBundleActivatedPayload",
    "PolicyReference",
    "Subjects",
    "UnknownEventType",
    "UnsupportedSchemaVersion",
    "decode",
    "derived_event_id",
    "encode",
    "new_event_id",
    "utc_now",
]

MESH = [
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

SERVICE = [
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
    "human_decision_refusal",
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
    "verify",
    "verify_headers",
    "write_atomically",
]


def test_contracts_public_surface() -> None:
    assert sorted(contracts.__all__) == CONTRACTS
    assert all(hasattr(contracts, name) for name in CONTRACTS)


def test_mesh_public_surface() -> None:
    assert sorted(mesh.__all__) == MESH
    assert all(hasattr(mesh, name) for name in MESH)


def test_service_public_surface() -> None:
    assert sorted(mesh.service.__all__) == SERVICE
    assert all(hasattr(mesh.service, name) for name in SERVICE)


def test_agent_test_kit_public_surface() -> None:
    assert sorted(mesh.testing.__all__) == ["MeshTestKit", "eventually", "unique_root"]
