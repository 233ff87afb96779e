"""Under the registry's enforcement: an agent reads only the cases it works on, only
what its card reads, through the case reader; a dead letter goes back only to the
consumer that filed it, which takes the message from the log by sequence."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import nats.errors
import pytest

from contracts import (
    AgentCard,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
)
from mesh import Agent, HandlerContext
from mesh._broker.publisher import EventPublisher
from mesh._runtime.dead_letters import (
    ORIGINAL_SEQUENCE,
    ORIGINAL_STREAM,
    DeadLetter,
    read_dead_letters,
    replay_dead_letter,
)
from mesh._runtime.replays import ReplayRefused
from mesh._sdk.case_reader import CaseReader, ReadRefused
from mesh.errors import BrokerError, PermanentError
from mesh.testing import eventually
from tests.integration.registry_fixtures import KNOWN_OWNER, SecuredMesh, secured_mesh


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[SecuredMesh]:
    async with secured_mesh(tmp_path) as secured:
        yield secured


def reader_card(agent_id: str, consumes: list[str], reads: list[str]) -> AgentCard:
    return AgentCard(
        agent_id=agent_id,
        name=agent_id,
        version="1",
        owner=KNOWN_OWNER,
        purpose="reads what it may",
        consumes=consumes,
        produces=["case_step_completed"],
        reads=reads,
    )


async def open_case(mesh: SecuredMesh, case_id: str, kind: str = "claim") -> None:
    assert mesh.harness_nc is not None
    opened = CaseOpened(
        case_id=case_id,
        actor="harness",
        payload=CaseOpenedPayload(kind=kind, source="crm", data={"claimant": "Ada"}),
    )
    await EventPublisher(mesh.harness_nc.jetstream(), mesh.harness, mesh.topology).publish(opened)


async def test_an_agent_reads_only_the_cases_it_works_on_and_what_its_card_reads(
    mesh: SecuredMesh,
) -> None:
    seen: dict[str, list[str]] = {}
    agent = Agent(reader_card("screen", ["case_opened"], reads=[]))

    @agent.on(CaseOpened)
    async def look(event: CaseOpened, ctx: HandlerContext) -> None:
        seen[event.case_id or ""] = [s.event.event_name() for s in await ctx.history()]
        await ctx.emit(CaseStepCompleted, CaseStepCompletedPayload(step="s", outcome="o"))

    _, nc = await mesh.run_agent(agent)
    await open_case(mesh, "mine")
    await eventually(lambda: "mine" in seen, what="the agent reading its case")
    assert seen["mine"] == ["case_opened"]

    # A case with no event of a type it consumes is not its business.
    assert mesh.harness_nc is not None
    harness = EventPublisher(mesh.harness_nc.jetstream(), mesh.harness, mesh.topology)
    await harness.publish(
        CaseClosed(case_id="theirs", actor="harness", payload=CaseClosedPayload(outcome="x"))
    )
    reader = CaseReader(nc, mesh.topology, "screen")
    with pytest.raises(ReadRefused, match="works on no case 'theirs'"):
        await reader.history("theirs")
    # Nor does it read the stream itself, by subject or by sequence.
    for request in (
        {"seq": 1},
        {"last_by_subj": mesh.topology.subjects.case_history("theirs")},
    ):
        with pytest.raises(nats.errors.Error):
            await nc.request(
                f"$JS.API.DIRECT.GET.{mesh.topology.cases_stream}",
                json.dumps(request).encode(),
                timeout=1,
            )
    # Nor ask the reader in another principal's name.
    impostor = CaseReader(nc, mesh.topology, "harness")
    with pytest.raises(BrokerError):  # the broker refuses the publish: no answer comes
        await impostor.history("mine")


async def test_a_dead_letter_goes_back_only_to_its_consumer_with_the_logged_message(
    mesh: SecuredMesh,
) -> None:
    handled: list[tuple[str, int, bytes]] = []
    fail = {"now": True}
    victim = Agent(reader_card("victim", ["case_opened"], reads=[]))

    @victim.on(CaseOpened)
    async def once(event: CaseOpened, ctx: HandlerContext) -> None:
        if fail["now"]:
            raise PermanentError("not today")
        assert ctx.message is not None
        handled.append((event.case_id or "", ctx.stream_sequence, ctx.message.body))

    await mesh.run_agent(victim)
    attacker = Agent(reader_card("attacker", ["case_step_completed"], reads=[]))
    attacker.on(CaseStepCompleted)(lambda event, ctx: _nothing())  # type: ignore[arg-type, return-value]
    _, attacker_nc = await mesh.run_agent(attacker)
    await open_case(mesh, "c-1")
    assert mesh.harness_nc is not None
    js = mesh.harness_nc.jetstream()

    async def filed() -> list[DeadLetter]:
        letters = await read_dead_letters(js, mesh.topology)
        return [letter for letter in letters if letter.consumer == "victim"]

    [letter] = await eventually(filed, what="the victim's dead letter")
    assert letter.headers["Mesh-Dlq-Filed-By"]

    # The attacker files a "dead letter" in the victim's name on its own subject (the
    # only one the broker lets it use), pointing at the same original: a replay of it
    # goes to the attacker's own replay durable, never to the victim's.
    crafted = {
        **{k: v for k, v in letter.headers.items() if not k.startswith("Nats-")},
        "Mesh-Dlq-Consumer": "victim",
    }
    subject = mesh.topology.subjects.dead_letter(mesh.topology.cases_stream, "attacker")
    await attacker_nc.jetstream().publish(subject, letter.body, headers=crafted)
    [forged] = [x for x in await read_dead_letters(js, mesh.topology) if x.subject == subject]
    assert forged.consumer == "attacker"

    # An operator's replay of the real one: the victim handles the logged message, by
    # the log's sequence and bytes.
    fail["now"] = False
    operator = await mesh.operator_client()
    await replay_dead_letter(operator.nc.jetstream(), mesh.topology, letter)
    await eventually(lambda: handled, what="the replayed message handled")
    [(case_id, sequence, body)] = handled
    assert case_id == "c-1"
    assert sequence == int(letter.headers[ORIGINAL_SEQUENCE])
    assert letter.headers[ORIGINAL_STREAM] == mesh.topology.cases_stream
    assert msgspec.json.decode(body)["case_id"] == "c-1"

    # A replay pointing the victim at the attacker's crafted letter is refused: it was
    # not filed by the victim.
    handled.clear()
    await operator.nc.jetstream().publish(
        mesh.topology.subjects.replay(mesh.topology.cases_stream, "victim"),
        b"",
        headers={"Mesh-Replay-Of": str(forged.sequence), "Nats-Msg-Id": "sneaky"},
    )
    reader = CaseReader(mesh.started[0].nc, mesh.topology, "victim")
    with pytest.raises(ReplayRefused, match="not by victim"):
        await reader.replayed(forged.sequence)
    assert handled == []


async def _nothing() -> None:
    return None
