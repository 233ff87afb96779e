"""Errors raised while reading or building contract data.

    ContractError                 (ValueError: the input is wrong, retrying cannot help)
    ├── MalformedEvent            bytes that are not a valid event body
    │   ├── UnknownEventType      a well-formed body whose event_type no catalog knows
    │   └── UnsupportedSchemaVersion  a version newer than this code, or with no upcaster
    └── InvalidSubject            a subject or subject token that breaks the naming rules

Every one of these is permanent: the runtime dead-letters the message with the
error's text as the reason rather than retrying it.
"""

from __future__ import annotations


class ContractError(ValueError):
    """Root of contract errors; never retryable."""

    retryable = False


class MalformedEvent(ContractError):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"malformed event: {reason}")


class UnknownEventType(MalformedEvent):
    def __init__(self, event_type: str) -> None:
        self.event_type = event_type
        super().__init__(f"unknown event_type {event_type!r}")


class UnsupportedSchemaVersion(MalformedEvent):
    def __init__(self, event_type: str, version: int, current: int) -> None:
        self.event_type = event_type
        self.version = version
        self.current = current
        super().__init__(
            f"{event_type} schema_version {version} is not readable here "
            f"(current is {current}; older versions need an upcaster)"
        )


class InvalidSubject(ContractError):
    def __init__(self, subject: str, reason: str) -> None:
        self.subject = subject
        self.reason = reason
        super().__init__(f"invalid subject {subject!r}: {reason}")
