"""The audit bundle: a self-contained, offline-verifiable copy of (part of) the case log.

An auditor needs no NATS and no running service to check one; everything is here:

- `events`: the case log's messages exactly as stored (subject, headers, body bytes,
  stream sequence, broker time), in stream order.
- `checkpoints`: the event store's signed Merkle checkpoints (`log_checkpointed`
  events from the ops stream, also exactly as stored).
- `proofs`: inclusion proofs of each exported event in the newest checkpoint's tree,
  and consistency proofs from each earlier checkpoint to it (RFC 9162).
- `manifest`: the event store's signed statement of which messages the scope holds —
  every (sequence, case, event id, leaf hash, case-chain head, signature, stored time,
  earlier copy of its id) in order, in pages — so a dropped, reordered, altered,
  re-signed or re-timed message is named, not merely noticed.
- `principals`: every key that signed anything here, with its validity, the owner's
  lifecycle, kind and roles (who was a human approver), and the cards it held over
  time with the operator's signature behind each.

Bodies travel base64-encoded: the bytes that were signed, with no re-encoding.
"""

from __future__ import annotations

import base64
from datetime import datetime

import msgspec

from contracts.registry_api import PrincipalKeys

BUNDLE_FORMAT = "agent-mesh-audit-bundle/1"


class StoredMessage(msgspec.Struct, frozen=True, kw_only=True):
    sequence: int
    subject: str
    stored_at: datetime
    headers: dict[str, str]
    body_b64: str

    @property
    def body(self) -> bytes:
        return base64.b64decode(self.body_b64, validate=True)

    @classmethod
    def of(
        cls, sequence: int, subject: str, stored_at: datetime, headers: dict[str, str], body: bytes
    ) -> StoredMessage:
        return cls(
            sequence=sequence,
            subject=subject,
            stored_at=stored_at,
            headers=headers,
            body_b64=base64.b64encode(body).decode(),
        )


class ManifestEntry(msgspec.Struct, frozen=True, array_like=True):
    sequence: int
    case_id: str
    event_id: str | None  # None for a message that could not be read
    leaf_hash: str  # hex
    chain_hash: str  # hex: the case's hash-chain head after this message
    signature: str | None = None  # the Mesh-Signature the message was stored with
    # When the broker stored it: key validity, suspension and revocation are judged by
    # this time, so it is under the seal too.
    stored_at: datetime | None = None
    # An earlier message (perhaps of another case) that carried the same event id.
    duplicate_of: int | None = None


class AuditPrincipal(msgspec.Struct, frozen=True, kw_only=True):
    keys: PrincipalKeys
    kind: str  # agent / human / service
    roles: list[str] = msgspec.field(default_factory=list)


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """One page of the event store's sealed record, signed by it (`Mesh-Signature`
    over `subject + "\n" + body`). The pages of a bundle tile the sequences
    `first_sequence..last_sequence` from 1 to `tree_size` without gaps, so a page
    cannot be dropped unnoticed either."""

    store: str  # the event store's principal id
    stream: str
    scope: str  # a case id, or "*" for the whole log
    tree_size: int  # the log size the seal speaks for
    sealed_at: datetime
    first_sequence: int
    last_sequence: int
    entries: list[ManifestEntry]
    # On the first page: every principal's keys, lifecycle, kind and roles as the
    # registry gave them at sealing time — what signatures and approvals are judged by.
    principals: list[AuditPrincipal] = msgspec.field(default_factory=list)


class Proofs(msgspec.Struct, frozen=True, kw_only=True):
    tree_size: int  # the newest checkpoint's
    inclusion: dict[str, list[str]] = msgspec.field(default_factory=dict)  # sequence -> path
    consistency: dict[str, list[str]] = msgspec.field(default_factory=dict)  # size -> proof


class SignedDocument(msgspec.Struct, frozen=True, kw_only=True):
    subject: str
    headers: dict[str, str]
    body_b64: str

    @property
    def body(self) -> bytes:
        return base64.b64decode(self.body_b64, validate=True)


class AuditBundle(msgspec.Struct, frozen=True, kw_only=True):
    format: str = BUNDLE_FORMAT
    subject_root: str
    stream: str
    scope: str  # a case id, or "*"
    exported_at: datetime
    events: list[StoredMessage]
    checkpoints: list[StoredMessage]
    proofs: Proofs
    manifest: list[SignedDocument]  # pages
    principals: list[AuditPrincipal]
