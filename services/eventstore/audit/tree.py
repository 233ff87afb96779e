"""The log against its signed Merkle checkpoints (RFC 9162): for the whole log, the
root is recomputed at every checkpoint; for one case, each message's inclusion proof
is checked against the newest root, and every earlier checkpoint is proved a prefix
of it (history was not rewritten)."""

from __future__ import annotations

from contracts.audit_bundle import AuditBundle, Proofs
from services.eventstore.audit.report import Report, where
from services.eventstore.domain import LogRecord
from services.eventstore.merkle import MerkleFrontier, verify_consistency, verify_inclusion


def check_tree(
    bundle: AuditBundle,
    records: list[LogRecord],
    roots: dict[int, bytes],
    tree_size: int,
    report: Report,
) -> None:
    if tree_size not in roots:
        report.add(
            "integrity",
            "checkpoints",
            f"no valid signed checkpoint of the sealed log size {tree_size}",
        )
        return
    if bundle.scope == "*":
        _check_roots(records, roots, tree_size, report)
    elif bundle.proofs.tree_size != tree_size:
        report.add("integrity", "proofs", f"are for size {bundle.proofs.tree_size}")
    else:
        _check_proofs(bundle.proofs, records, roots, tree_size, report)


def _check_roots(
    records: list[LogRecord], roots: dict[int, bytes], tree_size: int, report: Report
) -> None:
    """The whole log: its root at every checkpointed size is the signed one."""
    frontier = MerkleFrontier()
    for record in records:
        if record.sequence > tree_size:
            break
        frontier.append(record.leaf)
        size = frontier.size
        if size in roots and frontier.root() != roots[size]:
            report.add(
                "integrity",
                f"the log up to sequence {size}",
                f"does not match the signed checkpoint of size {size}",
            )


def _check_proofs(
    proofs: Proofs,
    records: list[LogRecord],
    roots: dict[int, bytes],
    tree_size: int,
    report: Report,
) -> None:
    """Part of the log: each message proved in the newest root, each older root proved
    a prefix of it."""
    newest = roots[tree_size]
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
            report.add(
                "integrity",
                where(record),
                f"not proved to be in the signed log of size {tree_size}",
            )
    for size, root in sorted(roots.items()):
        if size >= tree_size:
            continue
        path = proofs.consistency.get(str(size))
        if path is None or not verify_consistency(
            size, tree_size, root, newest, [bytes.fromhex(p) for p in path]
        ):
            report.add(
                "integrity",
                f"checkpoint of tree size {size}",
                f"the log of size {tree_size} is not proved to extend it: history rewritten",
            )
