"""Verifying an audit bundle, offline: no NATS, no database, no running service.

Four families of checks, each violation naming the message or principal it is about:

1. **signatures** — every message verifies against its signer's key, and that key
   belonged to the actor, was valid (not revoked, not suspended), and the actor's card
   then produced this type of event, at the time the store sealed as its storage time
   (`messages`; whom to trust at all: `principals`).
2. **integrity** — the event store's signed manifest pages tile the log and name each
   message (sequence, event id, leaf hash, per-case chain head, signature, stored
   time): a message that is missing, extra, out of place, altered, re-signed or
   re-timed is named (`manifest`, `seal`). The signed Merkle checkpoints (RFC 9162)
   must agree: the whole log's roots are recomputed at every checkpoint, or, for one
   case, each message's inclusion proof is checked against the newest root and every
   earlier checkpoint is proved a prefix of it (`checkpoints`, `tree`). One event id
   names one event: a second message under an id, in any case, is named (`event_ids`).
3. **policy** — decisions cite the exact request and re-derive from the log (facts
   from their authorities only); every executed action was approved before, by a human
   of the role asked where policy said so; one obligation is executed once
   (`case_policy`, and the families it runs: `statements`, `decisions`, `approvals`,
   `case_flow`).
4. **enrolment** — nobody gained scope, kind or roles without an operator's signature
   (`cards`).

`verifier.verify_bundle` runs them in turn and returns the `report.Report`.
"""

from services.eventstore.audit.report import Report, Violation
from services.eventstore.audit.verifier import verify_bundle

__all__ = ["Report", "Violation", "verify_bundle"]
