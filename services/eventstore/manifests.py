"""Manifest pages: what an export carries. One page seals (with the store's key) the
stored messages of a case, or of the whole log, up to a checkpointed tree size, and
proves them against that checkpoint: an inclusion proof per message, consistency
proofs from earlier sizes. The first page also names every principal and its keys, so
an auditor can verify the log offline."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import msgspec
import orjson

from contracts.audit_bundle import (
    AuditPrincipal,
    Manifest,
    ManifestEntry,
    Proofs,
    SignedDocument,
)
from contracts.eventstore_api import ManifestRequest
from mesh.service import SIGNATURE_HEADER, Identity, Refused, RegistryClient, Topology
from services.eventstore.merkle import MerkleTree
from services.eventstore.views import ViewStore

MAX_PAGE = 5000


async def principals(registry: RegistryClient) -> list[AuditPrincipal]:
    """Every principal's keys, with the kind and roles on its card (a principal without
    a card is a service)."""
    records = {r.card.agent_id: r for r in await registry.find()}
    found = []
    for keys in await registry.keys():
        record = records.get(keys.agent_id)
        found.append(
            AuditPrincipal(
                keys=keys,
                kind=record.card.kind if record else "service",
                roles=list(record.card.roles) if record else [],
            )
        )
    return found


class ManifestPages:
    """Builds pages from the views (blocking: run it in a thread). Keeps the Merkle
    tree of the last size asked, since an export asks page after page of one size."""

    def __init__(
        self, store: ViewStore, identity: Identity, topology: Topology, service_id: str
    ) -> None:
        self.store = store
        self.identity = identity
        self.topology = topology
        self.service_id = service_id
        self._tree: tuple[int, MerkleTree] | None = None

    def page(
        self, request: ManifestRequest, principals: list[AuditPrincipal]
    ) -> tuple[SignedDocument, Proofs]:
        page_size = max(1, min(request.page_size, MAX_PAGE))
        rows = list(
            self.store.stored_messages(
                request.case_id, request.tree_size, after=request.after_sequence, limit=page_size
            )
        )
        full = len(rows) == page_size
        manifest = Manifest(
            store=self.service_id,
            stream=self.topology.cases_stream,
            scope=request.case_id or "*",
            tree_size=request.tree_size,
            sealed_at=datetime.now(UTC),
            first_sequence=request.after_sequence + 1,
            last_sequence=rows[-1].sequence if full else request.tree_size,
            entries=[
                ManifestEntry(
                    r.sequence,
                    r.case_id,
                    r.event_id,
                    r.leaf_hash,
                    r.chain_hash,
                    orjson.loads(r.headers).get(SIGNATURE_HEADER),
                    datetime.fromisoformat(r.stored_at),
                    r.duplicate_of,
                )
                for r in rows
            ],
            principals=principals,
        )
        subject = self.topology.subjects.service("eventstore", "manifest")
        body = msgspec.json.encode(manifest)
        document = SignedDocument(
            subject=subject,
            headers=self.identity.signature_headers(subject, body),
            body_b64=base64.b64encode(body).decode(),
        )
        proofs = Proofs(tree_size=request.tree_size)
        if request.inclusion or request.consistency_from:
            tree = self._merkle_tree(request.tree_size)
            if request.inclusion:
                for r in rows:
                    path = tree.inclusion_proof(r.sequence - 1, request.tree_size)
                    proofs.inclusion[str(r.sequence)] = [p.hex() for p in path]
            for size in request.consistency_from:
                if not 0 < size <= request.tree_size:
                    raise Refused(f"no consistency proof from {size} to {request.tree_size}")
                path = tree.consistency_proof(size, request.tree_size)
                proofs.consistency[str(size)] = [p.hex() for p in path]
        return document, proofs

    def _merkle_tree(self, tree_size: int) -> MerkleTree:
        if self._tree is None or self._tree[0] != tree_size:
            self._tree = (tree_size, MerkleTree(self.store.leaf_hashes(tree_size)))
        return self._tree[1]
