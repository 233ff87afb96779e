"""What the ingress answers when it does not take a request, the same for an opening and
for an event added to a case: the refusal kept in the dead-letter stream with its
reasons, or a failure of the mesh (not kept: nothing was judged)."""

from __future__ import annotations

import logging

from contracts.ingress import IngressReply
from mesh.service import DeadLetterSink
from services.ingress.body import ReceivedBody
from services.ingress.json_body import Limits
from services.ingress.problems import Refusal, describe, problem
from services.ingress.settings import IngressSettings

log = logging.getLogger(__name__)


async def keep_refused(
    dead_letters: DeadLetterSink,
    ingress: IngressSettings,
    limits: Limits,
    *,
    source: str,
    received: ReceivedBody,
    received_on: str,
    refusal: Refusal,
) -> IngressReply:
    """Keep refused input with its reasons (whole below the body limit, else its start,
    size and digest) and answer with them and where it is kept."""
    body, headers = received.kept(
        whole_up_to=limits.max_body_bytes, prefix=ingress.dead_letter_keep_bytes
    )
    kept = await dead_letters.refused_input(
        received_on=received_on,
        body=body,
        reason="; ".join(refusal.errors),
        source=source,
        consumer=ingress.service_id,
        headers=headers,
    )
    log.info(
        "refused input from %r on %s (dead letter %d): %s",
        source,
        received_on,
        kept,
        refusal.errors,
    )
    return IngressReply(
        ok=False, errors=refusal.errors, problems=refusal.problems, dead_letter=kept
    )


def failed(code: str, message: str) -> IngressReply:
    """A request the ingress could not judge (unavailable, internal, rate limited)."""
    found = problem("$", code, message)
    return IngressReply(ok=False, errors=[describe(found)], problems=[found])
