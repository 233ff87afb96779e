"""The bundle's messages held against the store's seal: each sealed message is present,
in its place, with its bytes and the signature it was stored with; nothing is added;
and each case's hash chain runs unbroken through the messages in the bundle's order.
A message that is missing, extra, out of place, altered or re-signed is named."""

from __future__ import annotations

from collections import defaultdict

from contracts.audit_bundle import ManifestEntry
from mesh.service import SIGNATURE_HEADER
from services.eventstore.audit.report import Report, entry_where, where
from services.eventstore.domain import LogRecord
from services.eventstore.merkle import CHAIN_START, chain_hash


def check_against_seal(
    records: list[LogRecord], entries: list[ManifestEntry], tree_size: int, report: Report
) -> None:
    by_sequence = {r.sequence: r for r in records}
    for entry in entries:
        record = by_sequence.get(entry.sequence)
        if record is None:
            report.add("integrity", entry_where(entry), "missing from the bundle")
            continue
        problem = _differs_from_seal(record, entry)
        if problem is not None:
            report.add("integrity", where(record), problem)
    sealed = {e.sequence for e in entries}
    for record in records:
        if record.sequence > tree_size:
            report.add("integrity", where(record), f"after the sealed log size {tree_size}")
        elif record.sequence not in sealed:
            report.add("integrity", where(record), "not in the sealed record")


def _differs_from_seal(record: LogRecord, entry: ManifestEntry) -> str | None:
    event_id = record.event.event_id if record.event else None
    if event_id != entry.event_id:
        return (
            f"the seal puts event {entry.event_id} at this sequence: "
            "events were reordered or replaced"
        )
    if record.leaf.hex() != entry.leaf_hash:
        return "its bytes differ from the sealed record"
    if entry.signature is not None and record.headers.get(SIGNATURE_HEADER) != entry.signature:
        return "its signature differs from the one it was stored with: re-signed"
    return None


def check_case_chains(
    records: list[LogRecord], entries: list[ManifestEntry], report: Report
) -> None:
    """The per-case hash chain, over the messages in the order the bundle gives them."""
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
            report.add(
                "integrity",
                where(record),
                "the case's hash chain breaks here: a message before it or this one "
                "was dropped, reordered or altered",
            )
