from __future__ import annotations

import pytest

from contracts import (
    AgentRevoked,
    CaseOpened,
    CircuitStateChanged,
    InvalidSubject,
    ParsedSubject,
    Subjects,
)
from contracts.events.operations import CircuitStateChangedPayload
from tests.unit.samples import sample_event


def test_case_subjects_have_a_fixed_token_count() -> None:
    subjects = Subjects()
    assert subjects.case_event("c-1", "case_opened") == "mesh.case.c-1.case_opened"
    assert subjects.case_events_of_type("case_opened") == "mesh.case.*.case_opened"
    assert subjects.case_history("c-1") == "mesh.case.c-1.*"


def test_each_family_places_its_events() -> None:
    subjects = Subjects("acme")
    assert subjects.for_event(sample_event(CaseOpened)) == "acme.case.case-1.case_opened"
    revoked = sample_event(AgentRevoked)
    assert subjects.for_event(revoked) == "acme.registry.sample.agent_revoked"
    breaker = CircuitStateChanged(
        actor="payments",
        payload=CircuitStateChangedPayload(
            breaker="gateway", previous="closed", current="open", reason="5 failures"
        ),
    )
    assert subjects.for_event(breaker) == "acme.ops.gateway.circuit_state_changed"


def test_parse_is_the_inverse_of_build() -> None:
    subjects = Subjects()
    parsed = subjects.parse(subjects.case_event("c-9", "case_closed"))
    assert parsed == ParsedSubject("mesh", "case", "c-9", "case_closed")


@pytest.mark.parametrize("case_id", ["", "a.b", "a*", "a>", "has space", "x" * 129, "tab\t", "ünï"])
def test_tokens_that_would_break_subjects_are_refused(case_id: str) -> None:
    with pytest.raises(InvalidSubject, match="case key"):
        Subjects().case_event(case_id, "case_opened")


@pytest.mark.parametrize(
    "subject", ["mesh.case.c-1", "other.case.c-1.x", "mesh.nope.c-1.x", "mesh.case.c*.x"]
)
def test_parse_refuses_foreign_subjects(subject: str) -> None:
    with pytest.raises(InvalidSubject):
        Subjects().parse(subject)


def test_a_case_event_without_case_id_has_no_subject() -> None:
    event = sample_event(CaseOpened).with_envelope(case_id=None)
    with pytest.raises(ValueError, match="needs a case_id"):
        Subjects().for_event(event)
