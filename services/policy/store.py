"""The approvals bucket: each request that waits for a human, as a `PendingApproval` in a
KV bucket (`<ROOT>_APPROVALS`), so a restart keeps it.

A record is created once (create-only: a redelivered request never reopens one) and
changed only by compare-and-swap, so a human's decision and a deadline that race for
the same record cannot both win. It goes once its outcome is announced.
"""

from __future__ import annotations

import msgspec
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from mesh.service import ConcurrencyConflict, Topology, broker_errors, ensure_key_value
from services.policy.approvals import PendingApproval

_pending = msgspec.json.Decoder(PendingApproval)


def approvals_bucket(topology: Topology) -> str:
    return f"{topology.root.upper()}_APPROVALS"


class ApprovalStore:
    def __init__(self, js: JetStreamContext, topology: Topology) -> None:
        self.js = js
        self.bucket = approvals_bucket(topology)
        # As replicated as the log: on a cluster, what waits for a human survives a node.
        self.replicas = topology.replicas
        self._kv: KeyValue | None = None

    async def open(self) -> None:
        await ensure_key_value(
            self.js,
            KeyValueConfig(
                bucket=self.bucket,
                history=1,
                storage=StorageType.FILE,
                replicas=self.replicas,
            ),
        )
        self._kv = await self.js.key_value(self.bucket)

    async def keys(self) -> list[str]:
        """Every key the bucket holds (deleted ones too: loading says which are gone).
        Read from the stream's subject counts: nats-py's `KeyValue.keys()` watches the
        bucket and can stop early while another key is being deleted."""
        prefix = f"$KV.{self.bucket}."
        with broker_errors("list pending approvals"):
            info = await self.js.stream_info(f"KV_{self.bucket}", subjects_filter=f"{prefix}>")
        return sorted(subject[len(prefix) :] for subject in info.state.subjects or {})

    async def load(self, request_id: str) -> tuple[PendingApproval, int] | None:
        """The record and its revision (for `swap`), or None if there is none."""
        kv = self._opened()
        with broker_errors(f"read pending approval {request_id}"):
            try:
                entry = await kv.get(request_id)
            except nats.js.errors.KeyNotFoundError:
                return None
        if not entry.value:
            return None
        return _pending.decode(entry.value), int(entry.revision or 0)

    async def waiting(self) -> list[PendingApproval]:
        """Every request still waiting for a human."""
        found = [await self.load(key) for key in await self.keys()]
        return [
            loaded[0] for loaded in found if loaded is not None and loaded[0].state == "waiting"
        ]

    async def create(self, pending: PendingApproval) -> bool:
        """Create-only: False when the request already has a record."""
        kv = self._opened()
        with broker_errors(f"keep pending approval {pending.request_id}"):
            try:
                await kv.create(pending.request_id, msgspec.json.encode(pending))
            except nats.js.errors.KeyWrongLastSequenceError:
                return False
        return True

    async def swap(self, pending: PendingApproval, revision: int) -> None:
        """Compare-and-swap: only if nobody changed the record since `revision`."""
        kv = self._opened()
        with broker_errors(f"update pending approval {pending.request_id}"):
            try:
                await kv.update(pending.request_id, msgspec.json.encode(pending), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                raise ConcurrencyConflict(
                    pending.request_id, revision, "approval changed"
                ) from None

    async def forget(self, request_id: str) -> None:
        kv = self._opened()
        with broker_errors(f"forget pending approval {request_id}"):
            await kv.delete(request_id)

    def _opened(self) -> KeyValue:
        assert self._kv is not None, "ApprovalStore.open() first"
        return self._kv
