"""Operational facts that are not about one case, such as a circuit breaker's state."""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.envelope import Event

BreakerState = Literal["closed", "open", "half_open"]


class CircuitStateChangedPayload(msgspec.Struct, frozen=True, kw_only=True):
    breaker: str  # a subject token: which dependency the breaker guards
    previous: BreakerState
    current: BreakerState
    reason: str
    consecutive_failures: int = 0


class CircuitStateChanged(Event, frozen=True, kw_only=True, tag="circuit_state_changed"):
    family = "ops"
    payload: CircuitStateChangedPayload

    def subject_key(self) -> str:
        return self.payload.breaker


class PolicyBundleActivatedPayload(msgspec.Struct, frozen=True, kw_only=True):
    """Which policy was in force from when: the log answers "what did policy v7 say"."""

    bundle_hash: str
    source: str  # where it was loaded from
    policy_ids: list[str]
    previous_hash: str | None = None


class PolicyBundleActivated(Event, frozen=True, kw_only=True, tag="policy_bundle_activated"):
    family = "ops"
    payload: PolicyBundleActivatedPayload

    def subject_key(self) -> str:
        return "policy"


class LogCheckpointedPayload(msgspec.Struct, frozen=True, kw_only=True):
    """The event store's signed commitment to the case log as it stood: the RFC 9162
    Merkle root over the first `tree_size` messages of `stream` (leaf i is the stored
    `subject + "\\n" + body` of stream sequence i + 1). Published to the append-only ops
    stream, so a later copy of the log can be proved to extend it unaltered."""

    stream: str
    tree_size: int
    root_hash: str  # hex


class LogCheckpointed(Event, frozen=True, kw_only=True, tag="log_checkpointed"):
    family = "ops"
    payload: LogCheckpointedPayload

    def subject_key(self) -> str:
        return "eventstore"
