"""Verifying an audit bundle, offline: no NATS, no database, no running service.

Four families of checks, each violation naming the message or principal it is about:

1. **signatures** — every message verifies against its signer's key, and that key
   belonged to the actor, was valid (not revoked, not suspended), and the actor's card
   then produced this type of event, at the time the store sealed as its storage time.
2. **integrity** — the event store's signed manifest pages tile the log and name each
   message (sequence, event id, leaf hash, per-case chain head, signature, stored
   time): a message that is missing, extra, out of place, altered, re-signed or
   re-timed is named. The signed Merkle checkpoints (RFC 9162) must agree: the whole
   log's roots are recomputed at every checkpoint, or, for one case, each message's
   inclusion proof is checked against the newest root and every earlier checkpoint is
   proved a prefix of it. One event id names one event: a second message under an id,
   in any case, is named.
3. **policy** — decisions cite the exact request and re-derive from the log (facts
   from their authorities only); every executed action was approved before, by a human
   of the role asked where policy said so; one obligation is executed once
   (`audit_policy`).
4. **enrolment** — nobody gained scope, kind or roles without an operator's signature
   (`audit_cards`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from contracts.audit_bundle import (
    AuditBundle,
    AuditPrincipal,
    Manifest,
    ManifestEntry,
    SignedDocument,
)
from contracts.codec import decode
from contracts.errors import ContractError
from contracts.events.operations import LogCheckpointed
from contracts.subjects import Subjects
from mesh.service import SIGNATURE_HEADER, KeyDirectory, SignatureError, verify_headers
from services.eventstore.audit_cards import card_findings
from services.eventstore.audit_policy import CasePolicyAudit
from services.eventstore.checking import MessageChecker
from services.eventstore.domain import LogRecord
from services.eventstore.merkle import (
    CHAIN_START,
    MerkleFrontier,
    chain_hash,
    verify_consistency,
    verify_inclusion,
)


@dataclass(frozen=True)
class Violation:
    check: str  # signature / integrity / policy
    where: str  # which message: sequence, event id, type, case
    problem: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.problem}"


@dataclass
class Report:
    scope: str
    events: int = 0
    cases: int = 0
    checkpoints: int = 0
    tree_size: int = 0
    violations: list[Violation] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


def _where(record: LogRecord) -> str:
    if record.event is None:
        return f"sequence {record.sequence} (unreadable, on {record.subject})"
    return (
        f"sequence {record.sequence} (event {record.event.event_id}, "
        f"{record.event.event_name()} of case {record.case_id} by {record.event.actor})"
    )


def _entry_where(entry: ManifestEntry) -> str:
    return f"sequence {entry.sequence} (event {entry.event_id} of case {entry.case_id})"


class BundleVerifier:
    def __init__(self, bundle: AuditBundle, store_key: str | None = None) -> None:
        self.bundle = bundle
        self.store_key = store_key  # pin the event store's key instead of trusting the bundle's
        self.keys = KeyDirectory()
        self.principals: dict[str, AuditPrincipal] = {}
        self.report = Report(scope=bundle.scope)

    def violation(self, check: str, where: str, problem: str) -> None:
        self.report.violations.append(Violation(check, where, problem))

    def verify(self) -> Report:
        entries, tree_size = self._manifest()
        records = self._signatures({e.sequence: e.stored_at for e in entries if e.stored_at})
        roots = self._checkpoints()
        self.report.tree_size = tree_size
        self._against_manifest(records, entries, tree_size)
        self._merkle(records, roots, tree_size)
        self._duplicates(records, entries)
        self._policy(records)
        self._cards()
        self.report.events = len(records)
        self.report.cases = len({r.case_id for r in records})
        return self.report

    # ------------------------------------------------------------------ signatures

    def _signatures(self, sealed_times: dict[int, datetime]) -> list[LogRecord]:
        """Each message checked against the keys and cards valid when the store sealed
        it as stored: a message's own `stored_at` is under no signature."""
        checker = MessageChecker(Subjects(self.bundle.subject_root), self.keys)
        records: list[LogRecord] = []
        previous = 0
        for message in self.bundle.events:
            try:
                body = message.body
            except ValueError:
                self.violation("integrity", f"sequence {message.sequence}", "body is not base64")
                continue
            sealed = sealed_times.get(message.sequence)
            record = checker.check(
                message.sequence,
                message.subject,
                body,
                message.headers,
                sealed or message.stored_at,
            )
            if sealed is not None and sealed != message.stored_at:
                self.violation(
                    "integrity",
                    _where(record),
                    f"stored at {message.stored_at.isoformat()} says the bundle, but the seal "
                    f"says {sealed.isoformat()}: its time was moved",
                )
            if record.problem is not None:
                self.violation("signature", _where(record), record.problem)
            if message.sequence <= previous:
                self.violation(
                    "integrity",
                    _where(record),
                    f"out of order: comes after sequence {previous} in the bundle",
                )
            previous = max(previous, message.sequence)
            records.append(record)
        return records

    def _signed_by_store(
        self, subject: str, body: bytes, headers: dict[str, str], actor: str, at: datetime
    ) -> str | None:
        """None if the store signed it with a key valid at `at`; else why not."""
        try:
            signer = verify_headers(subject, body, headers)
            self.keys.check(signer, actor, at, subject)
        except SignatureError as exc:
            return exc.reason
        if self.store_key is not None and signer != self.store_key:
            return f"signed by {signer}, not by the pinned event store key {self.store_key}"
        kind = self.principals[actor].kind if actor in self.principals else None
        if kind != "service":
            return f"signed by {actor}, which is not a mesh service"
        return None

    # ------------------------------------------------------------------ checkpoints

    def _checkpoints(self) -> dict[int, bytes]:
        roots: dict[int, bytes] = {}
        for message in self.bundle.checkpoints:
            where = f"checkpoint message {message.sequence} of the ops stream"
            try:
                body = message.body
                event = decode(body)
            except (ValueError, ContractError) as exc:
                self.violation("integrity", where, f"unreadable: {exc}")
                continue
            if not isinstance(event, LogCheckpointed):
                self.violation("integrity", where, f"is a {event.event_name()}, not a checkpoint")
                continue
            where = f"checkpoint of tree size {event.payload.tree_size}"
            problem = self._signed_by_store(
                message.subject, body, message.headers, event.actor, message.stored_at
            )
            if problem is not None:
                self.violation("signature", where, problem)
                continue
            if event.payload.stream != self.bundle.stream:
                self.violation("integrity", where, f"is about stream {event.payload.stream}")
                continue
            roots[event.payload.tree_size] = bytes.fromhex(event.payload.root_hash)
        self.report.checkpoints = len(roots)
        return roots

    # ------------------------------------------------------------------ manifest

    def _manifest(self) -> tuple[list[ManifestEntry], int]:
        decoded: list[tuple[int, SignedDocument, bytes, Manifest]] = []
        for index, document in enumerate(self.bundle.manifest):
            try:
                body = document.body
                decoded.append((index, document, body, msgspec.json.decode(body, type=Manifest)))
            except (ValueError, msgspec.DecodeError) as exc:
                self.violation("integrity", f"manifest page {index + 1}", f"unreadable: {exc}")
        self._load_principals([page for *_, page in decoded])
        pages: list[Manifest] = []
        for index, document, body, page in decoded:
            problem = self._signed_by_store(
                document.subject, body, document.headers, page.store, page.sealed_at
            )
            if problem is not None:
                self.violation("signature", f"manifest page {index + 1}", problem)
            else:
                pages.append(page)
        if not pages:
            self.violation("integrity", "manifest", "no valid manifest page: nothing is sealed")
            return [], 0
        tree_size = pages[0].tree_size
        expected_first = 1
        entries: list[ManifestEntry] = []
        for page in sorted(pages, key=lambda p: p.first_sequence):
            where = f"manifest page {page.first_sequence}..{page.last_sequence}"
            if page.tree_size != tree_size or page.scope != self.bundle.scope:
                self.violation("integrity", where, "seals another scope or log size")
                continue
            if page.first_sequence != expected_first:
                self.violation(
                    "integrity",
                    where,
                    f"pages leave sequences {expected_first}..{page.first_sequence - 1} unsealed",
                )
            entries.extend(page.entries)
            expected_first = page.last_sequence + 1
        if expected_first != tree_size + 1:
            self.violation(
                "integrity",
                "manifest",
                f"pages stop at sequence {expected_first - 1} of {tree_size}",
            )
        return entries, tree_size

    def _load_principals(self, pages: list[Manifest]) -> None:
        """Keys, lifecycles and roles come from the store's sealed first page, not from
        the bundle's loose copy: an edited principals list must not change a verdict."""
        sealed = next((page.principals for page in pages if page.principals), None)
        if sealed is None:
            self.violation("integrity", "principals", "not sealed by the store: nothing to trust")
            sealed = []
        else:
            for name, problem in _principal_differences(sealed, self.bundle.principals):
                self.violation("integrity", f"principal {name}", problem)
        self.keys.load([p.keys for p in sealed])
        self.principals = {p.keys.agent_id: p for p in sealed}

    def _against_manifest(
        self, records: list[LogRecord], entries: list[ManifestEntry], tree_size: int
    ) -> None:
        by_sequence = {r.sequence: r for r in records}
        sealed = {e.sequence for e in entries}
        for entry in entries:
            record = by_sequence.get(entry.sequence)
            if record is None:
                self.violation("integrity", _entry_where(entry), "missing from the bundle")
                continue
            event_id = record.event.event_id if record.event else None
            if event_id != entry.event_id:
                self.violation(
                    "integrity",
                    _where(record),
                    f"the seal puts event {entry.event_id} at this sequence: "
                    "events were reordered or replaced",
                )
            elif record.leaf.hex() != entry.leaf_hash:
                self.violation(
                    "integrity", _where(record), "its bytes differ from the sealed record"
                )
            elif entry.signature is not None and (
                record.headers.get(SIGNATURE_HEADER) != entry.signature
            ):
                self.violation(
                    "integrity",
                    _where(record),
                    "its signature differs from the one it was stored with: re-signed",
                )
        for record in records:
            if record.sequence > tree_size:
                self.violation(
                    "integrity", _where(record), f"after the sealed log size {tree_size}"
                )
            elif record.sequence not in sealed:
                self.violation("integrity", _where(record), "not in the sealed record")
        # The per-case hash chain, over the messages in the order the bundle gives them.
        chain_of = {e.sequence: e.chain_hash for e in entries}
        heads: dict[str, bytes] = defaultdict(lambda: CHAIN_START)
        broken: set[str] = set()
        for record in records:
            heads[record.case_id] = chain_hash(heads[record.case_id], record.leaf)
            sealed_head = chain_of.get(record.sequence)
            if (
                sealed_head is not None
                and record.case_id not in broken
                and heads[record.case_id].hex() != sealed_head
            ):
                broken.add(record.case_id)  # one break per case: the rest follow from it
                self.violation(
                    "integrity",
                    _where(record),
                    "the case's hash chain breaks here: a message before it or this one "
                    "was dropped, reordered or altered",
                )

    # ------------------------------------------------------------------ merkle

    def _merkle(self, records: list[LogRecord], roots: dict[int, bytes], tree_size: int) -> None:
        if tree_size not in roots:
            self.violation(
                "integrity",
                "checkpoints",
                f"no valid signed checkpoint of the sealed log size {tree_size}",
            )
            return
        newest = roots[tree_size]
        if self.bundle.scope == "*":
            frontier = MerkleFrontier()
            for record in records:
                if record.sequence > tree_size:
                    break
                frontier.append(record.leaf)
                size = frontier.size
                if size in roots and frontier.root() != roots[size]:
                    self.violation(
                        "integrity",
                        f"the log up to sequence {size}",
                        f"does not match the signed checkpoint of size {size}",
                    )
            return
        proofs = self.bundle.proofs
        if proofs.tree_size != tree_size:
            self.violation("integrity", "proofs", f"are for size {proofs.tree_size}")
            return
        for record in records:
            path = proofs.inclusion.get(str(record.sequence))
            if record.sequence > tree_size:
                continue
            if path is None or not verify_inclusion(
                record.sequence - 1,
                tree_size,
                record.leaf,
                [bytes.fromhex(p) for p in path],
                newest,
            ):
                self.violation(
                    "integrity",
                    _where(record),
                    f"not proved to be in the signed log of size {tree_size}",
                )
        for size, root in sorted(roots.items()):
            if size >= tree_size:
                continue
            path = proofs.consistency.get(str(size))
            if path is None or not verify_consistency(
                size, tree_size, root, newest, [bytes.fromhex(p) for p in path]
            ):
                self.violation(
                    "integrity",
                    f"checkpoint of tree size {size}",
                    f"the log of size {tree_size} is not proved to extend it: history rewritten",
                )

    # ------------------------------------------------------------------ ids

    def _duplicates(self, records: list[LogRecord], entries: list[ManifestEntry]) -> None:
        """One event id names one event in the whole log: a second message under an id
        (a replay under a fresh Nats-Msg-Id, or another event reusing it, in this case
        or another) is named, and two different events under one id above all."""
        first: dict[str, LogRecord] = {}
        for record in records:
            if record.event is None:
                continue
            earlier = first.setdefault(record.event.event_id, record)
            if earlier is record:
                continue
            same = earlier.body == record.body and earlier.case_id == record.case_id
            self.violation(
                "integrity",
                _where(record),
                f"a second message under event id {record.event.event_id} (first at sequence "
                f"{earlier.sequence}, case {earlier.case_id}): "
                + ("a replayed copy" if same else "a different event reusing the id"),
            )
        sealed = {e.sequence: e for e in entries}
        in_bundle = {r.sequence for r in records}
        for record in records:
            entry = sealed.get(record.sequence)
            if entry is None or entry.duplicate_of is None or entry.duplicate_of in in_bundle:
                continue  # named above when both copies are here
            self.violation(
                "integrity",
                _where(record),
                f"the store sealed it as a second message under its event id (first at "
                f"sequence {entry.duplicate_of}, outside this bundle)",
            )

    # ------------------------------------------------------------------ policy

    def _policy(self, records: list[LogRecord]) -> None:
        by_case: dict[str, list[LogRecord]] = defaultdict(list)
        seen: set[str] = set()
        for record in records:
            if record.counts and record.event is not None and record.event.event_id not in seen:
                seen.add(record.event.event_id)
                by_case[record.case_id].append(record)
        audit = CasePolicyAudit(
            self.keys, lambda record, problem: self.violation("policy", _where(record), problem)
        )
        for case_records in by_case.values():
            audit.check(case_records)

    def _cards(self) -> None:
        for where, problem in card_findings(list(self.principals.values())):
            self.violation("enrolment", where, problem)


def _principal_differences(
    sealed: list[AuditPrincipal], loose: list[AuditPrincipal]
) -> list[tuple[str, str]]:
    """Each principal whose copy in the bundle differs from the sealed one, named."""
    mine = {p.keys.agent_id: msgspec.to_builtins(p) for p in sealed}
    theirs = {p.keys.agent_id: msgspec.to_builtins(p) for p in loose}
    found = []
    for name in sorted(set(mine) | set(theirs)):
        if name not in theirs:
            found.append((name, "sealed by the store but missing from the bundle's list"))
        elif name not in mine:
            found.append((name, "in the bundle's list but not sealed by the store: added"))
        elif mine[name] != theirs[name]:
            fields = sorted(
                key
                for key in mine[name]["keys"]
                if mine[name]["keys"][key] != theirs[name]["keys"].get(key)
            ) + sorted(k for k in ("kind", "roles") if mine[name][k] != theirs[name].get(k))
            found.append((name, f"differs from the sealed record in {', '.join(fields)}"))
    return found


def verify_bundle(bundle: AuditBundle, store_key: str | None = None) -> Report:
    return BundleVerifier(bundle, store_key).verify()
