"""What a principal may read of a case (services/reader/domain.py)."""

from __future__ import annotations

import pytest

from contracts import AgentCard
from services.reader.domain import ReadRefused, readable_history, replayable

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
    with pytest.raises(ReadRefused, match="does not work on case c2"):
        readable_history(FRAUD, "fraud", "c2", ["case_opened"])
    with pytest.raises(ReadRefused, match="no case 'c3'"):
        readable_history(FRAUD, "fraud", "c3", [])
    with pytest.raises(ReadRefused, match="holds no card in force"):
        readable_history(None, "ghost", "c1", ["case_step_completed"])


def test_a_replay_delivers_only_what_the_consumer_consumes() -> None:
    replayable(FRAUD, "fraud", "case_step_completed")
    with pytest.raises(ReadRefused, match="does not consume action_denied"):
        replayable(FRAUD, "fraud", "action_denied")
