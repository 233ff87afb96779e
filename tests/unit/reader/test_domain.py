"""What a principal may read of a case (services/reader/domain.py)."""

from __future__ import annotations

import pytest

from contracts import AgentCard
from mesh.errors import Refused
from services.reader.domain import readable_history, replayable

FRAUD = AgentCard(
    agent_id="fraud",
    name="Fraud",
    version="1",
    owner="o",
    purpose="p",
    consumes=["case_step_completed"],
    produces=["case_step_completed"],
    reads=["case_opened"],
)


def test_an_agent_reads_what_its_card_reads_of_a_case_it_works_on() -> None:
    readable = readable_history(FRAUD, "fraud", "c1", ["case_opened", "case_step_completed"])
    assert readable == {"case_opened", "case_step_completed"}
    assert "action_requested" not in readable


def test_a_case_the_agent_never_worked_on_is_refused() -> None:
    with pytest.raises(Refused, match="works on no case 'c2'") as elsewhere:
        readable_history(FRAUD, "fraud", "c2", ["case_opened"])
    with pytest.raises(Refused) as nowhere:
        readable_history(FRAUD, "fraud", "c3", [])
    # The same answer whether the case exists or not: no oracle of which cases exist.
    assert elsewhere.value.reason.replace("c2", "c3") == nowhere.value.reason
    with pytest.raises(Refused, match="holds no card in force"):
        readable_history(None, "ghost", "c1", ["case_step_completed"])


def test_a_replay_delivers_only_what_the_consumer_consumes() -> None:
    replayable(FRAUD, "fraud", "case_step_completed")
    with pytest.raises(Refused, match="does not consume action_denied"):
        replayable(FRAUD, "fraud", "action_denied")
