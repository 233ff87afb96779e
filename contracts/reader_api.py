"""Request/reply contracts of the case reader (`<root>.svc.reader.<operation>.<principal>`).

Under the registry's enforcement an agent cannot read the case log directly: it asks
the reader, under its own name (the broker lets each principal publish only its own
`<principal>` token), and gets only what its card lets it read of the cases it works on.

    history    HistoryRequest: a case's messages, oldest first, of the event types the
               asker's card in force reads (consumes, produces or `reads`) — only if
               the case holds an event of a type the asker consumes (it works on it);
               in pages (`more`, then `after`), each well inside a NATS message
    replay     ReplayRequest: the message a dead letter of the asker's own consumer
               points to, taken from the case log by sequence (never from the dead
               letter's headers), if its type is one the asker consumes

Every reply is a ReaderReply: ok with the messages exactly as stored, or an error that
says why not.
"""

from __future__ import annotations

import msgspec

from contracts.audit_bundle import StoredMessage

READER_OPERATIONS = ("history", "replay")


class HistoryRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    case_id: str
    after: int = 0  # only messages stored after this sequence (the next page)


class ReplayRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    dead_letter_sequence: int


class ReaderReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    error: str | None = None
    messages: list[StoredMessage] = msgspec.field(default_factory=list)
    # The case's newest stream sequence (any type): what optimistic concurrency needs,
    # without the asker reading what it may not.
    last_sequence: int = 0
    # A history answers in pages that fit a NATS message: `more` says there is another,
    # asked for with `after` = the last message's sequence here.
    more: bool = False
