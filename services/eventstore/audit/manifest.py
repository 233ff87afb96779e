"""The event store's signed manifest: pages that must tile the sealed log, each entry
naming one message (sequence, event id, leaf hash, per-case chain head, signature,
stored time). What the rest of the audit holds the bundle's messages against."""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from contracts.audit_bundle import AuditBundle, Manifest, ManifestEntry, SignedDocument
from services.eventstore.audit.principals import Trust
from services.eventstore.audit.report import Report


class Page(NamedTuple):
    position: int  # in the bundle, from 0
    document: SignedDocument
    body: bytes
    manifest: Manifest


def read_pages(bundle: AuditBundle, report: Report) -> list[Page]:
    """The readable manifest pages, signed or not (the first carries the principals)."""
    pages = []
    for index, document in enumerate(bundle.manifest):
        try:
            body = document.body
            pages.append(Page(index, document, body, msgspec.json.decode(body, type=Manifest)))
        except (ValueError, msgspec.DecodeError) as exc:
            report.add("integrity", f"manifest page {index + 1}", f"unreadable: {exc}")
    return pages


def sealed_entries(
    pages: list[Page], scope: str, trust: Trust, report: Report
) -> tuple[list[ManifestEntry], int]:
    """The entries of the pages the store signed, once they tile sequences 1..tree
    size of `scope`; and that tree size (0: nothing is sealed)."""
    signed: list[Manifest] = []
    for page in pages:
        document = page.document
        problem = trust.signed_by_store(
            document.subject,
            page.body,
            document.headers,
            page.manifest.store,
            page.manifest.sealed_at,
        )
        if problem is not None:
            report.add("signature", f"manifest page {page.position + 1}", problem)
        else:
            signed.append(page.manifest)
    if not signed:
        report.add("integrity", "manifest", "no valid manifest page: nothing is sealed")
        return [], 0
    tree_size = signed[0].tree_size
    expected_first = 1
    entries: list[ManifestEntry] = []
    for manifest in sorted(signed, key=lambda p: p.first_sequence):
        where = f"manifest page {manifest.first_sequence}..{manifest.last_sequence}"
        if manifest.tree_size != tree_size or manifest.scope != scope:
            report.add("integrity", where, "seals another scope or log size")
            continue
        if manifest.first_sequence != expected_first:
            report.add(
                "integrity",
                where,
                f"pages leave sequences {expected_first}..{manifest.first_sequence - 1} unsealed",
            )
        entries.extend(manifest.entries)
        expected_first = manifest.last_sequence + 1
    if expected_first != tree_size + 1:
        report.add(
            "integrity", "manifest", f"pages stop at sequence {expected_first - 1} of {tree_size}"
        )
    return entries, tree_size
