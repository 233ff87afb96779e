"""The agent SDK against a real nats-server: emit, settle, retry, dead-letter."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import msgspec
import pytest

from contracts import (
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
    CircuitStateChanged,
    encode,
)
from mesh import HandlerContext, MeshSettings, PermanentError, TransientError
from mesh._broker.reading import read_subject
from mesh._runtime.dead_letters import replay_dead_letter
from mesh._trust.identity import Identity, verify_headers
from mesh.testing import MeshTestKit, eventually
from tests.integration.agents import complete_step, stepper

FAST = MeshSettings(
    ack_wait=5.0, fetch_wait=0.1, max_deliver=3, retry_base_delay=0.02, retry_max_delay=0.1
)


async def test_a_handled_event_yields_a_signed_derived_event(nats_url: str) -> None:
    async with MeshTestKit(stepper(), nats_url=nats_url, settings=FAST) as kit:
        opened = await kit.open_case("insurance_claim", {"amount": 120})
        step = await kit.wait_for(CaseStepCompleted, opened.case_id)
        assert step.causation_id == opened.event_id
        assert step.correlation_id == opened.correlation_id == opened.event_id
        assert step.actor == "stepper"
        assert step.payload.outcome == "accepted"
        stored = [s for s in await kit.history(opened.case_id) if s.event == step]
        signer = verify_headers(stored[0].subject, stored[0].body, stored[0].headers)
        assert signer == kit.runners[0].identity.public_key
        assert stored[0].headers["Nats-Msg-Id"] == step.event_id


async def _poison(kit: MeshTestKit, case_id: str, body: bytes, event_type: str) -> None:
    subject = kit.topology.subjects.case_event(case_id, event_type)
    headers = kit.identity.signature_headers(subject, body)
    await kit.js.publish(subject, body, headers=headers)


async def test_malformed_events_are_dead_lettered_and_the_consumer_goes_on(
    nats_url: str,
) -> None:
    async with MeshTestKit(stepper(), nats_url=nats_url, settings=FAST) as kit:
        valid = msgspec.json.decode(
            encode(
                CaseOpened(
                    case_id="c-x", actor="crm", payload=CaseOpenedPayload(kind="k", source="s")
                )
            )
        )
        missing_field = {**valid, "payload": {"source": "s"}}
        unknown_type = {**valid, "event_type": "meteor_struck"}
        await _poison(kit, "c-1", b"{not json", "case_opened")
        await _poison(kit, "c-2", msgspec.json.encode(unknown_type), "case_opened")
        await _poison(kit, "c-3", msgspec.json.encode(missing_field), "case_opened")
        await _poison(
            kit,
            "c-4",
            msgspec.json.encode({**valid, "case_id": "c-4", "schema_version": 7}),
            "case_opened",
        )
        opened = await kit.open_case("insurance_claim")
        await kit.wait_for(CaseStepCompleted, opened.case_id)

        letters = await eventually(lambda: _at_least(kit, 4), what="four dead letters")
        by_case = {letter.original_subject.split(".")[2]: letter for letter in letters}
        assert {letter.kind for letter in letters} == {"malformed"}
        assert "not JSON" in by_case["c-1"].reason
        assert "unknown event_type 'meteor_struck'" in by_case["c-2"].reason
        assert "payload" in by_case["c-3"].reason
        assert "kind" in by_case["c-3"].reason
        assert "schema_version 7" in by_case["c-4"].reason
        assert by_case["c-1"].body == b"{not json"  # kept byte for byte
        assert by_case["c-1"].headers["Mesh-Dlq-Consumer"] == "stepper"
        assert by_case["c-1"].original_sequence >= 1


async def _at_least(kit: MeshTestKit, count: int) -> list:  # type: ignore[type-arg]
    letters = await kit.dead_letters()
    return letters if len(letters) >= count else []


async def test_a_transient_failure_is_retried_with_backoff(nats_url: str) -> None:
    deliveries: list[int] = []

    async def flaky(event: CaseOpened, ctx: HandlerContext) -> None:
        deliveries.append(ctx.delivery)
        if ctx.delivery < 3:
            raise TransientError("gateway timed out")
        await ctx.emit(
            CaseStepCompleted,
            CaseStepCompletedPayload(step="s", outcome="ok"),
        )

    async with MeshTestKit(stepper(flaky), nats_url=nats_url, settings=FAST) as kit:
        opened = await kit.open_case("claim")
        await kit.wait_for(CaseStepCompleted, opened.case_id)
        assert deliveries == [1, 2, 3]
        assert await kit.dead_letters() == []


@pytest.mark.parametrize(
    ("error", "kind", "reason"),
    [
        (TransientError("gateway down"), "exhausted", "gave up after 3 deliveries"),
        (KeyError("amount"), "exhausted", "KeyError: 'amount'"),
        (PermanentError("claim form is unreadable"), "permanent", "claim form is unreadable"),
    ],
)
async def test_failures_end_in_the_dead_letter_stream(
    nats_url: str, error: Exception, kind: str, reason: str
) -> None:
    attempts = 0

    async def failing(event: CaseOpened, ctx: HandlerContext) -> None:
        nonlocal attempts
        attempts += 1
        raise error

    async with MeshTestKit(stepper(failing), nats_url=nats_url, settings=FAST) as kit:
        opened = await kit.open_case("claim")
        [letter] = await eventually(lambda: _at_least(kit, 1), what="a dead letter")
        assert letter.kind == kind
        assert reason in letter.reason
        assert letter.original_subject.endswith(f"{opened.case_id}.case_opened")
        assert attempts == (1 if kind == "permanent" else 3)


async def test_forged_and_unsigned_events_are_refused_when_verifying(nats_url: str) -> None:
    settings = FAST.model_copy(update={"verify_signatures": True})
    async with MeshTestKit(stepper(), nats_url=nats_url, settings=settings) as kit:
        original = CaseOpened(
            case_id="c-forged", actor="crm", payload=CaseOpenedPayload(kind="k", source="s")
        )
        subject = kit.topology.subjects.for_event(original)
        signed_body = encode(original)
        headers = Identity.generate().signature_headers(subject, signed_body)
        tampered = signed_body.replace(b'"kind":"k"', b'"kind":"x"')
        await kit.js.publish(subject, tampered, headers=headers)
        unsigned = CaseOpened(
            case_id="c-unsigned", actor="crm", payload=CaseOpenedPayload(kind="k", source="s")
        )
        await kit.js.publish(kit.topology.subjects.for_event(unsigned), encode(unsigned))
        opened = await kit.open_case("claim")  # properly signed: handled
        await kit.wait_for(CaseStepCompleted, opened.case_id)

        letters = await eventually(lambda: _at_least(kit, 2), what="two dead letters")
        reasons = {letter.original_subject.split(".")[2]: letter for letter in letters}
        assert reasons["c-forged"].kind == "signature"
        assert "does not match signer" in reasons["c-forged"].reason
        assert "unsigned" in reasons["c-unsigned"].reason


async def test_events_of_one_case_are_handled_in_order_one_at_a_time(nats_url: str) -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    running: set[str] = set()
    overlaps = 0

    async def record(event: CaseOpened, ctx: HandlerContext) -> None:
        nonlocal overlaps
        assert event.case_id is not None
        if event.case_id in running:
            overlaps += 1
        running.add(event.case_id)
        await asyncio.sleep(0.002)
        seen[event.case_id].append(int(event.payload.data["n"]))
        running.discard(event.case_id)

    settings = FAST.model_copy(update={"fetch_batch": 32})
    async with MeshTestKit(stepper(record), nats_url=nats_url, settings=settings) as kit:
        for n in range(30):
            for case_id in ("case-a", "case-b", "case-c"):
                await kit.open_case("claim", {"n": n}, case_id=case_id)
        await eventually(lambda: sum(map(len, seen.values())) == 90, what="90 handled")
    assert overlaps == 0
    assert all(order == list(range(30)) for order in seen.values())


async def test_a_dead_letter_is_replayed_to_its_one_consumer_once_fixed(nats_url: str) -> None:
    broken = True
    healthy_calls = 0

    async def sometimes(event: CaseOpened, ctx: HandlerContext) -> None:
        if broken:
            raise PermanentError("downstream contract mismatch")
        await complete_step(event, ctx)

    async def healthy(event: CaseOpened, ctx: HandlerContext) -> None:
        nonlocal healthy_calls
        healthy_calls += 1

    # Replays are checked against the original subject, signature included.
    settings = FAST.model_copy(update={"verify_signatures": True})
    agents = (stepper(sometimes), stepper(healthy, agent_id="auditor-feed"))
    async with MeshTestKit(*agents, nats_url=nats_url, settings=settings) as kit:
        opened = await kit.open_case("claim")
        [letter] = await eventually(lambda: _at_least(kit, 1), what="a dead letter")
        broken = False
        await replay_dead_letter(kit.js, kit.topology, letter)
        step = await kit.wait_for(CaseStepCompleted, opened.case_id)
        assert step.causation_id == opened.event_id
        history = [s.event.event_name() for s in await kit.history(opened.case_id)]
        # The case log holds the event once; only the agent that failed saw it again.
        assert history == ["case_opened", "case_step_completed"]
        assert healthy_calls == 1


async def test_a_replay_that_fails_again_is_filed_under_its_origin(nats_url: str) -> None:
    async def always(event: CaseOpened, ctx: HandlerContext) -> None:
        raise PermanentError("still broken")

    async with MeshTestKit(stepper(always), nats_url=nats_url, settings=FAST) as kit:
        opened = await kit.open_case("claim")
        [first] = await eventually(lambda: _at_least(kit, 1), what="a dead letter")
        await replay_dead_letter(kit.js, kit.topology, first)
        letters = await eventually(lambda: _at_least(kit, 2), what="the replay dead-lettered")
        again = letters[-1]
        assert again.original_subject == first.original_subject
        assert again.original_subject.endswith(f"{opened.case_id}.case_opened")
        assert again.original_sequence == first.original_sequence
        assert again.consumer == "stepper"


async def test_breaker_state_changes_are_published_as_events(nats_url: str) -> None:
    async def guarded(event: CaseOpened, ctx: HandlerContext) -> None:
        async def call_gateway() -> None:
            raise TransientError("gateway 503")

        await ctx.breaker("payment-gateway").call(call_gateway)

    settings = FAST.model_copy(update={"breaker_failure_threshold": 2, "max_deliver": 2})
    async with MeshTestKit(stepper(guarded), nats_url=nats_url, settings=settings) as kit:
        await kit.open_case("claim")
        await kit.open_case("claim")

        async def breaker_events() -> list:  # type: ignore[type-arg]
            stored = await read_subject(
                kit.js, kit.topology.ops_stream, kit.topology.subjects.family_all("ops")
            )
            return [s.event for s in stored]

        [opened] = await eventually(breaker_events, what="a breaker event")
        assert isinstance(opened, CircuitStateChanged)
        assert (opened.payload.previous, opened.payload.current) == ("closed", "open")
        assert opened.payload.breaker == "payment-gateway"
        assert opened.actor == "stepper"
