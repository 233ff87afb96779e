"""A test kit for agent authors: a real embedded nats-server, private streams, and the
agent running in-process — in a few lines:

    async def test_intake_completes_the_step():
        async with MeshTestKit(intake.agent) as kit:
            opened = await kit.open_case("insurance_claim", {"amount": 120})
            step = await kit.wait_for(CaseStepCompleted, opened.case_id)
            assert step.payload.outcome == "accepted"

Each kit uses a unique subject root, so kits (and tests) never see each other.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from nats.aio.client import Client
from nats.js.client import JetStreamContext

from contracts.envelope import Event
from contracts.events.case import CaseOpened, CaseOpenedPayload
from mesh._broker.connection import connect
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.publisher import EventPublisher, Receipt
from mesh._broker.reading import read_case
from mesh._broker.stored_messages import StoredEvent
from mesh._broker.stream_provisioning import provision_streams
from mesh._broker.topology import Topology
from mesh._runtime.dead_letters import DeadLetter, read_dead_letters
from mesh._runtime.runtime import AgentRunner
from mesh._sdk.agent import Agent
from mesh._trust.identity import Identity
from mesh.settings import MeshSettings

T = TypeVar("T")
E = TypeVar("E", bound=Event)


async def eventually(
    check: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll `check` until it returns something truthy (returned) or time runs out.
    Exceptions from `check` count as 'not yet'; the last one is chained on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result  # type: ignore[return-value]
        except Exception as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s") from last_error
        await asyncio.sleep(interval)


def unique_root(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


class MeshTestKit:
    """Start with `async with`. Uses `nats_url` if given, else starts its own server."""

    def __init__(
        self,
        *agents: Agent,
        nats_url: str | None = None,
        root: str | None = None,
        settings: MeshSettings | None = None,
    ) -> None:
        self.agents = agents
        self.root = root or unique_root()
        self.topology = Topology(self.root)
        base = settings or MeshSettings(
            ack_wait=5.0, fetch_wait=0.2, retry_base_delay=0.05, retry_max_delay=0.5
        )
        self.settings = base.model_copy(update={"subject_root": self.root})
        self._requested_url = nats_url
        self._server: EmbeddedNats | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.identity = Identity.generate()  # the harness's own key, actor "test-harness"
        self.nc: Client | None = None
        self.runners: list[AgentRunner] = []

    @property
    def js(self) -> JetStreamContext:
        assert self.nc is not None, "use the kit inside 'async with'"
        return self.nc.jetstream()

    @property
    def publisher(self) -> EventPublisher:
        return EventPublisher(self.js, self.identity, self.topology)

    async def __aenter__(self) -> MeshTestKit:
        url = self._requested_url
        if url is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mesh-kit-")
            self._server = EmbeddedNats(Path(self._tmp.name))
            await asyncio.to_thread(self._server.start)
            url = self._server.url
        self.url = url
        self.nc = await connect(url, name=f"test-kit:{self.root}")
        await provision_streams(self.js, self.topology)
        for agent in self.agents:
            runner = AgentRunner(
                agent,
                nc=self.nc,
                identity=Identity.generate(),
                settings=self.settings,
                topology=self.topology,
            )
            await runner.start()
            self.runners.append(runner)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            for runner in self.runners:
                await runner.stop()
            if self.nc is not None:
                await self.nc.close()
        finally:
            if self._server is not None:
                await asyncio.to_thread(self._server.stop)
            if self._tmp is not None:
                self._tmp.cleanup()

    async def publish(self, event: Event, **options: Any) -> Receipt:
        return await self.publisher.publish(event, **options)

    async def open_case(
        self, kind: str, data: dict[str, Any] | None = None, *, case_id: str | None = None
    ) -> CaseOpened:
        event = CaseOpened(
            case_id=case_id or f"case-{uuid.uuid4().hex[:12]}",
            actor="test-harness",
            payload=CaseOpenedPayload(kind=kind, source="test-harness", data=data or {}),
        )
        await self.publish(event)
        return event

    async def history(self, case_id: str) -> list[StoredEvent]:
        return await read_case(self.js, self.topology, case_id)

    async def wait_for(self, event_type: type[E], case_id: str, timeout: float = 10.0) -> E:
        async def found() -> E | None:
            for stored in await self.history(case_id):
                if isinstance(stored.event, event_type):
                    return stored.event
            return None

        return await eventually(found, timeout=timeout, what=f"{event_type.event_name()}")

    async def dead_letters(self) -> list[DeadLetter]:
        return await read_dead_letters(self.js, self.topology)


__all__ = ["MeshTestKit", "eventually", "unique_root"]
