"""The root of every error of ours, and the errors of reading or building contract data.

    MeshError                     the root (drawn whole in mesh/errors.py)
    └── ContractError             (also a ValueError: the input is wrong, never retryable)
        ├── MalformedEvent        bytes that are not a valid event body
        │   ├── UnknownEventType  a well-formed body whose event_type no catalog knows
        │   └── UnsupportedSchemaVersion  newer than this code, or with no upcaster
        └── InvalidSubject        a subject or subject token that breaks the naming rules

Every contract error is permanent: the runtime dead-letters the message with the
error's text as the reason rather than retrying it. `MeshError` is defined here, the
bottom layer, so that contract errors share the root without contracts importing mesh.
"""

from __future__ import annotations


class MeshError(Exception):
    """The root of every error the mesh raises. `retryable` says whether trying the same
    thing again can help."""

    retryable: bool = False


class ContractError(MeshError, ValueError):
    """Root of contract errors; never retryable. Also a ValueError: msgspec turns a
    ValueError raised while validating a struct into its own ValidationError, and
    callers that guard a parse with `except ValueError` keep working."""


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
