"""The mesh's one error tree. Each error says whether retrying can help (`retryable`),
carries its data as attributes and builds its message in `__init__`.

    MeshError (contracts.errors)         the one root
    ├── ContractError (contracts.errors, also ValueError)  bad bytes, type or subject
    │   ├── MalformedEvent
    │   │   ├── UnknownEventType
    │   │   └── UnsupportedSchemaVersion
    │   └── InvalidSubject
    ├── ConfigurationError               settings or declarations that cannot work
    │   ├── AlreadyRunning               a mesh already runs on this data directory
    │   └── PolicyBundleInvalid          (policy) a bundle that does not validate
    ├── EmbeddedServerError              the embedded nats-server would not start
    ├── BrokerError (retryable)          NATS unreachable, timed out, or refused a request
    │   └── PublishFailed                a JetStream publish got no (positive) ack
    ├── ConcurrencyConflict (retryable)  the case moved on since it was read
    ├── ProvisioningError                a stream/consumer/bucket could not be created
    │   └── ConfigDrift                  the server's config differs from the declaration
    ├── PermissionDenied                 the broker refused a subject to this principal
    ├── CredentialsRevoked               the broker stopped accepting an agent's key
    ├── SignatureError                   an event's signature is missing, wrong, or its
    │                                    signer is not (or no longer) allowed to sign
    ├── NotAuthorized                    no valid approving chain before a side effect
    ├── CircuitOpen (retryable)          a breaker refuses calls to a failing dependency
    ├── Refused                          a service's definite no to a request, with why
    │   ├── RegistryRefused              the registry said no (retry_after: it is busy)
    │   ├── ReadRefused                  the case reader said no
    │   ├── ReplayRefused                a replay that resolves to no message of the log
    │   ├── StoreRefused                 (event store client) the event store said no
    │   └── ApprovalRefused              (policy) an approval that cannot count
    ├── ProjectionConflict (retryable)   (event store) the views moved under a projector
    ├── StoreUnavailable (retryable)     (event store) the view database failed
    └── HandlerError                     raised by agent code to steer settlement
        ├── TransientError (retryable)   nak with backoff; dead-letter when exhausted
        │   └── GatewayUnavailable       (claims) the payment gateway did not answer
        └── PermanentError               dead-letter now, never retry
            └── GatewayRefused           (claims) the gateway said no

Services answer a request they refuse with `Refused(reason)`; the request server
(mesh/_runtime/endpoints.py) turns it into the service's negative reply. Lower-layer
exceptions (nats-py, OS, SQL drivers) are mapped to these at one place each with
`raise Specific(...) from exc`.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.errors import MeshError


class ConfigurationError(MeshError):
    pass


class AlreadyRunning(ConfigurationError):
    """Another `mesh up` holds this data directory's lock."""


class EmbeddedServerError(MeshError):
    def __init__(self, reason: str, log_tail: str = "") -> None:
        self.reason = reason
        self.log_tail = log_tail
        detail = f"\n--- nats-server log tail ---\n{log_tail}" if log_tail else ""
        super().__init__(f"embedded nats-server: {reason}{detail}")


class BrokerError(MeshError):
    retryable = True

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        self.reason = reason
        super().__init__(f"{operation}: {reason}")


class PublishFailed(BrokerError):
    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        super().__init__(f"publish to {subject}", reason)


class ConcurrencyConflict(MeshError):
    """Another writer appended to the case after we read it: re-read and decide again."""

    retryable = True

    def __init__(self, key: str, expected_sequence: int, detail: str) -> None:
        self.key = key  # the case id (or the agent id, for registry history)
        self.expected_sequence = expected_sequence
        super().__init__(f"{key} changed since sequence {expected_sequence}: {detail}")


class ProvisioningError(MeshError):
    def __init__(self, resource: str, reason: str) -> None:
        self.resource = resource
        self.reason = reason
        super().__init__(f"{resource}: {reason}")


class ConfigDrift(ProvisioningError):
    def __init__(self, resource: str, differences: Sequence[str]) -> None:
        self.differences = list(differences)
        super().__init__(resource, "config drifted from declaration: " + "; ".join(differences))


class PermissionDenied(MeshError):
    """The broker's permissions (generated from the agent's card) refuse this subject.
    Permanent: retrying cannot help until the card changes."""

    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"broker refused {subject}: {reason}")


class SignatureError(MeshError):
    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"signature check failed on {subject}: {reason}")


class CredentialsRevoked(MeshError):
    """The broker stopped accepting the agent's key: it was suspended or revoked."""

    def __init__(self, agent_id: str) -> None:
        self.agent_id = agent_id
        super().__init__(
            f"agent {agent_id}: the broker refused our credentials (suspended or revoked?)"
        )


class NotAuthorized(MeshError):
    """No valid approving chain for the request: the side effect must not run."""

    def __init__(self, request_id: str, reason: str) -> None:
        self.request_id = request_id
        self.reason = reason
        super().__init__(f"request {request_id} is not authorized: {reason}")


class Refused(MeshError):
    """A definite no to a request, and why. Permanent: the same request is refused
    again — unless `retry_after` says the refuser is only busy."""

    def __init__(self, reason: str, *, message: str = "", retry_after: float | None = None):
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(message or reason)


class RegistryRefused(Refused):
    """The registry answered, and said no (a forged or invalid card, an unknown agent…)."""

    def __init__(self, operation: str, reason: str, retry_after: float | None = None) -> None:
        self.operation = operation
        super().__init__(
            reason, message=f"registry refused {operation}: {reason}", retry_after=retry_after
        )


class ReadRefused(Refused):
    """The reader said no: the case is not one the agent works on, or the type is not
    on its card. Permanent for this request."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        super().__init__(reason, message=f"reader refused {operation}: {reason}")


class ReplayRefused(Refused):
    """A replay that does not resolve to a message of the case log for this consumer."""

    def __init__(self, dead_letter_sequence: int, reason: str) -> None:
        self.dead_letter_sequence = dead_letter_sequence
        super().__init__(
            reason, message=f"replay of dead letter {dead_letter_sequence} refused: {reason}"
        )


class StoreRefused(Refused):
    """The event store answered, and said no."""

    def __init__(self, operation: str, reason: str) -> None:
        self.operation = operation
        super().__init__(reason, message=f"event store refused {operation}: {reason}")


class CircuitOpen(MeshError):
    retryable = True

    def __init__(self, breaker: str, retry_after: float) -> None:
        self.breaker = breaker
        self.retry_after = retry_after
        super().__init__(f"circuit {breaker!r} is open; retry in {retry_after:.1f}s")


class HandlerError(MeshError):
    pass


class TransientError(HandlerError):
    """Raise from a handler when trying again later may succeed."""

    retryable = True


class PermanentError(HandlerError):
    """Raise from a handler when the input can never succeed: it is dead-lettered."""


def is_retryable(exc: BaseException) -> bool:
    return bool(getattr(exc, "retryable", False))


__all__ = [
    "AlreadyRunning",
    "BrokerError",
    "CircuitOpen",
    "ConcurrencyConflict",
    "ConfigDrift",
    "ConfigurationError",
    "CredentialsRevoked",
    "EmbeddedServerError",
    "HandlerError",
    "MeshError",
    "NotAuthorized",
    "PermanentError",
    "PermissionDenied",
    "ProvisioningError",
    "PublishFailed",
    "ReadRefused",
    "Refused",
    "RegistryRefused",
    "ReplayRefused",
    "SignatureError",
    "StoreRefused",
    "TransientError",
    "is_retryable",
]
