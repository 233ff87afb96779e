"""The consumer loop's and the dispatcher's own rules, with scripted messages: a message
that comes back after it was settled (its ack lost) is acked again, never handled
again; a work copy that does not lead back to the case log is set aside."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from contracts import AgentCard
from contracts.subjects import Subjects
from mesh import Agent
from mesh._runtime.consumer import PullConsumerLoop
from mesh._runtime.dispatch import EventDispatcher


class _Msg:
    def __init__(self, sequence: int, case: str, delivered: int = 1) -> None:
        self.subject = f"mesh.case.{case}.case_step_completed"
        self.metadata = SimpleNamespace(
            sequence=SimpleNamespace(stream=sequence), num_delivered=delivered
        )
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def in_progress(self) -> None:
        self.settled.append("wip")

    async def term(self) -> None:
        self.settled.append("term")


class _Script:
    """Hands out its batches one fetch at a time, then nothing."""

    def __init__(self, *batches: list[_Msg]) -> None:
        self.batches = list(batches)
        self.done_with: list[int] = []
        self.settled_ones: list[int] = []
        self.exhausted = asyncio.Event()

    async def fetch(self, batch: int, timeout: float) -> list[_Msg]:
        if not self.batches:
            self.exhausted.set()
            await asyncio.sleep(timeout)
            raise TimeoutError
        return self.batches.pop(0)

    def owns(self, msg: _Msg) -> bool:
        return True

    async def admissible(self, msg: _Msg) -> bool:
        return True

    def done(self, msg: _Msg) -> None:
        self.done_with.append(int(msg.metadata.sequence.stream))

    def settled(self, msg: _Msg) -> None:
        self.settled_ones.append(int(msg.metadata.sequence.stream))


async def _run(
    source: _Script, handled: list[int], *, retry: frozenset[int] = frozenset()
) -> PullConsumerLoop:
    async def process(msg: _Msg) -> float | None:
        sequence = int(msg.metadata.sequence.stream)
        handled.append(sequence)
        if sequence in retry:
            await msg.nak()
            return 0.01
        await msg.ack()
        return None

    loop = PullConsumerLoop(
        source,  # type: ignore[arg-type]
        process,  # type: ignore[arg-type]
        window=4,
        fetch_wait=0.05,
        ack_wait=5.0,
    )
    running = asyncio.create_task(loop.run())
    await source.exhausted.wait()
    await asyncio.sleep(0.1)
    loop.stop()
    await running
    return loop


async def test_a_message_back_after_it_was_settled_is_acked_not_handled_again() -> None:
    first, second = _Msg(5, "a"), _Msg(6, "a")
    again = _Msg(5, "a", delivered=2)  # its ack was lost: the server sent it again
    source = _Script([first], [second], [again])
    handled: list[int] = []
    loop = await _run(source, handled)
    assert handled == [5, 6]
    assert again.settled == ["ack"]
    assert loop.repeats_acked == 1
    assert source.done_with.count(5) == 2
    assert source.settled_ones == [5, 6]  # told once each, not for the repeat


async def test_a_message_back_for_its_retry_is_handled_again() -> None:
    first = _Msg(7, "b")
    retried = _Msg(7, "b", delivered=2)  # NAK'ed for a retry: not settled, so handled
    source = _Script([first], [retried])
    handled: list[int] = []
    loop = await _run(source, handled, retry=frozenset({7}))
    assert handled[:2] == [7, 7]
    assert loop.repeats_acked == 0
    assert source.settled_ones == []


async def test_a_work_copy_that_does_not_lead_back_to_the_log_is_set_aside_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Only the server writes the work stream; a copy without the case log's origin (a
    server or stream config gone wrong) cannot be filed as a dead letter of the log and
    retrying cannot change it: it is terminated, named in the log, left where it is."""
    agent = Agent(AgentCard(agent_id="watcher", name="w", version="1", owner="o", purpose="p"))
    dispatcher = EventDispatcher(
        agent,
        services=None,  # type: ignore[arg-type]
        dead_letters=None,  # type: ignore[arg-type]
        subjects=Subjects("mesh"),
        cases_stream="MESH_CASES",
        max_deliver=5,
        retry_base_delay=0.1,
        retry_max_delay=1.0,
        handler_timeout=1.0,
    )
    copy = _Msg(9, "c-1")
    copy.subject = "mesh.work.3.c-1.case_opened"
    copy.headers = {"Nats-Stream-Source": "MESH_OTHER 4 mesh.case.c-1.case_opened"}
    copy.metadata.stream = "MESH_WORK"
    copy.metadata.timestamp = datetime(2026, 11, 30, tzinfo=UTC)
    copy.data = b"{}"
    assert await dispatcher(copy) is None  # type: ignore[arg-type]
    assert copy.settled == ["term"]
    assert "is not a copy of the case log" in caplog.text
