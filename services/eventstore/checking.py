"""Reading one stored message of the case log into a LogRecord: decode it, check it is
where its subject says, verify its signature, and check the signer was the actor's key
when the message entered the log. A message that fails is flagged with the reason —
never dropped — so the projector, a replay and an offline audit all see the same log.
"""

from __future__ import annotations

from datetime import datetime

from contracts.codec import EventDecoder
from contracts.envelope import Event
from contracts.errors import ContractError
from contracts.subjects import ParsedSubject, Subjects
from mesh.service import SIGNER_HEADER, KeyDirectory, SignatureError, signed_bytes, verify_headers
from services.eventstore.domain import LogRecord
from services.eventstore.merkle import leaf_hash


def case_of(subject: str) -> str:
    """The case token of a case-log subject (`<root>.case.<case>.<type>`), or the
    subject itself when it has no such token (it is still a message of the log)."""
    tokens = subject.split(".")
    return tokens[2] if len(tokens) == 4 else subject


Sealed = tuple[bytes, str | None, str | None]  # leaf hash, signer, signature problem


def seal(subject: str, body: bytes, headers: dict[str, str]) -> Sealed:
    """The cryptographic half of a check, which needs no registry: the message's leaf
    hash, and whether its signature verifies against the key it names. Runs in a
    worker process during projection (an ed25519 verify is ~40 µs of CPU)."""
    leaf = leaf_hash(signed_bytes(subject, body))
    try:
        return leaf, verify_headers(subject, body, headers), None
    except SignatureError as exc:
        return leaf, headers.get(SIGNER_HEADER), exc.reason


def seal_all(messages: list[tuple[str, bytes, dict[str, str]]]) -> list[Sealed]:
    return [seal(subject, body, headers) for subject, body, headers in messages]


class MessageChecker:
    def __init__(self, subjects: Subjects, keys: KeyDirectory | None) -> None:
        self.subjects = subjects
        self.keys = keys  # None: signatures are checked, key ownership is not
        self.decoder = EventDecoder()
        # A case's few subjects repeat: parse (three regex checks) each one once.
        self._parsed: dict[str, ParsedSubject | ContractError] = {}

    def _parse(self, subject: str) -> ParsedSubject:
        parsed = self._parsed.get(subject)
        if parsed is None:
            if len(self._parsed) > 4096:
                self._parsed.clear()  # bounded: memory stays flat over any log
            try:
                parsed = self.subjects.parse(subject)
            except ContractError as exc:
                parsed = exc
            self._parsed[subject] = parsed
        if isinstance(parsed, ContractError):
            raise parsed
        return parsed

    def check(
        self,
        sequence: int,
        subject: str,
        body: bytes,
        headers: dict[str, str],
        stored_at: datetime,
        sealed: Sealed | None = None,
    ) -> LogRecord:
        leaf, signer, signature_problem = sealed or seal(subject, body, headers)
        case_id = case_of(subject)

        def record(problem: str | None, event: Event | None) -> LogRecord:
            return LogRecord(
                sequence=sequence,
                subject=subject,
                case_id=case_id,
                stored_at=stored_at,
                headers=headers,
                body=body,
                leaf=leaf,
                event=event,
                signer=signer,
                problem=problem,
            )

        try:
            event = self.decoder.decode(body)
        except ContractError as exc:
            return record(f"unreadable: {exc}", None)
        try:
            parsed = self._parse(subject)
        except ContractError as exc:
            return record(f"not a case subject: {exc}", event)
        if parsed.key != event.case_id or parsed.event_type != event.event_name():
            return record(
                f"body ({event.event_name()} of case {event.case_id}) does not match "
                f"its subject {subject}",
                event,
            )
        if signature_problem is not None or signer is None:
            return record(signature_problem or "unsigned", event)
        if self.keys is not None:
            try:
                self.keys.check(signer, event.actor, stored_at, subject, event.event_name())
            except SignatureError as exc:
                return record(exc.reason, event)
        return record(None, event)
