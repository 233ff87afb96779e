"""How an agent reads the case log under the registry's enforcement: through the case
reader (services/reader), asking under its own name, which hands out only what its
card reads of the cases it works on (contracts.reader_api). Without enforcement the
runtime reads the stream itself.
"""

from __future__ import annotations

import msgspec
from nats.aio.client import Client

from contracts.audit_bundle import StoredMessage
from contracts.reader_api import HistoryRequest, ReaderReply, ReplayRequest
from mesh._broker.direct_get import read_until
from mesh._broker.stored_messages import RawMessage
from mesh._broker.topology import Topology
from mesh._trust.registry_client import request_with_patience
from mesh.errors import BrokerError, ReadRefused, ReplayRefused

_reply = msgspec.json.Decoder(ReaderReply)


# A case longer than this many reply pages is not read (about 640 MB of events).
MAX_PAGES = 1000


class CaseReader:
    def __init__(
        self, nc: Client, topology: Topology, principal: str, *, timeout: float = 5.0
    ) -> None:
        self.nc = nc
        self.topology = topology
        self.principal = principal
        self.timeout = timeout

    async def _ask(self, operation: str, request: object) -> ReaderReply:
        subject = self.topology.subjects.service_as("reader", operation, self.principal)
        msg = await request_with_patience(
            self.nc,
            subject,
            msgspec.json.encode(request),
            timeout=self.timeout,
            what=f"reader {operation} (is the case reader running?)",
        )
        try:
            reply = _reply.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise BrokerError(f"reader {operation}", f"unreadable reply: {exc}") from None
        if not reply.ok:
            raise ReadRefused(operation, reply.error or "no reason given")
        return reply

    async def history(self, case_id: str, at_least: int = 0) -> list[RawMessage]:
        """The case as the reader lets us read it; with `at_least`, asked again until
        the reader's answer reflects that sequence (it may have read a replica behind
        it). The asker loops, not the reader (see `read_until`)."""

        async def ask() -> tuple[list[RawMessage], int]:
            reply = await self._ask("history", HistoryRequest(case_id=case_id))
            found = [_raw(m) for m in reply.messages]
            newest = reply.last_sequence
            for _ in range(MAX_PAGES):
                if not reply.more or not reply.messages:
                    return found, newest
                after = reply.messages[-1].sequence
                reply = await self._ask("history", HistoryRequest(case_id=case_id, after=after))
                found += [_raw(m) for m in reply.messages]
            raise BrokerError("reader history", f"case {case_id} is longer than {MAX_PAGES} pages")

        return await read_until(ask, at_least, "reader history", "case reader")

    async def replayed(self, dead_letter_sequence: int) -> RawMessage:
        """The message a dead letter of ours points to; ReplayRefused if the reader
        refuses it (a refusal is permanent: the same replay will be refused again)."""
        request = ReplayRequest(dead_letter_sequence=dead_letter_sequence)
        try:
            reply = await self._ask("replay", request)
        except ReadRefused as exc:
            raise ReplayRefused(dead_letter_sequence, exc.reason) from None
        [message] = reply.messages
        return _raw(message)


def _raw(message: StoredMessage) -> RawMessage:
    return RawMessage(
        sequence=message.sequence,
        subject=message.subject,
        body=message.body,
        headers=message.headers,
        stored_at=message.stored_at,
    )
