"""The mesh's one error tree. Each error says whether retrying can help (`retryable`).

    MeshError
    ├── ConfigurationError           settings or declarations that cannot work
    ├── EmbeddedServerError          the embedded nats-server would not start
    ├── BrokerError (retryable)      NATS unreachable, timed out, or refused a request
    │   └── PublishFailed            a JetStream publish got no (positive) ack
    ├── ConcurrencyConflict (retryable)  the case moved on since it was read
    ├── ProvisioningError            a stream/consumer/bucket could not be created
    │   └── ConfigDrift              the server's config differs from the declaration
    ├── PermissionDenied             the broker refused a subject to this principal
    ├── SignatureError               an event's signature is missing, wrong, or its
    │                                signer is not (or no longer) allowed to sign
    ├── CircuitOpen (retryable)      a breaker refuses calls to a failing dependency
    └── HandlerError                 raised by agent code to steer settlement
        ├── TransientError (retryable)  nak with backoff; dead-letter when exhausted
        └── PermanentError              dead-letter now, never retry

Contract errors (`contracts.errors.ContractError`: malformed bytes, unknown types,
bad subjects) are permanent and are dead-lettered by the consumer loop.
Lower-layer exceptions (nats-py, OS) are mapped to these at one place each with
`raise Specific(...) from exc`.
"""

from __future__ import annotations

from collections.abc import Sequence


class MeshError(Exception):
    retryable: bool = False


class ConfigurationError(MeshError):
    pass


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
