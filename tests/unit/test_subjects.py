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
from contracts.subjects import ConsumerSubject, ServiceSubject, key_of
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


def test_one_event_type_across_a_family() -> None:
    subjects = Subjects("acme")
    assert subjects.events_of_type("ops", "circuit_state_changed") == (
        "acme.ops.*.circuit_state_changed"
    )
    assert subjects.case_events_of_type("case_opened") == subjects.events_of_type(
        "case", "case_opened"
    )


HOSTILE_TOKENS = ["", "a.b", "a*", "a>", "*", ">", "has space", " x", "tab\t", "x" * 129, "ünï"]


@pytest.mark.parametrize("event_type", HOSTILE_TOKENS)
def test_a_family_filter_refuses_a_token_that_would_widen_it(event_type: str) -> None:
    with pytest.raises(InvalidSubject, match="event type"):
        Subjects().events_of_type("ops", event_type)


@pytest.mark.parametrize(
    ("subject", "key"),
    [
        ("mesh.case.c-1.case_opened", "c-1"),
        ("mesh.registry.intake.agent_revoked", "intake"),
        ("mesh.case.c-1.case_opened.extra", "c-1"),
        ("mesh.case..x", ""),
        ("mesh.case", None),
        ("mesh", None),
        ("", None),
    ],
)
def test_key_of_reads_the_key_token_unchecked(subject: str, key: str | None) -> None:
    assert key_of(subject) == key


def test_key_of_is_the_key_parse_finds() -> None:
    subject = Subjects().case_event("c-7", "case_closed")
    assert key_of(subject) == Subjects().parse(subject).key


def test_service_subjects_parse_back() -> None:
    subjects = Subjects("acme")
    assert subjects.parse_service(subjects.service("registry", "get")) == ServiceSubject(
        "acme", "registry", "get", None
    )
    assert subjects.parse_service(subjects.service_as("reader", "history", "intake")) == (
        ServiceSubject("acme", "reader", "history", "intake")
    )


@pytest.mark.parametrize(
    "subject",
    [
        "mesh.svc.registry",  # too few tokens
        "mesh.svc.reader.history.intake.extra",  # too many
        "other.svc.registry.get",  # another root
        "mesh.case.registry.get",  # not a service subject
        "mesh.svc.registry.*",
        "mesh.svc.reader.history.>",
        "mesh.svc..get",
        "mesh.svc.registry.get.",
        "mesh.svc.registry.get now",
        "mesh.svc.registry." + "x" * 129,
        "mesh.svc.registry.get\n",
        "",
    ],
)
def test_parse_service_refuses_what_is_not_a_request_subject(subject: str) -> None:
    with pytest.raises(InvalidSubject):
        Subjects().parse_service(subject)


def test_dead_letter_and_replay_subjects_parse_back() -> None:
    subjects = Subjects()
    assert subjects.parse_consumer(subjects.dead_letter("MESH_CASES", "intake")) == (
        ConsumerSubject("mesh", "dlq", "MESH_CASES", "intake")
    )
    assert subjects.parse_consumer(subjects.replay("MESH_CASES", "intake")) == (
        ConsumerSubject("mesh", "replay", "MESH_CASES", "intake")
    )


@pytest.mark.parametrize(
    "subject",
    [
        "mesh.dlq.MESH_CASES",
        "mesh.dlq.MESH_CASES.intake.extra",
        "other.dlq.MESH_CASES.intake",
        "mesh.svc.MESH_CASES.intake",
        "mesh.dlq.MESH_CASES.*",
        "mesh.replay.>.intake",
        "mesh.dlq..intake",
        "mesh.dlq.MESH CASES.intake",
        "mesh.dlq.MESH_CASES." + "y" * 200,
    ],
)
def test_parse_consumer_refuses_what_is_not_a_dead_letter_or_replay(subject: str) -> None:
    with pytest.raises(InvalidSubject):
        Subjects().parse_consumer(subject)


@pytest.mark.parametrize(
    "subject",
    [
        "mesh.case.c-1.case_opened.extra",  # too many tokens
        "mesh.case.c-1.*",
        "mesh.case.>.x",
        "mesh.case..case_opened",
        "mesh.case. c-1.case_opened",
        "mesh.case.c-1.case_opened\t",
        "mesh.case." + "c" * 129 + ".case_opened",
        "mesh.case." + "c" * 100_000 + ".case_opened",
    ],
)
def test_parse_refuses_hostile_family_subjects(subject: str) -> None:
    with pytest.raises(InvalidSubject):
        Subjects().parse(subject)
