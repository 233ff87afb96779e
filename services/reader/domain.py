"""What a principal may read of a case (pure).

Least privilege for reads as for writes: an agent reads only the cases it works on —
those holding an event of a type its card consumes, i.e. that were delivered to it —
and of those only the event types its card in force reads (what it consumes, what it
produces, and its `reads`) — timer events only its own. Anything else is refused with
the reason.
"""

from __future__ import annotations

from collections.abc import Iterable

from contracts.cards import AgentCard
from mesh.service import Refused


def readable_history(
    card: AgentCard | None, principal: str, case_id: str, event_types: Iterable[str]
) -> frozenset[str]:
    """The event types of this case `principal` may read; Refused if none."""
    if card is None:
        raise Refused(f"{principal} holds no card in force")
    if not set(event_types) & set(card.consumes):
        # One answer whether the case exists or not: the reader is no oracle of which
        # cases there are.
        raise Refused(
            f"{principal} works on no case {case_id!r}: it holds no event of a type "
            f"{principal} consumes ({sorted(card.consumes)})"
        )
    return card.readable


def replayable(card: AgentCard | None, principal: str, event_type: str) -> None:
    """A replay delivers only what the consumer consumes."""
    if card is None:
        raise Refused(f"{principal} holds no card in force")
    if event_type not in card.consumes:
        raise Refused(f"{principal} does not consume {event_type}")
