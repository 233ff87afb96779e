"""The public surface is deliberate: adding or removing a name is a visible change."""

from __future__ import annotations

import contracts
import mesh

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
    "AgentCard",
    "AgentCardUpdated",
    "AgentCardUpdatedPayload",
    "AgentKey",
    "AgentRegistered",
    "AgentRegisteredPayload",
    "AgentRevoked",
    "AgentStatusChangePayload",
    "AgentSuspended",
    "ApprovalGranted",
    "ApprovalGrantedPayload",
    "ApprovalRejected",
    "ApprovalRejectedPayload",
    "ApprovalRequired",
    "ApprovalRequiredPayload",
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
    "MalformedEvent",
    "ParsedSubject",
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
    "MeshError",
    "MeshSettings",
    "Outcome",
    "PermanentError",
    "ProvisionReport",
    "ProvisioningError",
    "PublishFailed",
    "Receipt",
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


def test_contracts_public_surface() -> None:
    assert sorted(contracts.__all__) == CONTRACTS
    assert all(hasattr(contracts, name) for name in CONTRACTS)


def test_mesh_public_surface() -> None:
    assert sorted(mesh.__all__) == MESH
    assert all(hasattr(mesh, name) for name in MESH)
