"""The policy service's re-reads of the case log: a decision rests on what the log holds
(read afresh for every request), never on the requester's word or a cache.

What the history means (which copy counts, what the policy service already answered,
which facts are authoritative) is decided in `evidence.py`; this module only reads it,
with a key directory at least as new as the newest event read.
"""

from __future__ import annotations

from nats.js.client import JetStreamContext

from contracts.events.actions import ActionApproved, ActionDenied, ActionRequested
from mesh.service import (
    HandlerContext,
    KeyDirectory,
    PermanentError,
    StoredEvent,
    Topology,
    read_case,
)
from services.policy.domain import CaseClosure
from services.policy.evidence import (
    CaseEvidence,
    answers,
    case_evidence,
    closure_before,
    first_copy,
)


class CaseLog:
    def __init__(
        self, js: JetStreamContext, topology: Topology, keys: KeyDirectory, service_id: str
    ) -> None:
        self.js = js
        self.topology = topology
        self.keys = keys
        self.service_id = service_id  # whose answers count as the policy service's

    async def evidence_for(
        self, event: ActionRequested, ctx: HandlerContext, considered: frozenset[str]
    ) -> CaseEvidence | None:
        """The case as the log establishes it for deciding `event`, or None when the
        policy service has answered this request already. A second event stored under
        the request's id is not decided (PermanentError)."""
        assert event.case_id is not None
        assert ctx.message is not None
        history = await self._read(event.case_id, at_least=ctx.stream_sequence)
        first = first_copy(history, event.event_id)
        if first is not None and first.sequence != ctx.stream_sequence:
            # A copy (replayed under a fresh Nats-Msg-Id) or another event reusing the
            # id: one request id is judged once, on the bytes first stored under it.
            raise PermanentError(
                f"request {event.event_id} was first stored at #{first.sequence}; "
                f"#{ctx.stream_sequence} is a second event under its id and is not decided"
            )
        if answers(history, event.event_id, self.service_id, self.keys):
            return None  # redelivered after we answered: never decide (or reopen) twice
        return case_evidence(history, self.keys, request=ctx.message, considered=considered)

    async def closure_before(
        self, case_id: str, sequence: int, *, at_least: int = 0
    ) -> CaseClosure | None:
        """How the case was closed before stream sequence `sequence`, if it was."""
        return closure_before(await self._read(case_id, at_least), self.keys, sequence)

    async def decided_with(
        self, case_id: str, request_id: str, approval_id: str, *, at_least: int = 0
    ) -> bool:
        """Has the policy service already answered this request with this approval?"""
        history = await self._read(case_id, at_least)  # a directory as recent as the log
        return any(
            isinstance(answer, ActionApproved | ActionDenied)
            and answer.payload.approval_id == approval_id
            for answer in answers(history, request_id, self.service_id, self.keys)
        )

    async def _read(self, case_id: str, at_least: int = 0) -> list[StoredEvent]:
        """`at_least`: the sequence of the event being handled when it is of this case
        — a replica behind it could hide an answer already given (see `read_direct`)."""
        history = await read_case(self.js, self.topology, case_id, at_least=at_least)
        if history:
            await self.keys.ensure_current(max(s.stored_at for s in history))
        return history
