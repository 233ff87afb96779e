"""The projection's pure fold: what moves case state and what does not."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts import (
    ActionApproved,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    CaseOpened,
    CaseOpenedPayload,
    DecisionProvenance,
)
from contracts.envelope import Event
from services.eventstore.domain import LogRecord, fold_case
from services.eventstore.merkle import leaf_hash

AT = datetime(2026, 11, 25, tzinfo=UTC)


def record(sequence: int, event: Event, problem: str | None = None) -> LogRecord:
    return LogRecord(
        sequence=sequence,
        subject=f"m.case.c1.{event.event_name()}",
        case_id="c1",
        stored_at=AT,
        headers={},
        body=b"",
        leaf=leaf_hash(str(sequence).encode()),
        event=event,
        signer="U",
        problem=problem,
    )


OPENED = CaseOpened(case_id="c1", actor="ingress", payload=CaseOpenedPayload(kind="k", source="s"))
REQUEST = ActionRequested(
    case_id="c1", actor="adjudicator", payload=ActionRequestedPayload(action_type="pay")
)


def approval(actor: str) -> ActionApproved:
    return ActionApproved(
        case_id="c1",
        actor=actor,
        payload=ActionDecisionPayload(
            request_id=REQUEST.event_id,
            action_type="pay",
            provenance=DecisionProvenance(policy_bundle_hash="h"),
        ),
    )


def test_a_flagged_decision_moves_nothing() -> None:
    # A "decision" by anyone whose card does not produce decisions fails the checker's
    # card check (see test_checking); flagged, it moves no state.
    flagged = record(3, approval("adjudicator"), problem="card does not produce it")
    state = fold_case([record(1, OPENED), record(2, REQUEST), flagged])
    assert state is not None
    assert state.actions[REQUEST.event_id].status == "requested"
    state = fold_case([record(1, OPENED), record(2, REQUEST), record(3, approval("policy"))])
    assert state is not None
    assert state.actions[REQUEST.event_id].status == "approved"


def test_an_event_id_names_one_event_in_the_whole_log() -> None:
    elsewhere = record(2, REQUEST)
    copy = LogRecord(**{**elsewhere.__dict__, "sequence": 3, "case_id": "c2"})
    state = fold_case([record(1, OPENED), elsewhere, copy])
    assert state is not None
    assert state.view.flagged_events == 1


def test_a_forged_copy_ahead_of_the_genuine_event_does_not_mask_it() -> None:
    state = fold_case(
        [record(1, OPENED), record(2, REQUEST, problem="bad signature"), record(3, REQUEST)]
    )
    assert state is not None
    assert REQUEST.event_id in state.actions  # the genuine copy counted
    assert state.view.flagged_events == 1
    again = fold_case([record(1, OPENED), record(2, REQUEST), record(3, REQUEST)])
    assert again is not None
    assert again.view.flagged_events == 1  # a true second copy is flagged as a duplicate
