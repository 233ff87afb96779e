"""The registry's storage: history in the registry stream (the truth), the current view
in a KV bucket (for readers), liveness in a second bucket (heartbeats are not history).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

import msgspec
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from contracts.cards import AgentRecord
from contracts.envelope import Event
from mesh.service import (
    BrokerError,
    EventPublisher,
    SignatureError,
    Topology,
    broker_errors,
    broker_time,
    client_of,
    ensure_key_value,
    read_subject,
    verify_headers,
)
from services.registry.domain import RegistryState, evolve

log = logging.getLogger(__name__)

_record_decoder = msgspec.json.Decoder(AgentRecord)


def view_bucket(topology: Topology) -> str:
    return f"{topology.root.upper()}_AGENTS"


def liveness_bucket(topology: Topology) -> str:
    return f"{topology.root.upper()}_LIVENESS"


class RegistryStore:
    def __init__(
        self,
        js: JetStreamContext,
        publisher: EventPublisher,
        topology: Topology,
        registry_keys: frozenset[str],
        fence: Callable[[], None] = lambda: None,
    ) -> None:
        """`fence` raises unless this registry may write now (the writer lease)."""
        self.js = js
        self.fence = fence
        self.registry_keys = registry_keys  # who may have written the history
        self.publisher = publisher
        self.topology = topology
        # The newest sequence of the registry stream this registry has read or written:
        # every append is conditional on it (see `append`).
        self.newest = 0
        self._view: KeyValue | None = None
        self._liveness: KeyValue | None = None

    async def open(self) -> None:
        for bucket, history in (
            (view_bucket(self.topology), 10),
            (liveness_bucket(self.topology), 1),
        ):
            await ensure_key_value(
                self.js,
                KeyValueConfig(
                    bucket=bucket,
                    history=history,
                    storage=StorageType.FILE,
                    replicas=self.topology.replicas,
                ),
            )
        self._view = await self.js.key_value(view_bucket(self.topology))
        self._liveness = await self.js.key_value(liveness_bucket(self.topology))

    async def rebuild(self) -> RegistryState:
        """Replay the whole registry history into a fresh state. Only registry events
        signed by a registry key count; anything else in the stream (it is append-only,
        so it cannot be removed) is named in the log and passed over, never applied."""
        state = RegistryState()

        self.newest = 0

        def unreadable(sequence: int, subject: str, error: Exception) -> None:
            # Passed over, but counted as read: readers compare the sequence a registry
            # answer reflects with the stream's newest.
            state.sequence = max(state.sequence, sequence)
            self.newest = max(self.newest, sequence)
            log.error(
                "registry history #%d on %s is not an event (%s); ignored", sequence, subject, error
            )

        stored = await read_subject(
            self.js,
            self.topology.registry_stream,
            self.topology.subjects.family_all("registry"),
            on_unreadable=unreadable,
        )
        for item in stored:
            self.newest = max(self.newest, item.sequence)
            try:
                signer = verify_headers(item.subject, item.body, item.headers)
            except SignatureError as exc:
                unreadable(item.sequence, item.subject, exc)
                continue
            if signer not in self.registry_keys or item.event.family != "registry":
                unreadable(
                    item.sequence,
                    item.subject,
                    ValueError(f"not a registry event signed by the registry ({signer})"),
                )
                continue
            evolve(state, item.event, item.stored_at, item.sequence)
        log.info("registry rebuilt from %d events: %d agents", len(stored), len(state.records))
        return state

    async def append(self, event: Event) -> tuple[int, datetime]:
        """Append an event, conditional on the whole registry history being where this
        registry last saw it: every decision is taken on the complete state before it.
        A second registry that wrote meanwhile (a writer whose term ended while its
        request was in flight, or an active and a standby in the moment of a
        hand-over) gets a conflict instead of interleaving, whichever agent either
        wrote about — one agent's activation cannot be lost to a decision about
        another. Returns its stream sequence and the broker time it was stored, from
        which it is in force."""
        self.fence()
        receipt = await self.publisher.publish(
            event,
            expected_sequence=self.newest,
            expected_scope=self.topology.subjects.family_all("registry"),
        )
        self.newest = receipt.sequence
        what = f"read back registry event {receipt.sequence}"
        # On a replicated stream a direct get may be answered by a follower that has
        # not applied the write yet ("not found", although the ack says it is stored):
        # ask again, briefly, until a current replica answers.
        request = msgspec.json.encode({"seq": receipt.sequence})
        subject = f"$JS.API.DIRECT.GET.{self.topology.registry_stream}"
        for attempt in range(50):
            with broker_errors(what):
                stored = await client_of(self.js).request(subject, request, timeout=5.0)
            stamp = (stored.headers or {}).get("Nats-Time-Stamp")
            if stamp is not None:
                break
            await asyncio.sleep(0.005 * min(attempt + 1, 10))
        else:
            raise BrokerError(what, f"not stored, although acknowledged: {stored.headers}")
        # Read as every other reader of the stream reads it, to the microsecond.
        return receipt.sequence, broker_time(stamp)

    async def write_view(self, record: AgentRecord) -> None:
        assert self._view is not None
        self.fence()
        with broker_errors(f"write view of {record.card.agent_id}"):
            await self._view.put(record.card.agent_id, msgspec.json.encode(record))

    async def reconcile_view(self, state: RegistryState) -> int:
        """Make the KV view match the history (after a crash between the two writes),
        and drop entries the history does not know."""
        assert self._view is not None
        fixed = 0
        try:
            present = set(await self._view.keys())
        except nats.js.errors.NoKeysError:
            present = set()
        for stray in sorted(present - set(state.records)):
            log.warning("registry view: %s is not in the history; removed", stray)
            await self._view.delete(stray)
            fixed += 1
        for agent_id, record in state.records.items():
            try:
                entry = await self._view.get(agent_id)
                current = _record_decoder.decode(entry.value or b"")
            except (nats.js.errors.KeyNotFoundError, msgspec.DecodeError):
                current = None
            stored = msgspec.structs.replace(record, last_heartbeat=None, stale=False)
            if (
                current is None
                or msgspec.structs.replace(current, last_heartbeat=None, stale=False) != stored
            ):
                await self.write_view(stored)
                fixed += 1
        return fixed

    async def record_heartbeat(self, agent_id: str, at: datetime) -> None:
        assert self._liveness is not None
        with broker_errors(f"record heartbeat of {agent_id}"):
            await self._liveness.put(agent_id, at.isoformat().encode())

    async def heartbeats(self) -> dict[str, datetime]:
        assert self._liveness is not None
        seen: dict[str, datetime] = {}
        try:
            keys = await self._liveness.keys()
        except nats.js.errors.NoKeysError:
            return seen
        for key in keys:
            entry = await self._liveness.get(key)
            if not entry.value:
                continue
            try:
                seen[key] = datetime.fromisoformat(entry.value.decode())
            except ValueError:
                # Not a heartbeat this registry wrote (the bucket takes what a stray
                # reply puts there): passed over, named, never a reason not to serve.
                log.warning("liveness entry %r is not a time; ignored", key)
        return seen
