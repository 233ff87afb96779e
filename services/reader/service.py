"""The case reader: `<root>.svc.reader.<operation>.<principal>` (contracts.reader_api).

The broker lets each principal publish only under its own name, so the last token says
who asks; replies go to that principal's own inbox (`_INBOX.<principal>.…`), which
only it may read. The reader itself may read the whole case log (batched direct gets)
and follows the registry's cards like every consumer, never judging a request with a
directory older than the messages it hands out. It keeps no state: run as many as
needed (a queue group shares the requests).
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client

from contracts.audit_bundle import StoredMessage
from contracts.authorship import TIMER_TYPES
from contracts.reader_api import HistoryRequest, ReaderReply, ReplayRequest
from contracts.subjects import event_type_of
from mesh.service import (
    KeyDirectory,
    MeshSettings,
    RawMessage,
    Request,
    RequestServer,
    Topology,
    read_direct,
    resolve_replay,
    topology_for,
)
from services.reader.domain import readable_history, replayable

_history = msgspec.json.Decoder(HistoryRequest)
_replay = msgspec.json.Decoder(ReplayRequest)
_encode = msgspec.json.Encoder().encode
# What one history reply may carry of messages, encoded: well inside the broker's 1 MB
# (a case event is at most CASE_EVENT_MAX_BYTES, a third more once in base64).
PAGE_BYTES = 640 * 1024


def _actor(message: RawMessage) -> str | None:
    """Who wrote `message`, if it reads as an event."""
    try:
        return _envelope.decode(message.body).actor
    except (msgspec.DecodeError, RecursionError):  # unreadable: nobody's timer
        return None


class _Envelope(msgspec.Struct):
    actor: str


_envelope = msgspec.json.Decoder(_Envelope)


def _stored(message: RawMessage) -> StoredMessage:
    return StoredMessage.of(
        message.sequence, message.subject, message.stored_at, message.headers, message.body
    )


def _refusal(reason: str) -> bytes:
    return _encode(ReaderReply(ok=False, error=reason))


class ReaderService:
    def __init__(self, nc: Client, settings: MeshSettings, topology: Topology | None = None):
        self.nc = nc
        self.topology = topology or topology_for(settings)
        self.keys = KeyDirectory()
        self.server = RequestServer(
            nc,
            self.topology.subjects,
            "reader",
            _refusal,
            queue="reader",
            private_replies=settings.nkey_auth,
        )
        self.server.route("history", self._history, as_principal=True)
        self.server.route("replay", self._replay, as_principal=True)

    async def start(self) -> None:
        await self.keys.follow(self.nc, self.topology)
        await self.server.start()

    async def stop(self) -> None:
        await self.server.stop()
        await self.keys.close()

    async def _history(self, request: Request) -> bytes:
        return _encode(await self.history(request.principal, _history.decode(request.body)))

    async def _replay(self, request: Request) -> bytes:
        return _encode(await self.replay(request.principal, _replay.decode(request.body)))

    async def history(self, principal: str, request: HistoryRequest) -> ReaderReply:
        messages = await read_direct(
            self.nc,
            self.topology.cases_stream,
            self.topology.subjects.case_history(request.case_id),
        )
        if messages:
            await self.keys.ensure_current(messages[-1].stored_at)
        card = self.keys.card_at(principal, datetime.now(UTC))
        readable = readable_history(
            card, principal, request.case_id, (event_type_of(m.subject) for m in messages)
        )
        page: list[StoredMessage] = []
        size = 0
        for message in messages:
            if message.sequence <= request.after or event_type_of(message.subject) not in readable:
                continue
            if event_type_of(message.subject) in TIMER_TYPES and _actor(message) != principal:
                continue  # another agent's timers (what it waits for, by when): its own business
            stored = _stored(message)
            cost = len(_encode(stored))
            if page and size + cost > PAGE_BYTES:
                return ReaderReply(
                    ok=True, messages=page, last_sequence=messages[-1].sequence, more=True
                )
            page.append(stored)
            size += cost
        return ReaderReply(ok=True, messages=page, last_sequence=messages[-1].sequence)

    async def replay(self, principal: str, request: ReplayRequest) -> ReaderReply:
        original = await resolve_replay(
            self.nc, self.topology, principal, request.dead_letter_sequence, self.keys
        )
        await self.keys.ensure_current(original.stored_at)
        replayable(
            self.keys.card_at(principal, datetime.now(UTC)),
            principal,
            event_type_of(original.subject),
        )
        return ReaderReply(ok=True, messages=[_stored(original)], last_sequence=original.sequence)
