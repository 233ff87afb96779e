"""The registry's request handlers: `<root>.svc.registry.<operation>`.

Every request is answered with a RegistryReply; a refusal says why. Writes (register,
status changes) are serialised, decided by the pure domain, appended to the history
stream one by one (each applied to the state as soon as it is stored), mirrored into
the KV view, and written to the broker's authorization, whose reload is confirmed
(when the server's monitoring endpoint is known) before the reply goes out.

Replies go only to `_INBOX.` subjects (mesh._runtime.replies): a request whose reply subject
names anything else (a stream subject, the KV view) is served but not answered, or the
registry's own permissions would write where the requester may not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec
from nats.aio.msg import Msg

from contracts.cards import AgentCard, AgentKey, AgentRecord, SignedStatement
from contracts.envelope import Event
from contracts.registry_api import (
    GRANT_HEADER,
    CardApprovalRequest,
    Heartbeat,
    PrincipalKeys,
    RegistryQuery,
    RegistryReply,
    StatusChangeRequest,
)
from mesh.service import (
    KEY_PROOFS_HEADER,
    SIGNATURE_HEADER,
    ConcurrencyConflict,
    MeshError,
    Request,
    SignatureError,
    StaticPrincipal,
    TokenBucket,
    static_cards,
    verify,
    verify_headers,
)
from services.registry.broker_auth import BrokerAuthorization
from services.registry.domain import (
    Refused,
    RegistryRules,
    RegistryState,
    StatusTarget,
    decide_card_approval,
    decide_registration,
    decide_status_change,
    evolve,
)
from services.registry.store import RegistryStore

log = logging.getLogger(__name__)

_card = msgspec.json.Decoder(AgentCard)
_query = msgspec.json.Decoder(RegistryQuery)
_status_change = msgspec.json.Decoder(StatusChangeRequest)
_heartbeat = msgspec.json.Decoder(Heartbeat)
_approval = msgspec.json.Decoder(CardApprovalRequest)
_statement = msgspec.json.Decoder(SignedStatement)
_encoder = msgspec.json.Encoder()


class RegistryHandlers:
    def __init__(
        self,
        state: RegistryState,
        store: RegistryStore,
        rules: RegistryRules,
        *,
        principals: list[StaticPrincipal],
        authorization: BrokerAuthorization | None,
        stale_after: float,
        heartbeats: dict[str, datetime],
        provision: Callable[[AgentCard], Awaitable[object]] | None = None,
        registrations_per_second: float = 20.0,
    ) -> None:
        """`provision` creates an active agent's durables from its card (under broker
        enforcement agents may not create consumers themselves)."""
        self.provision = provision
        self.state = state
        self.store = store
        self.rules = rules
        self.principals = principals
        self.authorization = authorization
        self.stale_after = timedelta(seconds=stale_after)
        self.heartbeats = heartbeats
        self.writes = asyncio.Lock()
        # Registration is open to anonymous connections (the onboarding user): a flood
        # of them must not keep the registry from serving the mesh.
        self.registrations = TokenBucket(
            rate=registrations_per_second, burst=registrations_per_second * 2
        )

    @property
    def operators(self) -> dict[str, str]:
        """The operators whose signature counts now: public key -> operator id."""
        return {p.public_key: p.name for p in self.principals if p.role == "operator" and p.active}

    def reload_principals(self, principals: list[StaticPrincipal], rules: RegistryRules) -> None:
        self.principals = principals
        self.rules = rules
        if self.authorization is not None:
            self.authorization.principals = principals
            self.authorization.apply(list(self.state.records.values()))

    def routes(self) -> dict[str, Callable[[Msg], Awaitable[RegistryReply | None]]]:
        return {
            "register": self.register,
            "get": self.get,
            "list": self.list,
            "keys": self.keys,
            "heartbeat": self.heartbeat,
            "activate": self.activate,
            "suspend": self.suspend,
            "revoke": self.revoke,
            "approve": self.approve,
        }

    async def serve(self, request: Request) -> bytes | None:
        """One request; the request server (mesh/_runtime/endpoints.py) answers it and
        turns refusals, malformed input and failures into a negative reply. What is the
        registry's own: a bad signature is a refusal, and a value in the request that
        does not parse (a key, a base64 field) is malformed input."""
        operation = request.operation
        try:
            reply = await self.routes()[operation](request.msg)
        except SignatureError as exc:
            raise Refused(f"not signed as required: {exc.reason}") from exc
        except ValueError as exc:
            if isinstance(exc, MeshError):
                raise
            raise Refused(f"malformed {operation} request: {exc}") from exc
        return None if reply is None else _encoder.encode(reply)

    # ------------------------------------------------------------------ writes

    async def register(self, msg: Msg) -> RegistryReply:
        wait = self.registrations.take()
        if wait > 0:
            return RegistryReply(
                ok=False,
                error=f"too many registrations just now; retry in {wait:.2f}s",
                retry_after=wait,
            )
        signer = verify_headers(msg.subject, msg.data, msg.headers)
        proven = _key_proofs(msg)
        grant = _grant(msg)
        card = _card.decode(msg.data)
        return await self._write(
            card.agent_id,
            lambda now: decide_registration(
                self.state, card, signer, now, self.rules, proven, grant
            ),
        )

    async def approve(self, msg: Msg) -> RegistryReply:
        approval = self._operator_statement(msg, "approve")
        request = _approval.decode(msg.data)
        return await self._write(
            request.agent_id,
            lambda now: decide_card_approval(
                self.state, request.agent_id, request.card_digest, now, self.rules, approval
            ),
        )

    def _operator_statement(self, msg: Msg, what: str) -> SignedStatement:
        """The operator's signed request, kept as the evidence of its consent."""
        signer = verify_headers(msg.subject, msg.data, msg.headers)
        if signer not in self.operators:
            raise Refused(f"{what} needs an operator's signature; {signer} is not an operator")
        signature = (msg.headers or {})[SIGNATURE_HEADER]
        return SignedStatement.of(msg.subject, msg.data, signer, signature)

    async def activate(self, msg: Msg) -> RegistryReply:
        return await self._status_change(msg, "activate")

    async def suspend(self, msg: Msg) -> RegistryReply:
        return await self._status_change(msg, "suspend")

    async def revoke(self, msg: Msg) -> RegistryReply:
        return await self._status_change(msg, "revoke")

    async def _status_change(self, msg: Msg, target: StatusTarget) -> RegistryReply:
        approval = self._operator_statement(msg, target)
        request = _status_change.decode(msg.data)
        by = self.operators[approval.signer]
        return await self._write(
            request.agent_id,
            lambda now: decide_status_change(
                self.state, request.agent_id, target, request.reason, by, now, self.rules, approval
            ),
        )

    async def _write(
        self, agent_id: str, decide: Callable[[datetime], list[Event]]
    ) -> RegistryReply:
        async with self.writes:
            for attempt in (1, 2):
                events = decide(datetime.now(UTC))
                try:
                    for event in events:
                        sequence, stored_at = await self.store.append(event)
                        # Stored: now it is true, from the broker time it was stored.
                        evolve(self.state, event, stored_at, sequence)
                    break
                except ConcurrencyConflict:
                    # Another registry wrote meanwhile: catch up from the log, decide again.
                    log.warning("registry history of %s moved; reloading", agent_id)
                    self.state = await self.store.rebuild()
                    if attempt == 2:
                        raise
                except MeshError:
                    # Part of a decision may be stored: the log is the truth, reload it.
                    self.state = await self.store.rebuild()
                    raise
            if events:
                record = self.state.records[agent_id]
                if record.status == "active" and self.provision is not None:
                    await self.provision(record.card)  # before the agent hears "active"
                await self.store.write_view(record)
                if self.authorization is not None:
                    records = list(self.state.records.values())
                    await asyncio.to_thread(self.authorization.apply, records)
        return RegistryReply(ok=True, records=[self._with_liveness(self.state.records[agent_id])])

    # ------------------------------------------------------------------ reads

    async def get(self, msg: Msg) -> RegistryReply:
        query = _query.decode(msg.data)
        record = self.state.records.get(query.agent_id or "")
        if record is None:
            raise Refused(f"no agent {query.agent_id!r} is registered")
        return RegistryReply(ok=True, records=[self._with_liveness(record)])

    async def list(self, msg: Msg) -> RegistryReply:
        query = _query.decode(msg.data) if msg.data else RegistryQuery()
        records = [
            (agent_id, record)
            for agent_id, record in sorted(self.state.records.items())
            if _matches(record, query) and (query.after is None or agent_id > query.after)
        ]
        page, next_after = _page(records)
        return RegistryReply(
            ok=True,
            records=[self._with_liveness(record) for record in page],
            next_after=next_after,
        )

    async def keys(self, msg: Msg) -> RegistryReply:
        query = _query.decode(msg.data) if msg.data else RegistryQuery()
        agents = [
            PrincipalKeys(
                agent_id=record.card.agent_id,
                status=record.status,
                status_changed_at=record.status_changed_at,
                key_history=record.key_history,
                updated_at=record.updated_at,
                suspensions=record.suspensions,
                cards=record.card_history,
            )
            for record in self.state.records.values()
        ]
        # Services and operators sign events too (the registry its history, ingress the
        # cases it opens): their fixed keys are vouched for from the principals file.
        static = [
            PrincipalKeys(
                agent_id=principal.name,
                status="active" if principal.active else "revoked",
                status_changed_at=principal.valid_until or principal.valid_from,
                key_history=[
                    AgentKey(
                        public_key=principal.public_key,
                        valid_from=principal.valid_from,
                        valid_until=principal.valid_until,
                    )
                ],
                updated_at=principal.valid_until or principal.valid_from,
                cards=static_cards(principal),
            )
            for principal in self.principals
        ]
        everyone = sorted(
            (
                (p.agent_id, p)
                for p in agents + static
                if query.after is None or p.agent_id > query.after
            ),
            key=lambda item: item[0],  # never compares two principals (one name twice)
        )
        page, next_after = _page(everyone)
        return RegistryReply(
            ok=True, keys=page, registry_sequence=self.state.sequence, next_after=next_after
        )

    async def heartbeat(self, msg: Msg) -> None:
        beat = _heartbeat.decode(msg.data)
        signer = verify_headers(msg.subject, msg.data, msg.headers)
        if signer not in self.state.current_keys(beat.agent_id):
            raise Refused(f"heartbeat for {beat.agent_id} signed by a key that is not its own")
        now = datetime.now(UTC)
        self.heartbeats[beat.agent_id] = now
        await self.store.record_heartbeat(beat.agent_id, now)

    def _with_liveness(self, record: AgentRecord) -> AgentRecord:
        seen = self.heartbeats.get(record.card.agent_id)
        stale = seen is None or datetime.now(UTC) - seen > self.stale_after
        return msgspec.structs.replace(record, last_heartbeat=seen, stale=stale)


# A reply must fit in one NATS message (1 MiB by default): pages stay well below it. A
# card is at most 4 KiB and an agent holds at most 32, so one principal always fits.
PAGE_BYTES = 256 * 1024

T = TypeVar("T")


def _page(items: list[tuple[str, T]]) -> tuple[list[T], str | None]:
    """The first items (sorted by id) that fit a page, and the id to continue after."""
    page: list[T] = []
    size = 0
    for index, (_, item) in enumerate(items):
        size += len(_encoder.encode(item))
        if page and size > PAGE_BYTES:
            return page, items[index - 1][0]
        page.append(item)
    return page, None


def _matches(record: AgentRecord, query: RegistryQuery) -> bool:
    card = record.card
    return (
        (query.status is None or record.status == query.status)
        and (
            query.event_type is None
            or query.event_type in card.consumes
            or query.event_type in card.produces
        )
        and (
            query.action_type is None
            or any(a.action_type == query.action_type for a in card.actions)
        )
        and (query.role is None or query.role in card.roles)
        and (query.agent_id is None or card.agent_id == query.agent_id)
    )


def _grant(msg: Msg) -> SignedStatement | None:
    """The enrolment grant a registration carries (header Mesh-Enrolment-Grant)."""
    raw = (msg.headers or {}).get(GRANT_HEADER)
    if not raw:
        return None
    try:
        return _statement.decode(raw.encode())
    except msgspec.DecodeError as exc:
        raise Refused(f"unreadable {GRANT_HEADER} header: {exc}") from None


def _key_proofs(msg: Msg) -> frozenset[str]:
    """Keys that signed the request besides its signer (header Mesh-Key-Proofs, a JSON
    object public key -> signature over the same subject and body). A bad proof is an
    error, not a silently missing key."""
    raw = (msg.headers or {}).get(KEY_PROOFS_HEADER)
    if not raw:
        return frozenset()
    try:
        proofs = msgspec.json.decode(raw.encode(), type=dict[str, str])
    except msgspec.DecodeError as exc:
        raise Refused(f"unreadable {KEY_PROOFS_HEADER} header: {exc}") from None
    for public_key, signature in proofs.items():
        verify(public_key, msg.subject, msg.data, signature)
    return frozenset(proofs)
