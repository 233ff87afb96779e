"""The catalog: every event type the mesh knows, its current schema version, and the
upcasters that lift older versions to it.

An upcaster is a pure function over the decoded JSON object of one version, returning
the object of the next version. Decoding walks the chain from the stored version to
the current one, so a log written years ago still reads as today's types.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from contracts.envelope import Event
from contracts.events.actions import (
    ActionApproved,
    ActionCompleted,
    ActionDenied,
    ActionFailed,
    ActionRequested,
    ApprovalEscalated,
    ApprovalExpired,
    ApprovalGranted,
    ApprovalRejected,
    ApprovalRequired,
)
from contracts.events.case import (
    CaseClosed,
    CaseEscalated,
    CaseOpened,
    CaseStepCompleted,
    CaseWaiting,
    EvidenceReceived,
    WaitEnded,
)
from contracts.events.operations import (
    CircuitStateChanged,
    LogCheckpointed,
    PolicyBundleActivated,
)
from contracts.events.registry import (
    AgentActivated,
    AgentCardProposed,
    AgentCardUpdated,
    AgentRegistered,
    AgentRevoked,
    AgentSuspended,
    DelegationGranted,
    DelegationRevoked,
)
from contracts.events.timers import TimerCancelled, TimerFired, TimerSet, timer_set_v1_to_v2

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class EventCatalog:
    def __init__(
        self,
        types: Iterable[type[Event]],
        upcasters: Mapping[tuple[str, int], Upcaster] | None = None,
    ) -> None:
        self.types: dict[str, type[Event]] = {}
        for event_type in types:
            name = event_type.event_name()
            if name in self.types:
                raise ValueError(f"event type {name!r} is declared twice")
            self.types[name] = event_type
        # (event_type, from_version) -> function producing from_version + 1
        self.upcasters: dict[tuple[str, int], Upcaster] = dict(upcasters or {})
        for name, version in self.upcasters:
            if name not in self.types:
                raise ValueError(f"upcaster for unknown event type {name!r}")
            if version >= self.current_version(name):
                raise ValueError(f"upcaster {name} v{version} is not older than current")

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __iter__(self) -> Any:
        return iter(self.types.values())

    def type_of(self, name: str) -> type[Event]:
        return self.types[name]

    def current_version(self, name: str) -> int:
        default = self.types[name].__struct_defaults__[
            self.types[name].__struct_fields__.index("schema_version")
        ]
        return int(default)

    def names(self) -> list[str]:
        return sorted(self.types)


CATALOG = EventCatalog(
    [
        CaseOpened,
        EvidenceReceived,
        CaseStepCompleted,
        CaseWaiting,
        WaitEnded,
        CaseEscalated,
        CaseClosed,
        TimerSet,
        TimerCancelled,
        TimerFired,
        ActionRequested,
        ActionApproved,
        ActionDenied,
        ApprovalRequired,
        ApprovalGranted,
        ApprovalRejected,
        ApprovalEscalated,
        ApprovalExpired,
        ActionCompleted,
        ActionFailed,
        AgentRegistered,
        AgentCardUpdated,
        AgentCardProposed,
        AgentActivated,
        AgentSuspended,
        AgentRevoked,
        DelegationGranted,
        DelegationRevoked,
        CircuitStateChanged,
        PolicyBundleActivated,
        LogCheckpointed,
    ],
    upcasters={("timer_set", 1): timer_set_v1_to_v2},
)
