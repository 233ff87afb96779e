"""The one way a service answers a request: only ever on an `_INBOX.` subject.

A request names its own reply subject, and the service publishes the answer there with
the service's permissions. Were any subject accepted, a caller could name a subject of
the log (`<root>.case.<id>.case_opened`) and have the service write an unsigned reply
into it, where it would stay for ever. Requesters' replies live under `_INBOX.` (nats
clients' default inbox prefix, and the per-principal prefix the registry grants), and
no stream stores that, so an answer there can land nowhere else.
"""

from __future__ import annotations

import logging
import re

import nats.errors
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

INBOX_PREFIX = "_INBOX."
# Literal tokens only: a wildcard or whitespace would not name one requester's inbox.
_INBOX = re.compile(r"_INBOX(?:\.[^.*>\s]+)+")


def is_inbox(subject: str) -> bool:
    """Whether `subject` is a requester's private reply subject (`_INBOX.<token>…`)."""
    return _INBOX.fullmatch(subject) is not None


async def respond(msg: Msg, body: bytes, *, what: str) -> bool:
    """Answer `msg` with `body` if it asked for an answer on an inbox; say whether it was
    sent. A request without a reply subject wanted none; one whose reply subject is not
    an inbox is not answered (and the refusal is logged); a failing send is logged. None
    of these raises: the request itself has been handled either way."""
    if not msg.reply:
        return False
    if not is_inbox(msg.reply):
        log.warning(
            "not answering %s on %r: replies go only to %s subjects", what, msg.reply, INBOX_PREFIX
        )
        return False
    try:
        await msg.respond(body)
    except nats.errors.Error as exc:
        log.warning("could not answer %s on %s: %r", what, msg.reply, exc)
        return False
    return True
