"""Durable timers against a real nats-server: set, fire once, cancel, refuse a firing
the log does not back."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from nats.js.errors import BadRequestError

from contracts import CaseStepCompleted, TimerCancelled, TimerFired, TimerSet
from mesh import MeshSettings
from mesh._sdk.timers import schedule_header
from mesh.testing import MeshTestKit, eventually
from tests.integration.agents import reminder_agent

FAST = MeshSettings(
    ack_wait=5.0, fetch_wait=0.1, max_deliver=3, retry_base_delay=0.02, retry_max_delay=0.2
)


async def _types(kit: MeshTestKit, case_id: str) -> list[str]:
    return [s.event.event_name() for s in await kit.history(case_id)]


async def test_a_timer_fires_once_when_due_and_wakes_its_handler(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_TEST_TIMER_SECONDS", "1")
    async with MeshTestKit(reminder_agent(), nats_url=nats_url, settings=FAST) as kit:
        opened = await kit.open_case("insurance_claim")
        timer = await kit.wait_for(TimerSet, opened.case_id)
        step = await kit.wait_for(CaseStepCompleted, opened.case_id, timeout=15)
        history = await kit.history(opened.case_id)
        fired = [s for s in history if isinstance(s.event, TimerFired)]
        assert len(fired) == 1
        assert fired[0].event.payload.timer_id == timer.event_id == step.payload.evidence["timer"]
        assert fired[0].event.causation_id == timer.event_id
        assert fired[0].event.actor == "reminder"
        assert fired[0].stored_at >= timer.payload.due_at
        assert fired[0].event.payload.data == {"opened": opened.event_id}
        # The schedule is gone from the broker; its firing stays where it was written.
        info = await kit.js.stream_info(kit.topology.timers_stream("reminder"))
        assert info.state.messages == 1


async def test_a_cancelled_timer_never_fires(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MESH_TEST_TIMER_SECONDS", "1")
    async with MeshTestKit(reminder_agent(), nats_url=nats_url, settings=FAST) as kit:
        opened = await kit.open_case("insurance_claim", {"cancel": True})
        await kit.wait_for(TimerCancelled, opened.case_id)
        await asyncio.sleep(3)
        assert "timer_fired" not in await _types(kit, opened.case_id)


async def test_a_firing_the_log_does_not_back_is_not_fired(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Firings the log does not back: a schedule for a timer that never was, and one that
    replaces a real timer's schedule to fire it an hour early. Neither becomes
    timer_fired (the early one waits for its due time). A schedule can only target its
    own stream, so nobody fires into another agent's timers from elsewhere."""
    monkeypatch.setenv("MESH_TEST_TIMER_SECONDS", "3600")
    async with MeshTestKit(reminder_agent(), nats_url=nats_url, settings=FAST) as kit:
        opened = await kit.open_case("insurance_claim")
        timer = await kit.wait_for(TimerSet, opened.case_id)
        s = kit.topology.subjects
        now = schedule_header(datetime.now(UTC) - timedelta(seconds=1))
        for timer_id in ("0193aaaa-0000-7000-8000-000000000000", timer.event_id):
            await kit.js.publish(
                s.timer("set", "reminder", opened.case_id, timer_id),
                b"",
                headers={
                    "Nats-Schedule": now,
                    "Nats-Schedule-Target": s.timer("due", "reminder", opened.case_id, timer_id),
                },
            )
        stream, durable = (
            kit.topology.timers_stream("reminder"),
            kit.topology.timer_durable("reminder"),
        )

        async def settled() -> bool:
            info = await kit.js.consumer_info(stream, durable)
            # the unknown one given up; the early one held back until its due time
            return info.delivered.stream_seq >= 5 and info.num_ack_pending == 1

        await eventually(settled, what="the forged firing dropped, the early one held")
        assert "timer_fired" not in await _types(kit, opened.case_id)
        elsewhere = await kit.js.add_stream(
            name=f"{kit.topology.root.upper()}_ELSEWHERE",
            subjects=[f"{kit.topology.root}.elsewhere.>"],
            allow_msg_schedules=True,
        )
        assert elsewhere.config.allow_msg_schedules
        with pytest.raises(BadRequestError, match="target is invalid"):
            await kit.js.publish(
                f"{kit.topology.root}.elsewhere.x",
                b"",
                headers={
                    "Nats-Schedule": now,
                    "Nats-Schedule-Target": s.timer("due", "reminder", opened.case_id, "x"),
                },
            )


async def test_a_schedule_disarmed_by_a_foreign_message_is_re_armed_from_the_log(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message with no schedule on a schedule's subject (what a JetStream API reply
    aimed there leaves) disarms it; the agent's sweep re-arms it, and it fires once."""
    monkeypatch.setenv("MESH_TEST_TIMER_SECONDS", "3")
    settings = FAST.model_copy(update={"timer_sweep_every": 0.5})
    async with MeshTestKit(reminder_agent(), nats_url=nats_url, settings=settings) as kit:
        opened = await kit.open_case("insurance_claim")
        timer = await kit.wait_for(TimerSet, opened.case_id)
        subject = kit.topology.subjects.timer("set", "reminder", opened.case_id, timer.event_id)
        await kit.nc.publish(subject, b'{"type":"io.nats.jetstream.api.v1.account_info_response"}')
        await kit.wait_for(CaseStepCompleted, opened.case_id, timeout=15)
        assert (await _types(kit, opened.case_id)).count("timer_fired") == 1
