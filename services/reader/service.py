"""The case reader: `<root>.svc.reader.<operation>.<principal>` (contracts.reader_api).

The broker lets each principal publish only under its own name, so the last token says
who asks; replies go to that principal's own inbox (`_INBOX.<principal>.…`), which
only it may read. The reader itself may read the whole case log (batched direct gets)
and follows the registry's cards like every consumer, never judging a request with a
directory older than the messages it hands out. It keeps no state: run as many as
needed (a queue group shares the requests).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts.audit_bundle import StoredMessage
from contracts.errors import ContractError
from contracts.reader_api import HistoryRequest, ReaderReply, ReplayRequest
from mesh.service import (
    KeyDirectory,
    MeshError,
    MeshSettings,
    RawMessage,
    ReplayRefused,
    Topology,
    read_direct,
    resolve_replay,
    respond,
)
from services.reader.domain import ReadRefused, readable_history, replayable

log = logging.getLogger(__name__)
_history = msgspec.json.Decoder(HistoryRequest)
_replay = msgspec.json.Decoder(ReplayRequest)
_encode = msgspec.json.Encoder().encode


def _stored(message: RawMessage) -> StoredMessage:
    return StoredMessage.of(
        message.sequence, message.subject, message.stored_at, message.headers, message.body
    )


def _event_type(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


class ReaderService:
    def __init__(self, nc: Client, settings: MeshSettings, topology: Topology | None = None):
        self.nc = nc
        self.topology = topology or Topology(settings.subject_root, settings.stream_replicas)
        self.keys = KeyDirectory()
        self._subscription: Subscription | None = None

    async def start(self) -> None:
        await self.keys.follow(self.nc, self.topology)
        self._subscription = await self.nc.subscribe(
            self.topology.subjects.service_all("reader"), queue="reader", cb=self._serve
        )
        await self.nc.flush()

    async def stop(self) -> None:
        if self._subscription is not None:
            await self._subscription.unsubscribe()
        await self.keys.close()

    async def _serve(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        operation, principal = (tokens[-2], tokens[-1]) if len(tokens) == 5 else ("", "")
        try:
            if operation == "history":
                reply = await self.history(principal, _history.decode(msg.data))
            elif operation == "replay":
                reply = await self.replay(principal, _replay.decode(msg.data))
            else:
                reply = ReaderReply(ok=False, error="ask <root>.svc.reader.<history|replay>.<you>")
        except (ReadRefused, ReplayRefused) as exc:
            reply = ReaderReply(ok=False, error=exc.reason)
        except (msgspec.DecodeError, ContractError, RecursionError) as exc:
            reply = ReaderReply(ok=False, error=f"malformed {operation} request: {exc}")
        except MeshError as exc:
            log.warning("reader %s for %s failed: %s", operation, principal, exc)
            reply = ReaderReply(ok=False, error=f"the reader could not answer now: {exc}")
        except Exception as exc:
            # A bug must not leave the asker waiting for an answer that never comes.
            log.exception("reader %s for %s failed unexpectedly", operation, principal)
            reply = ReaderReply(ok=False, error=f"the reader could not answer: {exc!r}")
        await respond(msg, _encode(reply), what=f"reader {operation} for {principal}")

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
            card, principal, request.case_id, (_event_type(m.subject) for m in messages)
        )
        return ReaderReply(
            ok=True,
            messages=[_stored(m) for m in messages if _event_type(m.subject) in readable],
            last_sequence=messages[-1].sequence,
        )

    async def replay(self, principal: str, request: ReplayRequest) -> ReaderReply:
        original = await resolve_replay(
            self.nc, self.topology, principal, request.dead_letter_sequence, self.keys
        )
        await self.keys.ensure_current(original.stored_at)
        replayable(
            self.keys.card_at(principal, datetime.now(UTC)),
            principal,
            _event_type(original.subject),
        )
        return ReaderReply(ok=True, messages=[_stored(original)], last_sequence=original.sequence)
