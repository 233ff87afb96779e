"""The signed Merkle checkpoints (RFC 9162 roots) of the log, read from the ops
stream: only those the event store signed, about this bundle's stream, count."""

from __future__ import annotations

from contracts.audit_bundle import AuditBundle
from contracts.codec import decode
from contracts.errors import ContractError
from contracts.events.operations import LogCheckpointed
from services.eventstore.audit.principals import Trust
from services.eventstore.audit.report import Report


def signed_roots(bundle: AuditBundle, trust: Trust, report: Report) -> dict[int, bytes]:
    """Tree size -> root hash, of every valid checkpoint."""
    roots: dict[int, bytes] = {}
    for message in bundle.checkpoints:
        where = f"checkpoint message {message.sequence} of the ops stream"
        try:
            body = message.body
            event = decode(body)
        except (ValueError, ContractError) as exc:
            report.add("integrity", where, f"unreadable: {exc}")
            continue
        if not isinstance(event, LogCheckpointed):
            report.add("integrity", where, f"is a {event.event_name()}, not a checkpoint")
            continue
        where = f"checkpoint of tree size {event.payload.tree_size}"
        problem = trust.signed_by_store(
            message.subject, body, message.headers, event.actor, message.stored_at
        )
        if problem is not None:
            report.add("signature", where, problem)
            continue
        if event.payload.stream != bundle.stream:
            report.add("integrity", where, f"is about stream {event.payload.stream}")
            continue
        roots[event.payload.tree_size] = bytes.fromhex(event.payload.root_hash)
    return roots
