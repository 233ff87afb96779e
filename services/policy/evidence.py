"""What the case log says for a decision: read once per request, never taken from the
requester.

- the request must be the first event stored under its id in the case (a later copy,
  replayed under a fresh Nats-Msg-Id or forged with a reused id, is not decided);
- the case facts come from authoritative statements only (mesh._trust.facts): the claim as
  the ingress opened the case with it, and completed steps, each signed with a key and
  a card valid when stored by the principal whose card names the fact — never the
  requester's own word, and only what was stored before the request, so a replay of
  the log reaches the same decision;
- `prior_actions`: the action types already requested in this case, whatever became
  of those requests, so a policy can say "one payout per claim" however often an
  upstream step fires again or a refused request comes back smaller;
- `closed`: the case's closing, if the log held one (verified) before the request:
  nothing is done in a closed case, whoever asks and whatever the facts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from contracts.events.actions import (
    ActionApproved,
    ActionDenied,
    ApprovalExpired,
    ApprovalRequired,
    FactSource,
)
from contracts.events.case import CaseClosed, CaseOpened
from mesh.service import (
    KeyDirectory,
    SignatureError,
    Statement,
    StoredEvent,
    authoritative_facts,
    prior_actions,
    signed_actor,
)
from services.policy.domain import CaseClosure

log = logging.getLogger(__name__)

Answer = ActionApproved | ActionDenied | ApprovalRequired | ApprovalExpired


# A case attribute the policy service derives itself (from its own decisions), not a
# fact anyone states; a bundle whose schema declares it gets it.
PRIOR_ACTIONS = "prior_actions"


@dataclass(frozen=True)
class CaseEvidence:
    facts: dict[str, FactSource]
    prior_actions: list[str]
    closed: CaseClosure | None = None
    kind: str | None = None  # the case's kind, from its (verified) opening

    def attributes(self, declared: frozenset[str]) -> dict[str, Any]:
        """The case as the policy's `resource` sees it (only what its schema declares)."""
        attributes: dict[str, Any] = {name: source.value for name, source in self.facts.items()}
        if PRIOR_ACTIONS in declared:
            attributes[PRIOR_ACTIONS] = self.prior_actions
        return attributes


def first_copy(history: list[StoredEvent], event_id: str) -> StoredEvent | None:
    """The first event stored under `event_id` in the case."""
    return next((s for s in history if s.event.event_id == event_id), None)


def answers(
    history: list[StoredEvent], request_id: str, service_id: str, keys: KeyDirectory
) -> list[Answer]:
    """The policy service's decisions on one request, as the log holds them (only those
    that verify: a forged "answer" must not make the service skip a request)."""
    return [
        stored.event
        for stored in history
        if isinstance(stored.event, Answer)
        and stored.event.actor == service_id
        and stored.event.payload.request_id == request_id
        and _verified(stored, keys)
    ]


def case_evidence(
    history: list[StoredEvent],
    keys: KeyDirectory,
    *,
    request: StoredEvent,
    considered: frozenset[str],
) -> CaseEvidence:
    # Only what its author really signed, with a key and a card valid when stored.
    earlier = [s for s in history if s.sequence < request.sequence and _verified(s, keys)]
    statements = [
        statement
        for stored in earlier
        if (statement := Statement.of(stored.sequence, stored.stored_at, stored.event))
    ]
    facts = authoritative_facts(
        statements,
        keys.authoritative,
        considered=considered,
        excluded_actor=request.event.actor,
    )
    requested = [(stored.sequence, stored.event) for stored in earlier]
    opening = next((s.event for s in earlier if isinstance(s.event, CaseOpened)), None)
    return CaseEvidence(
        facts=facts,
        prior_actions=prior_actions(requested, request.sequence),
        closed=closure(earlier),
        kind=opening.payload.kind if opening is not None else None,
    )


def closure_before(
    history: list[StoredEvent], keys: KeyDirectory, sequence: int
) -> CaseClosure | None:
    """The first verified case_closed stored before stream sequence `sequence`."""
    return closure([s for s in history if s.sequence < sequence and _verified(s, keys)])


def closure(earlier: list[StoredEvent]) -> CaseClosure | None:
    """The first verified case_closed among `earlier` (the case before a request)."""
    for stored in earlier:
        if isinstance(stored.event, CaseClosed):
            event = stored.event
            return CaseClosure(stored.sequence, event.actor, event.payload.outcome)
    return None


def _verified(stored: StoredEvent, keys: KeyDirectory) -> bool:
    try:
        signed_actor(stored, keys)
    except SignatureError as exc:
        log.warning(
            "case %s: #%d does not count: %s", stored.event.case_id, stored.sequence, exc.reason
        )
        return False
    return True
