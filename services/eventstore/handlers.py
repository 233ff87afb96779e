"""The event store's request/reply endpoints, on `<root>.svc.eventstore.<operation>`:

    cases       CaseQuery       -> the cases (filter by status/kind, paged by case id)
    case        CaseRequest     -> one case with its actions
    timeline    CaseRequest     -> the case's audit timeline
    activity    ActivityQuery   -> per-agent activity
    status      (empty)         -> position, tree size and root, last checkpoint
    checkpoint  (empty)         -> catch up with the stream, publish a checkpoint, status
    manifest    ManifestRequest -> one signed manifest page, with its proofs

Every replica answers the reads, from the one database; `checkpoint` is answered by the
active replica alone (`route_active`), the only one projecting and signing — while
none is (a takeover under way), the asker hears "no responders" and asks again.

Each answers a `StoreReply`; a refusal, a malformed request or a store that cannot
answer now is `StoreReply(ok=False, error=…)` (the RequestServer's mapping). An
operation not listed here is not served: the asker hears "no responders" at once.
"""

from __future__ import annotations

import asyncio

import msgspec

from contracts.eventstore_api import (
    ActivityQuery,
    CaseQuery,
    CaseRequest,
    ManifestRequest,
    StoreReply,
    StoreStatus,
)
from mesh.service import Refused, RegistryClient, Request, RequestServer
from services.eventstore.checkpoints import Checkpoints
from services.eventstore.manifests import ManifestPages, principals
from services.eventstore.projector import Projector
from services.eventstore.views import ViewStore

_encode = msgspec.json.Encoder().encode
_cases = msgspec.json.Decoder(CaseQuery)
_case = msgspec.json.Decoder(CaseRequest)
_activity = msgspec.json.Decoder(ActivityQuery)
_manifest = msgspec.json.Decoder(ManifestRequest)


def refusal(reason: str) -> bytes:
    return _encode(StoreReply(ok=False, error=reason))


class Endpoints:
    def __init__(
        self,
        store: ViewStore,
        projector: Projector,
        checkpoints: Checkpoints,
        pages: ManifestPages,
        registry: RegistryClient,
    ) -> None:
        self.store = store
        self.projector = projector
        self.checkpoints = checkpoints
        self.pages = pages
        self.registry = registry

    def route(self, server: RequestServer) -> None:
        server.route("cases", self._cases)
        server.route("case", self._case)
        server.route("timeline", self._timeline)
        server.route("activity", self._activity)
        server.route("status", self._status)
        server.route("manifest", self._manifest)

    def route_active(self, server: RequestServer) -> None:
        """What only the active replica (the lease's holder) answers."""
        server.route("checkpoint", self._checkpoint)

    async def status(self) -> StoreStatus:
        position = self.projector.position
        if position is None:
            position = await asyncio.to_thread(self.store.position)
        n_cases, flagged = await asyncio.to_thread(self.store.counts)
        return StoreStatus(
            last_sequence=position.last_sequence,
            tree_size=position.tree_size,
            root_hash=position.frontier.root().hex(),
            last_checkpoint_size=self.checkpoints.last,
            cases=n_cases,
            flagged_events=flagged,
        )

    async def checkpoint_now(self, timeout: float = 30.0) -> StoreStatus:
        """Catch up with everything the stream holds now, and sign a checkpoint of it."""
        await self.checkpoints.catch_up(self.projector, timeout)
        return await self.status()

    async def _cases(self, request: Request) -> bytes:
        query = _cases.decode(request.body or b"{}")
        return _encode(
            StoreReply(ok=True, cases=await asyncio.to_thread(self.store.list_cases, query))
        )

    async def _case(self, request: Request) -> bytes:
        case_id = _case.decode(request.body).case_id
        detail = await asyncio.to_thread(self.store.case_detail, case_id)
        if detail is None:
            raise Refused(f"no case {case_id!r} in the log")
        return _encode(StoreReply(ok=True, detail=detail))

    async def _timeline(self, request: Request) -> bytes:
        case_id = _case.decode(request.body).case_id
        timeline = await asyncio.to_thread(self.store.timeline, case_id)
        if not timeline:
            raise Refused(f"no case {case_id!r} in the log")
        return _encode(StoreReply(ok=True, timeline=timeline))

    async def _activity(self, request: Request) -> bytes:
        actor = _activity.decode(request.body or b"{}").actor
        return _encode(
            StoreReply(ok=True, activity=await asyncio.to_thread(self.store.activity, actor))
        )

    async def _status(self, _request: Request) -> bytes:
        return _encode(StoreReply(ok=True, status=await self.status()))

    async def _checkpoint(self, _request: Request) -> bytes:
        return _encode(StoreReply(ok=True, status=await self.checkpoint_now()))

    async def _manifest(self, request: Request) -> bytes:
        asked = _manifest.decode(request.body)
        # What the database holds, committed: on any replica, active or standby.
        held = (await asyncio.to_thread(self.store.position)).last_sequence
        if not 0 < asked.tree_size <= held:
            raise Refused(f"tree size {asked.tree_size} is not in the views (they hold {held})")
        # The first page names the principals; later pages need not repeat them.
        named = await principals(self.registry) if asked.after_sequence == 0 else []
        document, proofs = await asyncio.to_thread(self.pages.page, asked, named)
        return _encode(StoreReply(ok=True, manifest=document, proofs=proofs))
