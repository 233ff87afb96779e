"""Joining a mesh whose broker enforces the registry: register the card over the
anonymous onboarding user (a new agent presents its operator's enrolment grant), wait
until the agent is active with this card in force (the registry has then granted its
nkey user), and connect with the agent's own key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client

from contracts.cards import AgentCard, AgentKey, AgentRecord, SignedStatement
from contracts.subjects import Subjects
from mesh._broker.connection import connect
from mesh._trust.identity import Identity
from mesh._trust.registry_client import RegistryClient
from mesh.errors import BrokerError, ConfigurationError, RegistryRefused

log = logging.getLogger(__name__)


ONBOARDING_ID = "onboarding"  # reserved: no agent may take this id


def inbox_prefix(principal_id: str) -> str:
    """A principal's private reply subjects: the broker lets only it subscribe there,
    while services may reply to any `_INBOX.>`."""
    return f"_INBOX.{principal_id}"


def card_with_key(card: AgentCard, identity: Identity) -> AgentCard:
    """The card as submitted: it names the key the agent runs (and signs) with."""
    if any(key.public_key == identity.public_key for key in card.keys):
        return card
    key = AgentKey(public_key=identity.public_key, valid_from=datetime.now(UTC))
    return msgspec.structs.replace(card, keys=[key])


async def register(
    url: str,
    card: AgentCard,
    identity: Identity,
    subjects: Subjects,
    *,
    wait: float,
    poll: float = 1.0,
    grant: SignedStatement | None = None,
) -> AgentRecord:
    """Register (idempotently) until the registry says the agent is active with this
    card in force. A wider card than the one in force waits for an operator's approval."""
    card = card_with_key(card, identity)
    nc = await connect(
        url,
        name=f"onboarding:{card.agent_id}",
        inbox_prefix=inbox_prefix(ONBOARDING_ID),
        reconnect=False,
    )
    try:
        client = RegistryClient(nc, subjects)
        deadline = time.monotonic() + wait
        while True:
            record = await client.register(card, identity, grant=grant)
            proposed = record.pending_card is not None and _same_scope(record.pending_card, card)
            if record.status == "active" and not proposed:
                return record
            if record.status in ("suspended", "revoked"):
                raise RegistryRefused(
                    "register", f"agent {card.agent_id} is {record.status}: {record.status_reason}"
                )
            if time.monotonic() >= deadline:
                raise ConfigurationError(
                    f"agent {card.agent_id}: its card (version {card.version}) is not in force "
                    f"after {wait:.0f}s: an operator must approve it "
                    f"(`mesh registry approve {card.agent_id}`) or grant it"
                )
            log.info("agent %s registered; waiting for an operator", card.agent_id)
            await asyncio.sleep(poll)
    finally:
        await nc.close()


def _same_scope(registered: AgentCard, card: AgentCard) -> bool:
    """The registry normalises status and key times; the rest is what was asked."""
    return msgspec.structs.replace(registered, status=card.status, keys=[]) == (
        msgspec.structs.replace(card, keys=[])
    )


async def connect_as(
    url: str,
    principal_id: str,
    identity: Identity,
    *,
    attempts: int = 10,
    on_credentials_refused: Callable[[], None] | None = None,
) -> Client:
    """Connect with the principal's nkey. Right after activation the server may still be
    reloading its authorization, so an auth refusal is retried briefly."""
    for attempt in range(1, attempts + 1):
        try:
            return await connect(
                url,
                name=f"agent:{principal_id}",
                identity=identity,
                inbox_prefix=inbox_prefix(principal_id),
                on_credentials_refused=on_credentials_refused,
            )
        except BrokerError:
            if attempt == attempts:
                raise
            await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")
