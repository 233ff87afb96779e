"""Talking to the registry service over request/reply (`<root>.svc.registry.<op>`)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts.cards import AgentCard, AgentRecord, SignedStatement
from contracts.delegation import Delegation, DelegationRevocation
from contracts.registry_api import (
    ASKED_BY_NAME,
    GRANT_HEADER,
    CardApprovalRequest,
    Heartbeat,
    PrincipalKeys,
    RegistryQuery,
    RegistryReply,
    StatusChangeRequest,
)
from contracts.subjects import Subjects
from mesh._trust.identity import Identity
from mesh.errors import BrokerError, RegistryRefused

_reply_decoder = msgspec.json.Decoder(RegistryReply)
# Keys a card adds must sign it too: public key -> signature, as JSON, in this header.
KEY_PROOFS_HEADER = "Mesh-Key-Proofs"


async def request_with_patience(
    nc: Client,
    subject: str,
    body: bytes,
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    what: str,
    patience: float = 3.0,
) -> Msg:
    """A request to a mesh service. "No responders" is retried for a few seconds: a
    service restarting (or a subscription still propagating) is not an outage."""
    deadline = time.monotonic() + patience
    delay = 0.02
    while True:
        try:
            return await nc.request(subject, body, timeout=timeout, headers=headers)
        except nats.errors.NoRespondersError:
            if time.monotonic() + delay > deadline:
                raise BrokerError(what, "no service answers on " + subject) from None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
        except (nats.errors.Error, TimeoutError) as exc:
            raise BrokerError(what, repr(exc)) from exc


# How long a request waits for a registry to answer at all: the registry runs
# active/standby, and a standby serves only once the dead writer's lease has expired
# and it has rebuilt the state (longer while the cluster elects leaders).
REGISTRY_PATIENCE = 30.0


class RegistryClient:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        *,
        timeout: float = 5.0,
        asker: str | None = None,
        patience: float = REGISTRY_PATIENCE,
    ) -> None:
        """`asker`: the agent this connection is (under the registry's enforcement),
        which asks its reads under its own name. `patience`: how long "no registry
        answers" is asked again before it is an error."""
        self.nc = nc
        self.subjects = subjects
        self.timeout = timeout
        self.asker = asker
        self.patience = patience

    async def _request(
        self,
        operation: str,
        body: bytes,
        identity: Identity | None = None,
        proofs: tuple[Identity, ...] = (),
        grant: SignedStatement | None = None,
    ) -> RegistryReply:
        subject = (
            self.subjects.service_as("registry", operation, self.asker)
            if self.asker is not None and operation in ASKED_BY_NAME
            else self.subjects.service("registry", operation)
        )
        headers = identity.signature_headers(subject, body) if identity else None
        if headers is not None and proofs:
            headers[KEY_PROOFS_HEADER] = msgspec.json.encode(
                {proof.public_key: proof.sign(subject, body) for proof in proofs}
            ).decode()
        if headers is not None and grant is not None:
            headers[GRANT_HEADER] = msgspec.json.encode(grant).decode()
        msg = await request_with_patience(
            self.nc,
            subject,
            body,
            timeout=self.timeout,
            headers=headers,
            what=f"registry {operation}",
            patience=self.patience,
        )
        try:
            reply = _reply_decoder.decode(msg.data)
        except msgspec.DecodeError as exc:
            raise BrokerError(f"registry {operation}", f"unreadable reply: {exc}") from None
        if not reply.ok:
            raise RegistryRefused(operation, reply.error or "no reason given", reply.retry_after)
        return reply

    async def register(
        self,
        card: AgentCard,
        identity: Identity,
        *new_keys: Identity,
        grant: SignedStatement | None = None,
        patience: float = 30.0,
    ) -> AgentRecord:
        """Submit the card signed with `identity` (and by every key it adds, e.g. the
        next key in a rotation), with an operator's enrolment grant where one is needed;
        returns the registry's record. A busy registry is asked again for `patience` s."""
        deadline = time.monotonic() + patience
        body = msgspec.json.encode(card)
        while True:
            try:
                reply = await self._request("register", body, identity, new_keys, grant)
            except RegistryRefused as exc:
                if exc.retry_after is None or time.monotonic() + exc.retry_after > deadline:
                    raise
                await asyncio.sleep(exc.retry_after)
                continue
            return reply.records[0]

    async def approve(
        self, agent_id: str, card_digest: str, reason: str, operator: Identity
    ) -> AgentRecord:
        """Put the agent's proposed card (the one with this digest) in force."""
        body = msgspec.json.encode(
            CardApprovalRequest(agent_id=agent_id, card_digest=card_digest, reason=reason)
        )
        reply = await self._request("approve", body, operator)
        return reply.records[0]

    async def delegate(self, delegation: Delegation, delegator: Identity) -> None:
        """Record a delegation, signed by the delegator's key (refused with the reason
        if it gives more than the delegator holds)."""
        await self._request("delegate", msgspec.json.encode(delegation), delegator)

    async def revoke_delegation(self, delegation_id: str, reason: str, signer: Identity) -> None:
        """Revoke it now: signed by its delegator, someone up its chain, or an operator."""
        body = msgspec.json.encode(DelegationRevocation(delegation_id=delegation_id, reason=reason))
        await self._request("revoke_delegation", body, signer)

    async def keys_reply(self) -> RegistryReply:
        """Every principal's keys and cards, and the registry sequence they reflect,
        read page by page; if the registry moves meanwhile, read again from the start."""
        for _ in range(5):
            pages = await self._pages("keys", RegistryQuery())
            sequences = {page.registry_sequence for page in pages}
            if len(sequences) == 1:
                return RegistryReply(
                    ok=True,
                    keys=[k for page in pages for k in page.keys],
                    registry_sequence=sequences.pop(),
                )
        raise BrokerError("registry keys", "the registry kept moving while it was read")

    async def _pages(self, operation: str, query: RegistryQuery) -> list[RegistryReply]:
        pages = [await self._request(operation, msgspec.json.encode(query))]
        while pages[-1].next_after is not None:
            query = msgspec.structs.replace(query, after=pages[-1].next_after)
            pages.append(await self._request(operation, msgspec.json.encode(query)))
        return pages

    async def get(self, agent_id: str) -> AgentRecord:
        reply = await self._request("get", msgspec.json.encode(RegistryQuery(agent_id=agent_id)))
        return reply.records[0]

    async def find(self, query: RegistryQuery | None = None) -> list[AgentRecord]:
        pages = await self._pages("list", query or RegistryQuery())
        return [record for page in pages for record in page.records]

    async def keys(self) -> list[PrincipalKeys]:
        return (await self.keys_reply()).keys

    async def change_status(
        self, operation: str, agent_id: str, reason: str, operator: Identity
    ) -> AgentRecord:
        """activate / suspend / revoke, signed by an operator's key."""
        body = msgspec.json.encode(StatusChangeRequest(agent_id=agent_id, reason=reason))
        reply = await self._request(operation, body, operator)
        return reply.records[0]

    async def heartbeat(self, agent_id: str, identity: Identity) -> None:
        """Fire-and-forget: liveness is a trend, not a transaction."""
        subject = self.subjects.service("registry", "heartbeat")
        body = msgspec.json.encode(Heartbeat(agent_id=agent_id, sent_at=datetime.now(UTC)))
        try:
            await self.nc.publish(subject, body, headers=identity.signature_headers(subject, body))
        except nats.errors.Error as exc:
            raise BrokerError("registry heartbeat", repr(exc)) from exc
