"""Verifying an audit bundle, offline: no NATS, no database, no running service.

Three families of checks, each violation naming the message it is about:

1. **signatures** — every message verifies against its signer's key, and that key
   belonged to the actor and was valid (not revoked, not suspended) when the message
   entered the log.
2. **integrity** — the event store's signed manifest pages tile the log and name each
   message (sequence, event id, leaf hash, per-case chain head): a message that is
   missing, extra, out of place or altered is named. The signed Merkle checkpoints
   (RFC 9162) must agree: the whole log's roots are recomputed at every checkpoint, or,
   for one case, each message's inclusion proof is checked against the newest root and
   every earlier checkpoint is proved a prefix of it.
3. **policy** — every executed action has an approving decision referencing its
   request, earlier in the log; where policy required a human, the decision cites a
   grant by a human holding the role asked; nobody approves their own request.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
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
from contracts.events.actions import (
    POLICY_PRINCIPAL,
    ActionApproved,
    ActionCompleted,
    ActionFailed,
    ActionRequested,
    ApprovalEscalated,
    ApprovalGranted,
    ApprovalRequired,
)
from contracts.events.operations import LogCheckpointed
from contracts.subjects import Subjects
from mesh.errors import SignatureError
from mesh.identity import SIGNATURE_HEADER, verify_headers
from mesh.key_directory import KeyDirectory
from services.eventstore.checking import MessageChecker
from services.eventstore.domain import DECISIONS, LogRecord
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
    def __init__(
        self,
        bundle: AuditBundle,
        store_key: str | None = None,
        policy_principal: str = POLICY_PRINCIPAL,
    ) -> None:
        self.bundle = bundle
        self.policy_principal = policy_principal
        self.store_key = store_key  # pin the event store's key instead of trusting the bundle's
        self.keys = KeyDirectory()
        self.principals: dict[str, AuditPrincipal] = {}
        self.report = Report(scope=bundle.scope)

    def violation(self, check: str, where: str, problem: str) -> None:
        self.report.violations.append(Violation(check, where, problem))

    def verify(self) -> Report:
        entries, tree_size = self._manifest()
        records = self._signatures()
        roots = self._checkpoints()
        self.report.tree_size = tree_size
        self._against_manifest(records, entries, tree_size)
        self._merkle(records, roots, tree_size)
        self._policy(records)
        self.report.events = len(records)
        self.report.cases = len({r.case_id for r in records})
        return self.report

    # ------------------------------------------------------------------ signatures

    def _signatures(self) -> list[LogRecord]:
        checker = MessageChecker(Subjects(self.bundle.subject_root), self.keys)
        records: list[LogRecord] = []
        previous = 0
        for message in self.bundle.events:
            try:
                body = message.body
            except ValueError:
                self.violation("integrity", f"sequence {message.sequence}", "body is not base64")
                continue
            record = checker.check(
                message.sequence, message.subject, body, message.headers, message.stored_at
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
        elif msgspec.to_builtins(sealed) != msgspec.to_builtins(self.bundle.principals):
            self.violation(
                "integrity", "principals", "the bundle's list differs from the sealed one"
            )
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

    # ------------------------------------------------------------------ policy

    def _policy(self, records: list[LogRecord]) -> None:
        by_case: dict[str, list[LogRecord]] = defaultdict(list)
        for record in records:
            if record.counts:
                by_case[record.case_id].append(record)
        for case_records in by_case.values():
            self._case_policy(case_records)

    def _case_policy(self, records: Iterable[LogRecord]) -> None:
        requests: dict[str, ActionRequested] = {}
        approved: dict[str, ActionApproved] = {}
        role_asked: dict[str, str] = {}
        grants: dict[str, ApprovalGranted] = {}
        for record in records:
            event = record.event
            if isinstance(event, DECISIONS) and event.actor != self.policy_principal:
                self.violation(
                    "policy",
                    _where(record),
                    f"a decision by {event.actor}: only {self.policy_principal} decides",
                )
                continue
            match event:
                case ActionRequested():
                    requests[event.event_id] = event
                case ApprovalRequired(payload=p):
                    role_asked[p.request_id] = p.approver_role
                case ApprovalEscalated(payload=p) if p.escalated_to:
                    role_asked[p.request_id] = p.escalated_to
                case ApprovalGranted(payload=p):
                    grants[event.event_id] = event
                    self._check_grant(record, event, requests.get(p.request_id))
                case ActionApproved(payload=p):
                    approved.setdefault(p.request_id, event)
                    self._check_approval(record, event, role_asked, grants)
                case ActionCompleted(payload=p) | ActionFailed(payload=p):
                    if p.request_id not in requests:
                        self.violation(
                            "policy", _where(record), f"executes unknown request {p.request_id}"
                        )
                    elif p.request_id not in approved:
                        self.violation(
                            "policy",
                            _where(record),
                            f"executed request {p.request_id} without an approving decision "
                            "before it",
                        )

    def _check_grant(
        self, record: LogRecord, grant: ApprovalGranted, request: ActionRequested | None
    ) -> None:
        if grant.payload.approver != grant.actor:
            self.violation(
                "policy",
                _where(record),
                f"grants in the name of {grant.payload.approver}, signed by {grant.actor}",
            )
        if request is not None and request.actor == grant.actor:
            self.violation(
                "policy", _where(record), f"{grant.actor} approves its own request (self-approval)"
            )

    def _check_approval(
        self,
        record: LogRecord,
        decision: ActionApproved,
        role_asked: dict[str, str],
        grants: dict[str, ApprovalGranted],
    ) -> None:
        request_id = decision.payload.request_id
        role = role_asked.get(request_id)
        if role is None:
            return  # policy allowed it outright
        grant = grants.get(decision.payload.approval_id or "")
        if grant is None or grant.payload.request_id != request_id:
            self.violation(
                "policy",
                _where(record),
                f"approves request {request_id}, which needed a {role}'s approval, without "
                "citing a grant of it earlier in the log",
            )
            return
        principal = self.principals.get(grant.actor)
        if principal is None or principal.kind != "human" or role not in principal.roles:
            self.violation(
                "policy",
                _where(record),
                f"relies on {grant.actor}'s grant, but {grant.actor} is not a human {role}",
            )


def verify_bundle(bundle: AuditBundle, store_key: str | None = None) -> Report:
    return BundleVerifier(bundle, store_key).verify()
