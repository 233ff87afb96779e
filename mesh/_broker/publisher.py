"""Publishing events: signed, de-duplicated, and optionally conditional on the case.

- `Nats-Msg-Id = event_id`: JetStream drops a second copy of the same event within
  the stream's duplicate window, so a retry or a redelivered handler is harmless.
- Per-case optimistic concurrency: with `expected_case_sequence`, the server stores the
  event only if the last event on `<root>.case.<id>.*` still has that sequence
  (`Nats-Expected-Last-Subject-Sequence` + `…-Subject`); otherwise ConcurrencyConflict.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.codec import encode
from contracts.envelope import Event
from contracts.subjects import key_of
from mesh._broker.connection import refused
from mesh._broker.errors import broker_errors
from mesh._broker.topology import Topology
from mesh._trust.identity import Identity
from mesh.errors import ConcurrencyConflict, PermissionDenied, PublishFailed

log = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"
_WRONG_LAST_SEQUENCE = 10071


@dataclass(frozen=True)
class Receipt:
    stream: str
    sequence: int
    duplicate: bool


class EventPublisher:
    def __init__(
        self,
        js: JetStreamContext,
        identity: Identity,
        topology: Topology,
        timeout: float = 5.0,
        *,
        nc: Client | None = None,
    ) -> None:
        self.js = js
        self.nc = nc  # to tell a permissions refusal from a slow server
        self.identity = identity
        self.topology = topology
        self.timeout = timeout

    async def publish(
        self,
        event: Event,
        *,
        expected_case_sequence: int | None = None,
        expected_sequence: int | None = None,
        expected_scope: str | None = None,
    ) -> Receipt:
        """Publish, signed and de-duplicated. With `expected_sequence` (for case events
        also spelled `expected_case_sequence`), store it only if the newest event under
        the same key (the case, the agent…) — or on `expected_scope`, a narrower subject
        such as the case's opening — still has that stream sequence."""
        subject = self.topology.subjects.for_event(event)
        body = encode(event)
        headers = self.identity.signature_headers(subject, body)
        headers[MSG_ID_HEADER] = event.event_id
        expected = expected_sequence if expected_sequence is not None else expected_case_sequence
        if expected is None:
            return await self.publish_raw(subject, body, headers)
        scope = expected_scope or self.topology.subjects.history(event.family, event.subject_key())
        headers[EXPECTED_SUBJECT_SEQUENCE] = str(expected)
        headers[EXPECTED_SUBJECT_SEQUENCE_SUBJECT] = scope
        try:
            return await self.publish_raw(subject, body, headers)
        except ConcurrencyConflict:
            # The server checks the expectation before de-duplication, so a retry of a
            # conditional publish that was in fact stored looks like a conflict with our
            # own write. Look for it after the expected sequence before saying so.
            stream = self.topology.stream_for_family(event.family)
            stored = await self._stored_after(stream, scope, expected, event.event_id)
            if stored is not None:
                return stored
            raise

    async def publish_raw(
        self,
        subject: str,
        body: bytes,
        headers: dict[str, str],
    ) -> Receipt:
        try:
            ack = await self.js.publish(subject, body, timeout=self.timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE and EXPECTED_SUBJECT_SEQUENCE in headers:
                key = key_of(subject) or subject  # the case (agent…) that moved on
                expected = int(headers[EXPECTED_SUBJECT_SEQUENCE])
                raise ConcurrencyConflict(key, expected, exc.description or "") from None
            raise PublishFailed(subject, f"{exc.description} (code {exc.err_code})") from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            refusal = refused(self.nc, subject) if self.nc is not None else None
            if refusal is not None:
                raise PermissionDenied(subject, refusal) from exc
            raise PublishFailed(subject, "no ack from JetStream in time") from exc
        except nats.js.errors.NoStreamResponseError as exc:
            raise PublishFailed(subject, "no stream captures this subject") from exc
        except nats.errors.Error as exc:
            raise PublishFailed(subject, repr(exc)) from exc
        return Receipt(ack.stream, ack.seq, bool(ack.duplicate))

    async def _stored_after(
        self, stream: str, scope: str, after: int, event_id: str
    ) -> Receipt | None:
        sequence = after + 1
        while True:
            with broker_errors(f"read {scope}"):
                try:
                    msg = await self.js.get_msg(stream, seq=sequence, subject=scope, next=True)
                except nats.js.errors.NotFoundError:
                    return None
            if (msg.headers or {}).get(MSG_ID_HEADER) == event_id:
                return Receipt(stream, int(msg.seq or sequence), duplicate=True)
            sequence = int(msg.seq or sequence) + 1

    async def last_case_sequence(self, case_id: str) -> int:
        """The stream sequence of the case's newest event, 0 if it has none."""
        return await self.last_sequence("case", case_id)

    async def last_sequence(self, family: str, key: str) -> int:
        """The stream sequence of the newest event under `key` in `family`, 0 if none."""
        subject = self.topology.subjects.history(family, key)
        with broker_errors(f"read last event of {subject}"):
            try:
                msg = await self.js.get_last_msg(self.topology.stream_for_family(family), subject)
            except nats.js.errors.NotFoundError:
                return 0
        return int(msg.seq or 0)
