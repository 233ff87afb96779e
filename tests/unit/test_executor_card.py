"""An agent that executes approved actions proves the approval from the case log, and
the reader hands it only what its card reads: a card that does not read the whole
approval chain refuses to act, rather than check an approval on part of it (without
the escalations, against the wrong role)."""

from __future__ import annotations

import msgspec
import pytest
from nats.aio.client import Client

from contracts import AgentCard
from contracts.authorship import APPROVAL_CHAIN_TYPES
from mesh._runtime.agent_services import AgentServices
from mesh._sdk.agent import Agent
from mesh._trust.identity import Identity
from mesh._trust.key_directory import KeyDirectory
from mesh.errors import ConfigurationError
from mesh.settings import MeshSettings
from services.agents.claims.cards import PAYMENT


def _services(card: AgentCard) -> AgentServices:
    return AgentServices(
        Agent(card),
        nc=Client(),  # never connected: the refusal comes before any read
        identity=Identity.generate(),
        settings=MeshSettings(),
        topology=None,
        key_directory=KeyDirectory(),
        read_through_reader=True,
    )


async def test_an_executor_whose_card_misses_part_of_the_chain_refuses_to_act() -> None:
    blind = msgspec.structs.replace(
        PAYMENT,
        reads=[
            t for t in APPROVAL_CHAIN_TYPES if t not in ("action_approved", "approval_escalated")
        ],
    )
    with pytest.raises(ConfigurationError, match="does not read approval_escalated"):
        await _services(blind).authorize("case-1", "request-1")


def test_the_payment_agent_reads_the_whole_chain() -> None:
    assert set(APPROVAL_CHAIN_TYPES) <= PAYMENT.readable
