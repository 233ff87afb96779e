"""Replaying a dead letter: the one consumer that gave up on a message gets that message
again — the message as the case log holds it, never as a dead letter describes it.

A dead letter is filed by the consumer that gave up, on its own subject
(`<root>.dlq.<stream>.<consumer>`, which the broker lets only that consumer publish),
signed by it over where the original is stored (`Mesh-Dlq-Filed-By` and
`Mesh-Dlq-Filing-Signature` over `<stream>:<sequence>`). An operator replays it by
sequence (`mesh dlq replay SEQ`): a small pointer to the dead letter goes to the
consumer's replay subject. The consumer (or, for an agent, the case reader on its
behalf) resolves the pointer here: the dead letter must be on that consumer's own
subject and signed by it, and the original is read from the case stream by its
sequence — its subject, bytes, headers and the broker's time — so nothing an attacker
wrote into a dead letter's headers or body can choose what is delivered, or when it
counts as written.
"""

from __future__ import annotations

from nats.aio.client import Client

from mesh._broker.direct_get import read_one
from mesh._broker.stored_messages import RawMessage
from mesh._broker.topology import Topology
from mesh._runtime.dead_letters import (
    FILED_BY,
    FILING_SIGNATURE,
    ORIGINAL_SEQUENCE,
    ORIGINAL_STREAM,
    filing_statement,
)
from mesh._trust.identity import verify
from mesh._trust.key_directory import KeyDirectory
from mesh.errors import ReplayRefused, SignatureError


async def resolve_replay(
    nc: Client,
    topology: Topology,
    consumer: str,
    dead_letter_sequence: int,
    keys: KeyDirectory | None,
) -> RawMessage:
    """The original message a dead letter of `consumer` points to, from the case log."""
    letter = await read_one(nc, topology.dead_letter_stream, dead_letter_sequence)
    if letter is None:
        raise ReplayRefused(dead_letter_sequence, "no such dead letter")
    own = topology.subjects.dead_letter(topology.cases_stream, consumer)
    if letter.subject != own:
        raise ReplayRefused(
            dead_letter_sequence, f"it was filed on {letter.subject}, not by {consumer} ({own})"
        )
    stream = letter.headers.get(ORIGINAL_STREAM, "")
    sequence = letter.headers.get(ORIGINAL_SEQUENCE, "")
    filer = letter.headers.get(FILED_BY, "")
    signature = letter.headers.get(FILING_SIGNATURE, "")
    if stream != topology.cases_stream or not sequence.isdigit():
        raise ReplayRefused(dead_letter_sequence, "it does not point into the case log")
    try:
        verify(filer, own, filing_statement(stream, int(sequence)), signature)
        if keys is not None:
            await keys.ensure_current(letter.stored_at)
            keys.check(filer, consumer, letter.stored_at, own)
    except SignatureError as exc:
        raise ReplayRefused(
            dead_letter_sequence, f"not filed by {consumer}: {exc.reason}"
        ) from None
    original = await read_one(nc, topology.cases_stream, int(sequence))
    if original is None:
        raise ReplayRefused(dead_letter_sequence, f"the case log has no message {sequence}")
    return original
