"""What the adversarial suite shares: the running mesh (`running_stack`: every part its
own process, generated credentials, the broker enforcing the registry's generated
authorization), connections as its principals that keep what the broker refused them,
signed publishing as an attacker would do it, and readers of what did or did not move
(the case log, the dead letters, the event store's views, the gateway's ledger, the
audit verifier).

Every attack here uses real credentials: an agent's own nkey (the one `mesh run` keeps
in `<data_dir>/keys/<agent_id>.nk`), the external `crm` principal, a human enrolled
with an operator's grant, or nothing at all (the anonymous onboarding user).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, TypeVar

import httpx
import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from contracts import (
    ActionRequested,
    ApprovalGranted,
    ApprovalGrantedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from contracts.audit_bundle import AuditBundle
from contracts.cards import AgentCard
from contracts.codec import encode
from contracts.envelope import Event
from contracts.eventstore_api import CaseRequest, CaseView, TimelineEntry
from contracts.ingress import IngressReply
from mesh._broker.reading import read_case
from mesh._broker.stored_messages import StoredEvent
from mesh._runtime.dead_letters import DeadLetter, read_dead_letters
from mesh._trust.enrolment import issue_grant
from mesh._trust.identity import Identity
from mesh._trust.onboarding import ONBOARDING_ID, register
from mesh._trust.registry_client import request_with_patience
from mesh.testing import eventually
from services.eventstore.audit import Report, verify_bundle
from services.eventstore.export import build_bundle, store_request
from services.stack.layout import REPO
from services.stack.processes import AGENT_IDS
from services.stack.stack import Stack

E = TypeVar("E", bound=Event)

MSG_ID = "Nats-Msg-Id"
# The durables of the mesh's running consumers of the case log (the claims agents' and
# the policy service's): what has to be settled for the mesh to be quiet.
WORKERS = frozenset({*AGENT_IDS.values(), "policy"})
FRAUDULENT = "staged collision, no witnesses, cash only"  # scores 100 at fraud screening


def claim(
    ref: str,
    *,
    amount: int = 42_001,
    description: str = "rear-ended at a light",
    payee: str = "DE89-12345678",
    policy_number: str = "P-48217",  # in force: it does not end in 0
    claim_type: str = "auto",
) -> dict[str, Any]:
    """An `OpenCaseRequest` for an insurance claim, as the crm system sends it."""
    return {
        "kind": "insurance_claim",
        "external_ref": ref,
        "data": {
            "policy_number": policy_number,
            "claimant": "A. Jansen",
            "claim_type": claim_type,
            "amount_cents": amount,
            "incident_date": str(date.today() - timedelta(days=10)),
            "description": description,
            "payee_account": payee,
        },
    }


def lapsed(ref: str, **options: Any) -> dict[str, Any]:
    """A claim intake rejects (its policy lapsed) and closes: nothing downstream runs,
    so whatever runs in the case afterwards was caused by the attack."""
    return claim(ref, policy_number="P-48210", **options)


def screening(case_id: str, cause: Event, actor: str, score: int = 0) -> CaseStepCompleted:
    """A fraud screening in `actor`'s name (by default one that finds nothing)."""
    return CaseStepCompleted(
        case_id=case_id,
        correlation_id=cause.correlation_id,
        causation_id=cause.event_id,
        actor=actor,
        payload=CaseStepCompletedPayload(
            step="fraud_screening",
            outcome="low risk" if score <= 40 else "high risk",
            rationale="re-screened",
            evidence={"fraud_score": score},
        ),
    )


def new_ref(prefix: str) -> str:
    """A fresh external reference: every test works in cases of its own."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Connection:
    """A principal's own connection to the broker (its key, its private inbox prefix)
    that keeps what the broker refused it."""

    name: str
    nc: Client
    identity: Identity | None
    errors: list[str] = field(default_factory=list)

    @property
    def js(self) -> Any:
        return self.nc.jetstream(timeout=5)

    def refused(self, subject: str, operation: str = "publish") -> bool:
        """Did the broker answer a permissions violation for `subject`? (nats-py lower-
        cases the server's error text.)"""
        wanted = f'permissions violation for {operation} to "{subject}"'.lower()
        return any(wanted in error.lower() for error in self.errors)

    async def send(
        self,
        subject: str,
        body: bytes = b"",
        *,
        headers: dict[str, str] | None = None,
        reply: str = "",
    ) -> None:
        """A core publish (no ack awaited): what the broker makes of it is read from
        the connection's errors."""
        await self.nc.publish(subject, body, reply=reply, headers=headers)
        await self.nc.flush()

    async def refused_publish(
        self, subject: str, body: bytes = b"", *, headers: dict[str, str] | None = None
    ) -> None:
        """Publish, and wait for the broker to say it refused it."""
        await self.send(subject, body, headers=headers, reply=self.nc.new_inbox())
        await eventually(
            lambda: self.refused(subject), timeout=10, what=f"the broker refusing {subject}"
        )


def signed(
    event: Event, signer: Identity, subject: str, *, msg_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers the mesh's publisher would send for `event`, signed by
    `signer` (whoever the body names as actor) under `subject`."""
    body = encode(event)
    headers = signer.signature_headers(subject, body)
    headers[MSG_ID] = msg_id or event.event_id
    return body, headers


async def store(connection: Connection, subject: str, body: bytes, headers: dict[str, str]) -> int:
    """Publish through JetStream and wait until it is stored: its stream sequence."""
    ack = await connection.js.publish(subject, body, headers=headers)
    assert not ack.duplicate, f"{subject}: JetStream dropped it as a duplicate"
    return int(ack.seq)


async def pull(
    who: Connection, stream: str, durable: str, request: dict[str, Any], wait: float = 2.0
) -> tuple[list[Msg], list[str]]:
    """One raw pull (`$JS.API.CONSUMER.MSG.NEXT`) as `who` sends it: (messages delivered,
    status answers as 'code text'). It ends at the first status, a full batch, or `wait`."""
    messages: list[Msg] = []
    statuses: list[str] = []
    done = asyncio.Event()
    inbox = who.nc.new_inbox()

    async def keep(msg: Msg) -> None:
        status = (msg.headers or {}).get("Status")
        if status is None:
            messages.append(msg)
        elif status != "100":
            statuses.append(f"{status} {(msg.headers or {}).get('Description', '')}")
            done.set()
        if len(messages) >= int(request.get("batch", 1)):
            done.set()

    subscription = await who.nc.subscribe(inbox, cb=keep)
    try:
        await who.send(
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
            json.dumps(request).encode(),
            reply=inbox,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), wait)
    finally:
        await subscription.unsubscribe()
    return messages, statuses


async def open_connection(url: str, name: str, identity: Identity | None) -> Connection:
    """Connect as `name` with `identity` (None: no credentials, the onboarding user),
    keeping what the broker refuses it; no reconnects, so a refusal is final."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    async def on_event() -> None:
        return None

    nc = Client()
    options: dict[str, Any] = {} if identity is None else {"nkeys_seed_str": identity.seed}
    try:
        await nc.connect(
            url,
            name=f"attacker:{name}",
            inbox_prefix=f"_INBOX.{name}",
            allow_reconnect=False,
            connect_timeout=5,
            error_cb=on_error,
            disconnected_cb=on_event,
            closed_cb=on_event,
            **options,
        )
    except BaseException:
        # nats-py leaves a refused attempt's socket open.
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return Connection(name, nc, identity, errors)


def events(history: Sequence[StoredEvent], event_type: type[E]) -> list[tuple[StoredEvent, E]]:
    return [(s, s.event) for s in history if isinstance(s.event, event_type)]


class Mesh:
    """The running stack, seen by an attacker and by the people who check on it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.topology = stack.topology
        self.subjects = stack.topology.subjects
        self._connections: list[Connection] = []
        self._crm: Connection | None = None
        self._humans: dict[str, Connection] = {}

    # ------------------------------------------------------------------ principals

    def key(self, principal: str) -> Identity:
        """The key a principal of the stack runs with (an agent's is the one `mesh run`
        generated in `<data_dir>/keys/`)."""
        path = self.stack.layout.seed(principal)
        assert path.exists(), f"no key for {principal} at {path}"
        return Identity.load(path)

    async def connect(self, principal: str, identity: Identity | None = None) -> Connection:
        """Connect as `principal` with its own key (or `identity`)."""
        return await self._connect(principal, identity or self.key(principal))

    async def anonymous(self) -> Connection:
        """No credentials at all: the broker puts it in the onboarding user."""
        return await self._connect(ONBOARDING_ID, None)

    async def _connect(self, name: str, identity: Identity | None) -> Connection:
        connection = await open_connection(self.stack.url, name, identity)
        self._connections.append(connection)
        return connection

    async def refused_connection(self, name: str, identity: Identity) -> str:
        """Try to connect with `identity`; the broker's reason for refusing it."""
        try:
            await self._connect(name, identity)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            return repr(exc)
        raise AssertionError(f"the broker accepted {name}'s key {identity.public_key}")

    async def close(self) -> None:
        for connection in self._connections:
            with contextlib.suppress(nats.errors.Error, OSError):
                await connection.nc.close()

    @property
    def operator(self) -> Client:
        return self.stack.operator_nc

    # ------------------------------------------------------------------ cases

    async def ingress(self, body: dict[str, Any]) -> IngressReply:
        """A request to the ingress over NATS, as the `crm` system."""
        if self._crm is None:
            self._crm = await self.connect("crm")
        msg = await request_with_patience(
            self._crm.nc,
            self.subjects.service("ingress", "crm"),
            json.dumps(body).encode(),
            timeout=10,
            what="open a case",
        )
        return msgspec.json.decode(msg.data, type=IngressReply)

    async def open(self, body: dict[str, Any]) -> str:
        reply = await self.ingress(body)
        assert reply.ok, reply
        assert reply.case_id is not None
        return reply.case_id

    async def history(self, case_id: str) -> list[StoredEvent]:
        """The case's log as stored, read as the operator."""
        return await read_case(self.operator.jetstream(), self.topology, case_id)

    async def wait_for(
        self,
        case_id: str,
        found: Callable[[list[StoredEvent]], Any],
        what: str,
        timeout: float = 30.0,
    ) -> Any:
        """Poll the case's log until `found(history)` is truthy; return it."""

        async def check() -> Any:
            return found(await self.history(case_id))

        return await eventually(check, timeout=timeout, interval=0.1, what=what)

    async def wait_for_event(
        self,
        case_id: str,
        event_type: type[E],
        where: Callable[[E], bool] = lambda _: True,
        timeout: float = 30.0,
    ) -> tuple[StoredEvent, E]:
        def first(history: list[StoredEvent]) -> tuple[StoredEvent, E] | None:
            return next(((s, e) for s, e in events(history, event_type) if where(e)), None)

        found: tuple[StoredEvent, E] = await self.wait_for(
            case_id, first, f"{event_type.event_name()} in {case_id}", timeout
        )
        return found

    # ------------------------------------------------------------------ what moved

    async def dead_letter_mark(self) -> int:
        """The dead-letter stream's last sequence: read what was filed after it."""
        info = await self.operator.jetstream().stream_info(self.topology.dead_letter_stream)
        return int(info.state.last_seq)

    async def dead_letters(
        self, after: int, where: Callable[[DeadLetter], bool] = lambda _: True
    ) -> list[DeadLetter]:
        letters = await read_dead_letters(
            self.operator.jetstream(), self.topology, start=after + 1, limit=10_000
        )
        return [letter for letter in letters if where(letter)]

    async def wait_for_dead_letters(
        self,
        after: int,
        where: Callable[[DeadLetter], bool],
        count: int = 1,
        timeout: float = 30.0,
    ) -> list[DeadLetter]:
        async def enough() -> list[DeadLetter] | None:
            found = await self.dead_letters(after, where)
            return found if len(found) >= count else None

        letters: list[DeadLetter] = await eventually(
            enough, timeout=timeout, interval=0.2, what=f"{count} dead letter(s)"
        )
        return letters

    def _gateway(self) -> httpx.AsyncClient:
        """The payment gateway, with the credential reconciliation uses (if it has one)."""
        token_file = self.stack.layout.keys / "gateway.http-token"
        headers = {}
        if token_file.exists():
            headers["Authorization"] = f"Bearer {token_file.read_text().strip()}"
        return httpx.AsyncClient(base_url=self.stack.gateway_http, timeout=10, headers=headers)

    async def ledger(self) -> list[dict[str, Any]]:
        """Every payment the simulated gateway holds."""
        async with self._gateway() as http:
            response = await http.get("/v1/ledger")
            response.raise_for_status()
            payments: list[dict[str, Any]] = response.json()["payments"]
            return payments

    async def case_payments(self, case_id: str) -> list[dict[str, Any]]:
        """Every payment at the gateway for the case: under the id of any request made in
        it, or under the case's obligation (`<case>:<action>`)."""
        history = await self.history(case_id)
        requests = {e.event_id for _, e in events(history, ActionRequested)}
        return [
            p
            for p in await self.ledger()
            if p["idempotency_key"] in requests
            or str(p["idempotency_key"]).startswith(f"{case_id}:")
        ]

    async def view(self, case_id: str) -> CaseView:
        """The event store's case view, once it has projected every message of the case."""
        stored = len(await self.history(case_id))

        async def current() -> CaseView | None:
            reply = await store_request(
                self.operator, self.topology, "case", CaseRequest(case_id=case_id)
            )
            assert reply.detail is not None
            return reply.detail.case if reply.detail.case.event_count >= stored else None

        view: CaseView = await eventually(
            current, timeout=30, interval=0.2, what=f"the event store projecting {case_id}"
        )
        return view

    async def timeline(self, case_id: str) -> list[TimelineEntry]:
        await self.view(case_id)  # caught up with the log
        reply = await store_request(
            self.operator, self.topology, "timeline", CaseRequest(case_id=case_id)
        )
        return reply.timeline

    async def bundle(self, case_id: str | None) -> AuditBundle:
        """What `mesh audit export` writes (None: the whole log)."""
        return await build_bundle(self.operator, self.topology, case_id)

    def verify(self, bundle: AuditBundle) -> Report:
        """`mesh audit verify --bundle`, with the event store's key pinned."""
        return verify_bundle(bundle, store_key=self.key("eventstore").public_key)

    # ------------------------------------------------------------------ humans

    async def enrol(self, card: AgentCard, identity: Identity | None = None) -> Connection:
        """Enrol a principal as an operator would have it: with the operator's one-time
        grant for exactly its card; then connect as it with its own key."""
        identity = identity or self.stack.layout.identity(card.agent_id)  # generated, kept
        grant = issue_grant(card, self.key("operator"), "operator")
        await register(self.stack.url, card, identity, self.subjects, wait=20, grant=grant)
        return await self.connect(card.agent_id, identity)

    async def human(self, agent_id: str = "dana", **scope: Any) -> Connection:
        """A claims-desk approver (as `mesh demo` enrols `dana`), enrolled once."""
        if agent_id not in self._humans:
            card = AgentCard(
                agent_id=agent_id,
                name=f"{agent_id} (claims desk)",
                version="1",
                owner="claims-desk",
                purpose="approves or rejects large payouts",
                kind="human",
                roles=scope.pop("roles", ["approver", "claims_manager", "head_of_claims"]),
                produces=scope.pop("produces", ["approval_granted", "approval_rejected"]),
                **scope,
            )
            self._humans[agent_id] = await self.enrol(card)
        return self._humans[agent_id]

    async def pending(self, who: Connection) -> list[dict[str, Any]]:
        """What the policy service shows `who` as waiting for a human."""
        msg = await request_with_patience(
            who.nc,
            self.subjects.service_as("policy", "pending", who.name),
            b"",
            timeout=10,
            what="pending approvals",
        )
        items: list[dict[str, Any]] = msgspec.json.decode(msg.data)
        return items

    async def approve(self, who: Connection, item: dict[str, Any]) -> ApprovalGranted:
        """`mesh approvals approve`: a signed grant citing the digest the approver saw."""
        assert who.identity is not None
        grant = ApprovalGranted(
            case_id=item["case_id"],
            correlation_id=item["correlation_id"],
            causation_id=item["required_event_id"],
            actor=who.name,
            payload=ApprovalGrantedPayload(
                request_id=item["request_id"],
                approver=who.name,
                comment="documents ok",
                request_digest=item["request_digest"],
            ),
        )
        subject = self.subjects.for_event(grant)
        await store(who, subject, *signed(grant, who.identity, subject))
        return grant

    @contextlib.asynccontextmanager
    async def paused(self, process: str) -> AsyncIterator[None]:
        """Hold one of the mesh's processes still (SIGSTOP) for the block, as a slow or
        busy one would be: what reaches it meanwhile waits in its durable."""
        pid = self.stack.supervisor.pid(process)
        assert pid is not None, f"{process} is not running"
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)

    async def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`mesh ARGS…` as an operator runs it against this mesh (its operator key)."""
        env = {
            **os.environ,
            "MESH_NATS_URL": self.stack.url,
            "MESH_SUBJECT_ROOT": self.topology.root,
            "MESH_DATA_DIR": str(self.stack.layout.data_dir),
            "MESH_NKEY_AUTH": "1",
        }
        return await mesh_cli(*args, env=env)

    # ------------------------------------------------------------------ quiet

    async def settled(self, timeout: float = 60.0) -> None:
        """Until the mesh has nothing left to do: the durable of every agent and service
        that works on cases has delivered and settled everything, every replayed dead
        letter has reached its consumer at least once, and the log stopped growing
        between two looks. (A replay its consumer keeps retrying is not waited out.)"""
        js = self.operator.jetstream()
        last: list[int] = [-1]
        waiting: list[str] = []

        async def quiet() -> bool | None:
            info = await js.stream_info(self.topology.cases_stream)
            size = int(info.state.last_seq)
            busy = [
                c.name
                for c in await js.consumers_info(self.topology.cases_stream)
                if c.name in WORKERS and (c.num_pending or c.num_ack_pending)
            ]
            busy += [
                c.name
                for c in await js.consumers_info(self.topology.dead_letter_stream)
                if c.name.removesuffix("_replay") in WORKERS and c.num_pending
            ]
            still = size == last[0] and not busy
            last[0] = size
            waiting[:] = busy
            return still or None

        try:
            quietened: bool = await eventually(
                quiet, timeout=timeout, interval=0.5, what="the mesh settling"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; still busy: {waiting}") from exc
        assert quietened

    async def unsettled(self, durable: str) -> int:
        """Messages a durable on the dead-letter stream (a consumer's replays) has been
        delivered and not settled."""
        info = await self.operator.jetstream().consumer_info(
            self.topology.dead_letter_stream, durable
        )
        return int(info.num_ack_pending or 0) + int(info.num_pending or 0)


async def mesh_cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`mesh ARGS…` as its own process, from the checkout, with `env` (else ours)."""
    command = [sys.executable, "-m", "mesh", *args]
    return await asyncio.to_thread(
        subprocess.run,
        command,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
