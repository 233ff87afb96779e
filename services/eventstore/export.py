"""Assembling an audit bundle from a live mesh.

The messages come from the case stream itself (the source of truth), the checkpoints
from the ops stream, the keys from the registry; the event store contributes what only
it holds — the sealed manifest pages and the Merkle proofs — and those are checked
against the stream's bytes and the signed checkpoints, so a store that lied would be
caught by the same verification.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import msgspec
import orjson
from nats.aio.client import Client

from contracts.audit_bundle import (
    BUNDLE_FORMAT,
    AuditBundle,
    Manifest,
    Proofs,
    SignedDocument,
    StoredMessage,
)
from contracts.codec import decode
from contracts.errors import ContractError
from contracts.events.operations import LogCheckpointed
from contracts.eventstore_api import ManifestRequest, StoreReply
from mesh.service import (
    MeshError,
    RawMessage,
    StoreRefused,
    Topology,
    read_raw,
    request_with_patience,
)

_reply = msgspec.json.Decoder(StoreReply)


async def store_request(
    nc: Client, topology: Topology, operation: str, request: object = None, timeout: float = 30.0
) -> StoreReply:
    body = b"" if request is None else msgspec.json.encode(request)
    msg = await request_with_patience(
        nc,
        topology.subjects.service("eventstore", operation),
        body,
        timeout=timeout,
        what=f"event store {operation} (is the event store running?)",
    )
    try:
        reply = _reply.decode(msg.data)
    except msgspec.DecodeError as exc:
        raise MeshError(f"unreadable reply from the event store: {exc}") from None
    if not reply.ok:
        raise StoreRefused(operation, reply.error or "no reason given")
    return reply


def checkpoint_subject(topology: Topology) -> str:
    """Where the store publishes its signed checkpoints (the ops stream)."""
    return topology.subjects.family_event("ops", "eventstore", LogCheckpointed.event_name())


def _stored(message: RawMessage) -> StoredMessage:
    return StoredMessage.of(
        message.sequence, message.subject, message.stored_at, message.headers, message.body
    )


async def build_bundle(nc: Client, topology: Topology, case_id: str | None) -> AuditBundle:
    """Everything needed to verify `case_id` (or, with None, the whole log) offline."""
    js = nc.jetstream(timeout=30)
    # 1. The store catches up with the stream and signs a checkpoint of all of it.
    status = (await store_request(nc, topology, "checkpoint")).status
    assert status is not None
    tree_size = status.last_checkpoint_size
    if tree_size == 0:
        raise MeshError("the case log is empty: nothing to export")

    # 2. The log's messages, as stored, up to that size.
    subject = (
        topology.subjects.case_history(case_id) if case_id else topology.subjects.family_all("case")
    )
    events: list[StoredMessage] = []
    async for batch in read_raw(js, topology.cases_stream, subject, up_to=tree_size, batch=1000):
        events.extend(_stored(m) for m in batch)
    if case_id is not None and not events:
        raise MeshError(f"no case {case_id!r} in the log")

    # 3. The checkpoints: all of them for the whole log; for one case, the first that
    #    covered each of its messages (when it was committed) and the newest.
    published: list[tuple[int, RawMessage]] = []
    async for batch in read_raw(js, topology.ops_stream, checkpoint_subject(topology)):
        for message in batch:
            try:
                event = decode(message.body)
            except ContractError:
                published.append((-1, message))  # kept: the verifier names it
                continue
            if isinstance(event, LogCheckpointed) and event.payload.tree_size <= tree_size:
                published.append((event.payload.tree_size, message))
    if case_id is None:
        chosen = published
    else:
        sizes = sorted({size for size, _ in published if size > 0})
        wanted = {tree_size}
        for stored in events:
            covering = next((s for s in sizes if s >= stored.sequence), None)
            if covering is not None:
                wanted.add(covering)
        chosen = [(size, m) for size, m in published if size in wanted or size < 0]
    earlier = sorted({size for size, _ in chosen if 0 < size < tree_size})

    # 4. The store's sealed manifest, page by page, with the proofs.
    pages: list[SignedDocument] = []
    inclusion: dict[str, list[str]] = {}
    consistency: dict[str, list[str]] = {}
    after = 0
    while after < tree_size:
        reply = await store_request(
            nc,
            topology,
            "manifest",
            ManifestRequest(
                tree_size=tree_size,
                case_id=case_id,
                after_sequence=after,
                page_size=200 if case_id else 2000,
                inclusion=case_id is not None,
                consistency_from=earlier if after == 0 and case_id else [],
            ),
        )
        assert reply.manifest is not None
        assert reply.proofs is not None
        pages.append(reply.manifest)
        inclusion.update(reply.proofs.inclusion)
        consistency.update(reply.proofs.consistency)
        page = msgspec.json.decode(reply.manifest.body)
        after = int(page["last_sequence"])

    # 5. Every principal's keys, lifecycle, kind and roles: as the store sealed them.
    principals = msgspec.json.decode(pages[0].body, type=Manifest).principals

    return AuditBundle(
        subject_root=topology.root,
        stream=topology.cases_stream,
        scope=case_id or "*",
        exported_at=datetime.now(UTC),
        events=events,
        checkpoints=[_stored(m) for _, m in chosen],
        proofs=Proofs(tree_size=tree_size, inclusion=inclusion, consistency=consistency),
        manifest=pages,
        principals=principals,
    )


def write_bundle(bundle: AuditBundle, path: Path) -> None:
    path.write_bytes(orjson.dumps(msgspec.to_builtins(bundle), option=orjson.OPT_INDENT_2))


def read_bundle(path: Path) -> AuditBundle:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MeshError(f"cannot read bundle {path}: {exc}") from exc
    try:
        bundle = msgspec.json.decode(data, type=AuditBundle)
    except msgspec.DecodeError as exc:
        raise MeshError(f"{path} is not an audit bundle: {exc}") from None
    if bundle.format != BUNDLE_FORMAT:
        raise MeshError(
            f"{path} is a {bundle.format!r} bundle; this verifier reads {BUNDLE_FORMAT}"
        )
    return bundle
