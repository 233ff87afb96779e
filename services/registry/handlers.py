"""The registry's request handlers: `<root>.svc.registry.<operation>`.

Every request is answered with a RegistryReply; a refusal says why. Writes (register,
status changes) are serialised, decided by the pure domain, appended to the history
stream one by one (each applied to the state as soon as it is stored), mirrored into
the KV view, and written to the broker's authorization, whose reload is confirmed
(when the server's monitoring endpoint is known) before the reply goes out.

Reads are answered from the state by `reads`; what a request proves about its sender
(operator statements, enrolment grants, key proofs) is read by `proofs`.

Replies go only to `_INBOX.` subjects (mesh._runtime.replies): a request whose reply subject
names anything else (a stream subject, the KV view) is served but not answered, or the
registry's own permissions would write where the requester may not.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import msgspec
from nats.aio.msg import Msg

from contracts.cards import AgentCard, AgentRecord
from contracts.delegation import Delegation, DelegationRevocation
from contracts.envelope import Event
from contracts.registry_api import (
    CardApprovalRequest,
    Heartbeat,
    RegistryQuery,
    RegistryReply,
    StatusChangeRequest,
)
from mesh.service import (
    ConcurrencyConflict,
    MeshError,
    Request,
    StaticPrincipal,
    TokenBucket,
    verify_headers,
)
from services.registry import reads
from services.registry.broker_auth import BrokerAuthorization
from services.registry.delegations import decide_delegation, decide_revocation
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
from services.registry.proofs import (
    enrolment_grant,
    key_proofs,
    operator_statement,
    signed_request,
)
from services.registry.store import RegistryStore

log = logging.getLogger(__name__)

_card = msgspec.json.Decoder(AgentCard)
_query = msgspec.json.Decoder(RegistryQuery)
_status_change = msgspec.json.Decoder(StatusChangeRequest)
_heartbeat = msgspec.json.Decoder(Heartbeat)
_approval = msgspec.json.Decoder(CardApprovalRequest)
_delegation = msgspec.json.Decoder(Delegation)
_revocation = msgspec.json.Decoder(DelegationRevocation)
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
            "delegate": self.delegate,
            "revoke_delegation": self.revoke_delegation,
        }

    async def serve(self, request: Request) -> bytes | None:
        """One request; the request server (mesh/_runtime/endpoints.py) answers it and
        turns refusals, malformed input and failures into a negative reply. What is the
        registry's own: a value in the request that does not parse (a key, a base64
        field) is malformed input."""
        operation = request.operation
        # Reads too: a registry whose term ended (it was frozen while a standby took
        # over and moved on) would answer from a state that is no longer the truth.
        self.store.fence()
        try:
            reply = await self.routes()[operation](request.msg)
        except RecursionError:
            raise Refused(f"malformed {operation} request: nested too deeply") from None
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
        proven = key_proofs(msg)
        grant = enrolment_grant(msg)
        card = _card.decode(msg.data)
        return await self._write(
            card.agent_id,
            lambda now: decide_registration(
                self.state, card, signer, now, self.rules, proven, grant
            ),
        )

    async def approve(self, msg: Msg) -> RegistryReply:
        approval, _ = operator_statement(msg, self.rules.operators, "approve")
        request = _approval.decode(msg.data)
        return await self._write(
            request.agent_id,
            lambda now: decide_card_approval(
                self.state, request.agent_id, request.card_digest, now, self.rules, approval
            ),
        )

    async def delegate(self, msg: Msg) -> RegistryReply:
        """A person (or a delegate passing it on) signs a delegation to an agent."""
        statement = signed_request(msg)
        delegation = _delegation.decode(msg.data)
        return await self._write(
            delegation.delegate,
            lambda now: decide_delegation(
                self.state, delegation, statement, now, self.rules.registry_id
            ),
            record_changed=False,
        )

    async def revoke_delegation(self, msg: Msg) -> RegistryReply:
        statement = signed_request(msg)
        request = _revocation.decode(msg.data)
        held = self.state.delegations.get(request.delegation_id)
        return await self._write(
            held.delegation.delegate if held else "",
            lambda now: decide_revocation(
                self.state, request, statement, self.rules.operators, now, self.rules.registry_id
            ),
            record_changed=False,
        )

    async def activate(self, msg: Msg) -> RegistryReply:
        return await self._status_change(msg, "activate")

    async def suspend(self, msg: Msg) -> RegistryReply:
        return await self._status_change(msg, "suspend")

    async def revoke(self, msg: Msg) -> RegistryReply:
        return await self._status_change(msg, "revoke")

    async def _status_change(self, msg: Msg, target: StatusTarget) -> RegistryReply:
        approval, by = operator_statement(msg, self.rules.operators, target)
        request = _status_change.decode(msg.data)
        return await self._write(
            request.agent_id,
            lambda now: decide_status_change(
                self.state, request.agent_id, target, request.reason, by, now, self.rules, approval
            ),
        )

    async def _write(
        self,
        agent_id: str,
        decide: Callable[[datetime], list[Event]],
        *,
        record_changed: bool = True,
    ) -> RegistryReply:
        """`record_changed` False: the events change no agent's card, keys or status (a
        delegation), so nothing is provisioned and the broker's authorization stays."""
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
            if events and record_changed:
                record = self.state.records[agent_id]
                if record.status == "active" and self.provision is not None:
                    await self.provision(record.card)  # before the agent hears "active"
                await self.store.write_view(record)
                if self.authorization is not None:
                    records = list(self.state.records.values())
                    await asyncio.to_thread(self.authorization.apply, records)
        now = self.state.records.get(agent_id)
        return RegistryReply(ok=True, records=[self._with_liveness(now)] if now else [])

    # ------------------------------------------------------------------ reads

    async def get(self, msg: Msg) -> RegistryReply:
        query = _query.decode(msg.data)
        record = reads.registered(self.state, query.agent_id)
        return RegistryReply(ok=True, records=[self._with_liveness(record)])

    async def list(self, msg: Msg) -> RegistryReply:
        query = _query.decode(msg.data) if msg.data else RegistryQuery()
        page, next_after = reads.matching(self.state, query)
        return RegistryReply(
            ok=True,
            records=[self._with_liveness(record) for record in page],
            next_after=next_after,
        )

    async def keys(self, msg: Msg) -> RegistryReply:
        query = _query.decode(msg.data) if msg.data else RegistryQuery()
        page, next_after = reads.principal_keys(self.state, self.principals, query)
        return RegistryReply(
            ok=True, keys=page, registry_sequence=self.state.sequence, next_after=next_after
        )

    # ------------------------------------------------------------------ liveness

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
        return reads.with_liveness(record, seen, datetime.now(UTC), self.stale_after)
