"""The event store service: the projector, signed Merkle checkpoints, and the
request/reply endpoints on `<root>.svc.eventstore.<operation>`:

    cases       CaseQuery      -> the cases (filter by status/kind, paged by case id)
    case        CaseRequest    -> one case with its actions
    timeline    CaseRequest    -> the case's audit timeline
    activity    ActivityQuery  -> per-agent activity
    status      (empty)        -> position, tree size and root, last checkpoint
    checkpoint  (empty)        -> catch up with the stream, publish a checkpoint, status
    manifest    ManifestRequest -> one signed manifest page, with its proofs

Checkpoints are `log_checkpointed` events on the ops stream (append-only, like the
case log), signed with the store's key: after every `checkpoint_every` new messages,
and once caught up at most every `checkpoint_interval` seconds. They are published
beside the projection, not in its way: a publish whose ack was lost with a restarted
broker waits out its timeout without holding the views back.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from sqlalchemy.exc import DBAPIError

from contracts.audit_bundle import (
    AuditPrincipal,
    Manifest,
    ManifestEntry,
    Proofs,
    SignedDocument,
)
from contracts.errors import ContractError
from contracts.events.operations import LogCheckpointed, LogCheckpointedPayload
from contracts.eventstore_api import (
    ActivityQuery,
    CaseQuery,
    CaseRequest,
    ManifestRequest,
    StoreReply,
    StoreStatus,
)
from mesh.service import (
    SIGNATURE_HEADER,
    BrokerError,
    EventPublisher,
    Identity,
    KeyDirectory,
    MeshError,
    MeshSettings,
    RegistryClient,
    SignatureError,
    Topology,
    ensure_stream,
    is_inbox,
    read_subject,
    respond,
    stop_task,
    verify_headers,
)
from services.eventstore.export import checkpoint_subject
from services.eventstore.merkle import MerkleTree
from services.eventstore.projector import Projector
from services.eventstore.settings import EventStoreSettings
from services.eventstore.views import Position, ViewStore

log = logging.getLogger(__name__)

_encode_reply = msgspec.json.Encoder().encode


class Refused(Exception):
    """A request the store will not serve (bad input, unknown case): said in the reply."""


class EventStoreService:
    def __init__(
        self,
        nc: Client,
        identity: Identity,
        settings: MeshSettings,
        store_settings: EventStoreSettings,
        topology: Topology | None = None,
        *,
        store: ViewStore | None = None,
        provision: bool = True,
    ) -> None:
        self.nc = nc
        self.identity = identity
        self.settings = settings
        self.store_settings = store_settings
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.js = nc.jetstream(timeout=settings.request_timeout)
        self.provision = provision
        self.store = store
        self.keys = KeyDirectory()
        self.registry = RegistryClient(nc, self.topology.subjects)
        self.publisher = EventPublisher(self.js, identity, self.topology, nc=nc)
        self.projector: Projector | None = None
        self.last_checkpoint = 0
        self._last_checkpoint_time = 0.0
        self._checkpoint_lock = asyncio.Lock()
        self._task: asyncio.Task[Position] | None = None
        self._checkpointing: asyncio.Task[None] | None = None
        self._due: tuple[Position, bool] | None = None  # a checkpoint waiting to go out
        self._publishing = 0  # the tree size of the checkpoint being published
        self._subscription: Subscription | None = None
        self._tree: tuple[int, MerkleTree] | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.provision:
            for config in self.topology.streams():
                await ensure_stream(self.js, config)
        if self.store is None:
            dsn = self.store_settings.database_url(self.settings.data_dir)
            self.store = await asyncio.to_thread(ViewStore.open, dsn)
        await self.keys.follow(self.nc, self.topology, self.registry)
        self.last_checkpoint = await self._published_checkpoint()
        self.projector = Projector(
            self.js,
            self.topology,
            self.store,
            self.keys,
            batch=self.store_settings.batch,
            fetch_wait=self.store_settings.fetch_wait,
            on_progress=self._after_batch,
        )
        self._task = asyncio.create_task(self.projector.run(), name="projector")
        self._subscription = await self.nc.subscribe(
            self.topology.subjects.service_all("eventstore"), cb=self._serve
        )
        await self.nc.flush()

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        await stop_task(self._task)
        await stop_task(self._checkpointing)
        await self.keys.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    # ------------------------------------------------------------------ checkpoints

    async def _published_checkpoint(self) -> int:
        """The largest log size this store has signed a checkpoint of. Only its own
        signature counts: anything else on the subject (written by someone allowed to
        publish there) is named in the log and passed over."""

        def unreadable(sequence: int, subject: str, exc: ContractError) -> None:
            log.warning("ops stream #%d on %s is not a checkpoint: %s", sequence, subject, exc)

        signed = 0
        for stored in await read_subject(
            self.js,
            self.topology.ops_stream,
            checkpoint_subject(self.topology),
            on_unreadable=unreadable,
        ):
            try:
                signer = verify_headers(stored.subject, stored.body, stored.headers)
            except SignatureError as exc:
                log.warning("checkpoint #%d does not verify: %s", stored.sequence, exc.reason)
                continue
            if signer != self.identity.public_key or not isinstance(stored.event, LogCheckpointed):
                log.warning("checkpoint #%d is not this store's; passed over", stored.sequence)
                continue
            signed = max(signed, stored.event.payload.tree_size)
        return signed

    async def _after_batch(self, position: Position, caught_up: bool) -> None:
        if not self._checkpoint_due(position, caught_up):
            return
        self._due = (position, caught_up)  # a publish in flight takes the newest next
        if self._checkpointing is None or self._checkpointing.done():
            self._checkpointing = asyncio.create_task(self._publish_due(), name="checkpoint")

    def _checkpoint_due(self, position: Position, caught_up: bool) -> bool:
        # One being published counts as published: the same checkpoints as if the
        # projection had waited for it.
        grown = position.tree_size - max(self.last_checkpoint, self._publishing)
        if grown <= 0:
            return False
        return grown >= self.store_settings.checkpoint_every or (
            caught_up
            and time.monotonic() - self._last_checkpoint_time
            >= self.store_settings.checkpoint_interval
        )

    async def _publish_due(self) -> None:
        while self._due is not None:
            (position, caught_up), self._due = self._due, None
            if not self._checkpoint_due(position, caught_up):
                continue  # the one just published covers it closely enough
            self._publishing = position.tree_size
            try:
                await self._publish_checkpoint(position)
            except MeshError as exc:
                log.warning(
                    "checkpoint at %d not published (next batch retries): %s",
                    position.tree_size,
                    exc,
                )
                return
            finally:
                self._publishing = 0

    async def _publish_checkpoint(self, position: Position) -> None:
        async with self._checkpoint_lock:
            if position.tree_size <= self.last_checkpoint:
                return
            event = LogCheckpointed(
                actor=self.store_settings.service_id,
                payload=LogCheckpointedPayload(
                    stream=self.topology.cases_stream,
                    tree_size=position.tree_size,
                    root_hash=position.frontier.root().hex(),
                ),
            )
            await self.publisher.publish(event)
            self.last_checkpoint = position.tree_size
            self._last_checkpoint_time = time.monotonic()
            log.info("checkpoint %d %s", position.tree_size, event.payload.root_hash[:16])

    async def checkpoint_now(self, timeout: float = 30.0) -> StoreStatus:
        """Catch up with everything the stream holds now, and sign a checkpoint of it."""
        assert self.projector is not None
        try:
            info = await self.js.stream_info(self.topology.cases_stream)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            raise BrokerError("read the case stream's state", repr(exc)) from exc
        try:
            position = await self.projector.wait_for(info.state.last_seq, timeout)
        except TimeoutError:
            raise MeshError(
                f"the projection did not reach sequence {info.state.last_seq} in {timeout}s"
            ) from None
        await self._publish_checkpoint(position)
        return await self.status()

    async def status(self) -> StoreStatus:
        assert self.store is not None
        assert self.projector is not None
        position = self.projector.position
        if position is None:
            position = await asyncio.to_thread(self.store.position)
        n_cases, flagged = await asyncio.to_thread(self.store.counts)
        return StoreStatus(
            last_sequence=position.last_sequence,
            tree_size=position.tree_size,
            root_hash=position.frontier.root().hex(),
            last_checkpoint_size=self.last_checkpoint,
            cases=n_cases,
            flagged_events=flagged,
        )

    # ------------------------------------------------------------------ manifests

    def _merkle_tree(self, tree_size: int) -> MerkleTree:
        assert self.store is not None
        if self._tree is None or self._tree[0] != tree_size:
            self._tree = (tree_size, MerkleTree(self.store.leaf_hashes(tree_size)))
        return self._tree[1]

    async def _principals(self) -> list[AuditPrincipal]:
        records = {r.card.agent_id: r for r in await self.registry.find()}
        principals = []
        for keys in await self.registry.keys():
            record = records.get(keys.agent_id)
            principals.append(
                AuditPrincipal(
                    keys=keys,
                    kind=record.card.kind if record else "service",
                    roles=list(record.card.roles) if record else [],
                )
            )
        return principals

    def _manifest_page(
        self, request: ManifestRequest, principals: list[AuditPrincipal]
    ) -> tuple[SignedDocument, Proofs]:
        assert self.store is not None
        page_size = max(1, min(request.page_size, 5000))
        rows = list(
            self.store.stored_messages(
                request.case_id, request.tree_size, after=request.after_sequence, limit=page_size
            )
        )
        full = len(rows) == page_size
        manifest = Manifest(
            store=self.store_settings.service_id,
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

    # ------------------------------------------------------------------ requests

    async def _serve(self, msg: Msg) -> None:
        if not is_inbox(msg.reply):
            return  # never lend our permissions to a reply subject that is not an inbox
        operation = msg.subject.rsplit(".", 1)[-1]
        handler = self._handlers().get(operation, self._unknown)
        try:
            reply = await handler(msg.data)
        except (Refused, msgspec.ValidationError, msgspec.DecodeError) as exc:
            reply = StoreReply(ok=False, error=str(exc))
        except (MeshError, DBAPIError) as exc:
            log.warning("eventstore %s failed: %s", operation, exc)
            reply = StoreReply(ok=False, error=f"the event store could not answer: {exc}")
        await respond(msg, _encode_reply(reply), what=f"eventstore {operation}")

    def _handlers(self) -> dict[str, Callable[[bytes], Awaitable[StoreReply]]]:
        return {
            "cases": self._cases,
            "case": self._case,
            "timeline": self._timeline,
            "activity": self._activity,
            "status": self._status,
            "checkpoint": self._checkpoint,
            "manifest": self._manifest,
        }

    async def _unknown(self, _body: bytes) -> StoreReply:
        raise Refused("unknown operation: use one of " + ", ".join(sorted(self._handlers())))

    async def _cases(self, body: bytes) -> StoreReply:
        assert self.store is not None
        query = msgspec.json.decode(body or b"{}", type=CaseQuery)
        return StoreReply(ok=True, cases=await asyncio.to_thread(self.store.list_cases, query))

    async def _case(self, body: bytes) -> StoreReply:
        assert self.store is not None
        request = msgspec.json.decode(body, type=CaseRequest)
        detail = await asyncio.to_thread(self.store.case_detail, request.case_id)
        if detail is None:
            raise Refused(f"no case {request.case_id!r} in the log")
        return StoreReply(ok=True, detail=detail)

    async def _timeline(self, body: bytes) -> StoreReply:
        assert self.store is not None
        request = msgspec.json.decode(body, type=CaseRequest)
        timeline = await asyncio.to_thread(self.store.timeline, request.case_id)
        if not timeline:
            raise Refused(f"no case {request.case_id!r} in the log")
        return StoreReply(ok=True, timeline=timeline)

    async def _activity(self, body: bytes) -> StoreReply:
        assert self.store is not None
        query = msgspec.json.decode(body or b"{}", type=ActivityQuery)
        return StoreReply(
            ok=True, activity=await asyncio.to_thread(self.store.activity, query.actor)
        )

    async def _status(self, _body: bytes) -> StoreReply:
        return StoreReply(ok=True, status=await self.status())

    async def _checkpoint(self, _body: bytes) -> StoreReply:
        return StoreReply(ok=True, status=await self.checkpoint_now())

    async def _manifest(self, body: bytes) -> StoreReply:
        assert self.projector is not None
        request = msgspec.json.decode(body, type=ManifestRequest)
        held = self.projector.position.last_sequence if self.projector.position else 0
        if not 0 < request.tree_size <= held:
            raise Refused(f"tree size {request.tree_size} is not in the views (they hold {held})")
        principals = await self._principals() if request.after_sequence == 0 else []
        document, proofs = await asyncio.to_thread(self._manifest_page, request, principals)
        return StoreReply(ok=True, manifest=document, proofs=proofs)
