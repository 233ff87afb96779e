"""The consumer loop's own rules, with a scripted message source: a message that comes
back after it was settled (its ack lost) is acked again, never handled again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from mesh._runtime.consumer import PullConsumerLoop


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
