"""The view store, the port the projector writes through, on each backend (SQLite and
PostgreSQL) and without NATS: batches of checked log records go in, every query reads
them back, and the two errors the port promises happen as it says — a writer whose
position is stale gets `ProjectionConflict`, a failing database `StoreUnavailable`,
and in both cases nothing of the batch is written.

One abstract suite, subclassed once per backend: the same assertions run on both.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from sqlalchemy import event

from contracts import (
    ActionApproved,
    ActionCompleted,
    ActionCompletedPayload,
    ActionDecisionPayload,
    ActionRequested,
    ActionRequestedPayload,
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRequired,
    ApprovalRequiredPayload,
    CaseClosed,
    CaseClosedPayload,
    CaseOpened,
    CaseOpenedPayload,
    CaseStepCompleted,
    CaseStepCompletedPayload,
    DecisionProvenance,
)
from contracts.codec import encode
from contracts.envelope import Event
from contracts.eventstore_api import CaseDetail, CaseQuery
from services.eventstore.domain import LogRecord, fold_case, mark_copy
from services.eventstore.merkle import MerkleFrontier, leaf_hash, root
from services.eventstore.timeline import timeline_entry
from services.eventstore.views import (
    Position,
    ProjectionConflict,
    StoreUnavailable,
    ViewStore,
    open_engine,
)
from tests.integration.databases import Databases

START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
BUNDLE = "bundle-7"


class Log:
    """A case log as the projector would hand it over: checked records, in sequence."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    def add(
        self,
        case_id: str,
        event: Event | None,
        *,
        problem: str | None = None,
    ) -> LogRecord:
        sequence = len(self.records) + 1
        subject = f"m.case.{case_id}.{event.event_name() if event else 'garbage'}"
        body = encode(event) if event is not None else b"\xff not an event"
        record = LogRecord(
            sequence=sequence,
            subject=subject,
            case_id=case_id,
            stored_at=START + timedelta(seconds=sequence),
            headers={"Mesh-Signer": "U" + case_id.upper(), "Nats-Msg-Id": str(sequence)},
            body=body,
            leaf=leaf_hash(subject.encode() + b"\n" + body),
            event=event,
            signer=None if problem else "U" + case_id.upper(),
            problem=problem,
        )
        self.records.append(record)
        return record

    def of(self, case_id: str) -> list[LogRecord]:
        return [r for r in self.records if r.case_id == case_id]


def decision(request: ActionRequested) -> ActionDecisionPayload:
    return ActionDecisionPayload(
        request_id=request.event_id,
        action_type="issue_payment",
        provenance=DecisionProvenance(policy_bundle_hash=BUNDLE, inputs={"amount": 250}),
        reasons=["within limits"],
        approver="maria",
    )


def claims_log() -> tuple[Log, dict[str, Event]]:
    """Four cases, interleaved: one paid after a human's approval, one still open, one
    with a forged copy ahead of its genuine request, a second copy of it and an
    unreadable message, and one holding a copy of another case's event."""
    log = Log()
    paid = "c-paid"
    opened = CaseOpened(
        case_id=paid, actor="ingress", payload=CaseOpenedPayload(kind="claim", source="crm")
    )
    request = ActionRequested(
        case_id=paid,
        actor="adjudicator",
        payload=ActionRequestedPayload(
            action_type="issue_payment", parameters={"amount": 250}, rationale="covered"
        ),
    )
    log.add(paid, opened)
    log.add(
        "c-open",
        CaseOpened(
            case_id="c-open",
            actor="ingress",
            payload=CaseOpenedPayload(kind="complaint", source="web"),
        ),
    )
    log.add(paid, request)
    log.add(
        paid,
        ApprovalRequired(
            case_id=paid,
            actor="policy",
            payload=ApprovalRequiredPayload(
                request_id=request.event_id,
                action_type="issue_payment",
                provenance=DecisionProvenance(policy_bundle_hash=BUNDLE),
                approver_role="claims_manager",
                deadline=START + timedelta(hours=4),
            ),
        ),
    )
    log.add(
        "c-open",
        CaseStepCompleted(
            case_id="c-open",
            actor="screener",
            payload=CaseStepCompletedPayload(step="triage", outcome="queued"),
        ),
    )
    log.add(
        paid,
        ApprovalGranted(
            case_id=paid,
            actor="maria",
            payload=ApprovalGrantedPayload(request_id=request.event_id, approver="maria"),
        ),
    )
    log.add(paid, ActionApproved(case_id=paid, actor="policy", payload=decision(request)))
    log.add(
        paid,
        ActionCompleted(
            case_id=paid,
            actor="payer",
            payload=ActionCompletedPayload(
                request_id=request.event_id, action_type="issue_payment", result={"paid": 250}
            ),
        ),
    )
    log.add(
        paid,
        CaseClosed(case_id=paid, actor="adjudicator", payload=CaseClosedPayload(outcome="paid")),
    )

    flags = "c-flags"
    flagged_request = ActionRequested(
        case_id=flags,
        actor="adjudicator",
        payload=ActionRequestedPayload(action_type="issue_payment", parameters={"amount": 9}),
    )
    log.add(
        flags,
        CaseOpened(
            case_id=flags, actor="ingress", payload=CaseOpenedPayload(kind="claim", source="crm")
        ),
    )
    log.add(flags, flagged_request, problem="signature does not verify")  # forged, ahead
    log.add(flags, flagged_request)  # the genuine one: the first verified copy
    log.add(flags, flagged_request)  # a second verified copy: a duplicate
    log.add(flags, None, problem="unreadable: not JSON")
    # The paid case's request again, in another case: one id names one event.
    log.add("c-echo", msgspec.structs.replace(request, case_id="c-echo"))
    return log, {"request": request, "flagged_request": flagged_request}


def batches(records: Sequence[LogRecord], sizes: Sequence[int]) -> Iterator[list[LogRecord]]:
    """The records cut into batches of the given sizes, cycling."""
    start, turn = 0, 0
    while start < len(records):
        size = sizes[turn % len(sizes)]
        yield list(records[start : start + size])
        start, turn = start + size, turn + 1


def apply_all(store: ViewStore, records: Sequence[LogRecord], sizes: Sequence[int]) -> Position:
    position = store.position()
    for batch in batches(records, sizes):
        position = store.apply(batch, position)
    return position


def detail_of_fold(records: Sequence[LogRecord]) -> CaseDetail:
    state = fold_case(records)
    assert state is not None
    actions = sorted(state.actions.values(), key=lambda a: (a.requested_at, a.request_id))
    return CaseDetail(case=state.view, actions=actions)


class FailOn:
    """Makes the database fail (the driver's own OperationalError) at every statement
    that contains `text`, as a lost connection or a full disk would."""

    def __init__(self, store: ViewStore, text: str) -> None:
        self.store = store
        self.text = text
        self.failed = 0

    def __enter__(self) -> FailOn:
        event.listen(self.store.engine, "before_cursor_execute", self._fail)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.store.engine, "before_cursor_execute", self._fail)

    def _fail(self, conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.text in statement:
            self.failed += 1
            raise conn.dialect.loaded_dbapi.OperationalError("the disk went away")


class ViewStoreContract:
    """What every view store backend does. Subclasses name the backend."""

    kind: ClassVar[str]

    def unreachable_dsn(self, tmp_path: Path) -> str:
        raise NotImplementedError

    @pytest.fixture
    def dsn(self, databases: Databases) -> str:
        return databases.new(self.kind)

    @pytest.fixture
    def store(self, dsn: str) -> Iterator[ViewStore]:
        store = ViewStore.open(dsn)
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def other_store(self, dsn: str) -> Iterator[ViewStore]:
        """A second writer on the same database: another projector."""
        store = ViewStore(open_engine(dsn))
        try:
            yield store
        finally:
            store.close()

    # ------------------------------------------------------------------ reads

    def test_empty_views_answer_every_query(self, store: ViewStore) -> None:
        position = store.position()
        assert (position.last_sequence, position.tree_size) == (0, 0)
        assert store.list_cases(CaseQuery()) == []
        assert store.case_detail("c-paid") is None
        assert store.timeline("c-paid") == []
        assert store.activity() == []
        assert store.counts() == (0, 0)
        assert store.leaf_hashes(0) == []
        assert list(store.stored_messages(None, 10)) == []
        assert store.apply([], position) == position

    def test_a_batch_reads_back_through_every_query(self, store: ViewStore) -> None:
        log, events = claims_log()
        request = events["request"]
        position = store.apply(log.records, store.position())

        assert position.last_sequence == len(log.records)
        assert position.frontier.root() == root([r.leaf for r in log.records])
        stored = store.position()
        assert stored.last_sequence == position.last_sequence
        assert stored.frontier.root() == position.frontier.root()

        everything = store.list_cases(CaseQuery())
        assert [c.case_id for c in everything] == ["c-echo", "c-flags", "c-open", "c-paid"]
        by_id = {c.case_id: c for c in everything}
        assert by_id["c-paid"].status == "closed"
        assert by_id["c-paid"].outcome == "paid"
        assert by_id["c-paid"].opened_at == START + timedelta(seconds=1)
        assert by_id["c-paid"].event_count == 7
        assert by_id["c-paid"].open_actions == 0
        assert by_id["c-open"].status == "open"
        assert (by_id["c-open"].step, by_id["c-open"].outcome) == ("triage", "queued")
        assert by_id["c-flags"].flagged_events == 3
        assert by_id["c-flags"].open_actions == 1
        assert by_id["c-echo"].flagged_events == 1
        assert [c.case_id for c in store.list_cases(CaseQuery(status="closed"))] == ["c-paid"]
        assert [c.case_id for c in store.list_cases(CaseQuery(kind="complaint"))] == ["c-open"]
        assert [c.case_id for c in store.list_cases(CaseQuery(after="c-flags", limit=1))] == [
            "c-open"
        ]

        detail = store.case_detail("c-paid")
        assert detail is not None
        assert detail.case == by_id["c-paid"]
        [payment] = detail.actions
        assert payment.request_id == request.event_id
        assert payment.status == "completed"
        assert payment.parameters == {"amount": 250}
        assert (payment.approver, payment.approver_role) == ("maria", "claims_manager")
        assert payment.policy_bundle_hash == BUNDLE
        assert payment.outcome == "paid=250"

        timeline = store.timeline("c-paid")
        assert [e.sequence for e in timeline] == [r.sequence for r in log.of("c-paid")]
        assert [e.event_type for e in timeline] == [
            "case_opened",
            "action_requested",
            "approval_required",
            "approval_granted",
            "action_approved",
            "action_completed",
            "case_closed",
        ]
        approved = timeline[4]
        assert (approved.decision, approved.approver) == ("approved", "maria")
        assert approved.evidence == {"amount": 250}
        assert approved.stored_at == START + timedelta(seconds=7)
        flags = store.timeline("c-flags")
        assert [(e.verified, e.duplicate_of) for e in flags] == [
            (True, None),
            (False, None),  # the forged copy ahead of the genuine one
            (True, None),  # the genuine one is the first verified copy
            (True, 12),  # a second copy of it
            (False, None),
        ]
        assert flags[4].event_type is None
        assert flags[4].summary.startswith("unreadable message")
        [echo] = store.timeline("c-echo")
        assert echo.duplicate_of == 3  # the first verified copy, in c-paid

        activity = {(a.actor, a.event_type): a for a in store.activity()}
        assert activity[("adjudicator", "action_requested")].events == 5
        assert activity[("adjudicator", "action_requested")].flagged == 3
        assert activity[("maria", "approval_granted")].events == 1
        assert [a.event_type for a in store.activity("maria")] == ["approval_granted"]
        assert store.counts() == (4, 4)

        assert store.leaf_hashes(len(log.records)) == [r.leaf for r in log.records]
        assert store.leaf_hashes(3, chunk=2) == [r.leaf for r in log.records[:3]]
        messages = list(store.stored_messages("c-paid", up_to=8, after=1, limit=3, chunk=2))
        assert [m.sequence for m in messages] == [3, 4, 6]
        kept = {r.sequence: r for r in log.records}
        assert all(bytes(m.body) == kept[m.sequence].body for m in messages)
        assert all(m.leaf_hash == kept[m.sequence].leaf.hex() for m in messages)
        whole = list(store.stored_messages(None, up_to=len(log.records), chunk=4))
        assert [m.sequence for m in whole] == list(range(1, len(log.records) + 1))
        assert whole[-1].duplicate_of == 3

    def test_the_views_agree_with_the_pure_fold_of_each_case(self, store: ViewStore) -> None:
        # The first-verified-copy rule lives in the domain; the store and an auditor's
        # replay must mark the same copies, or a rebuild would not reproduce the views.
        log, _ = claims_log()
        apply_all(store, log.records, [2, 3])
        for case_id in ("c-paid", "c-open", "c-flags"):
            records = log.of(case_id)
            assert store.case_detail(case_id) == detail_of_fold(records), case_id
            first_copies: dict[str, int] = {}
            marked = [mark_copy(first_copies, r) for r in records]
            assert store.timeline(case_id) == [timeline_entry(r) for r in marked], case_id

    def test_batch_boundaries_do_not_change_the_views(
        self, store: ViewStore, databases: Databases
    ) -> None:
        log, _ = claims_log()
        apply_all(store, log.records, [len(log.records)])
        one_by_one = ViewStore.open(databases.new(self.kind))
        try:
            apply_all(one_by_one, log.records, [1, 2, 3])
            assert one_by_one.snapshot() == store.snapshot()
        finally:
            one_by_one.close()

    def test_reopening_keeps_the_views_and_a_reset_empties_them(
        self, store: ViewStore, dsn: str
    ) -> None:
        log, _ = claims_log()
        position = apply_all(store, log.records, [4])
        before = store.snapshot()
        again = ViewStore.open(dsn)  # create() on existing tables changes nothing
        try:
            assert again.snapshot() == before
            assert again.position().frontier.root() == position.frontier.root()
            again.reset()
            assert again.position().last_sequence == 0
            assert again.counts() == (0, 0)
        finally:
            again.close()

    # ------------------------------------------------------------------ conflicts

    def test_reapplying_a_batch_is_refused_and_changes_nothing(self, store: ViewStore) -> None:
        log, _ = claims_log()
        first, second = log.records[:6], log.records[6:]
        start = store.position()
        after_first = store.apply(first, start)
        before = store.snapshot()
        with pytest.raises(ProjectionConflict) as stale:
            store.apply(first, start)  # again, from where it was applied
        assert stale.value.retryable
        with pytest.raises(ProjectionConflict, match="skips"):
            store.apply(first, after_first)  # again, as if it followed itself
        assert store.snapshot() == before
        store.apply(second, after_first)
        assert store.position().last_sequence == len(log.records)

    def test_a_batch_with_a_gap_is_refused_and_nothing_written(self, store: ViewStore) -> None:
        log, _ = claims_log()
        before = store.snapshot()
        with pytest.raises(ProjectionConflict, match="skips from sequence 2 to 4"):
            store.apply([*log.records[:2], *log.records[3:5]], store.position())
        assert store.snapshot() == before

    def test_two_projectors_on_one_store_cannot_interleave(
        self, store: ViewStore, other_store: ViewStore
    ) -> None:
        log, _ = claims_log()
        batch, rest = log.records[:5], log.records[5:]
        mine = store.position()
        theirs = other_store.position()
        moved = store.apply(batch, mine)
        after_mine = store.snapshot()

        # The other projector read the same position, before mine moved it: its batch
        # (the same messages, read from the same stream) is refused, and writes nothing.
        with pytest.raises(ProjectionConflict):
            other_store.apply(batch, theirs)
        assert other_store.snapshot() == after_mine

        # Resynced from the database, it carries on where mine stopped.
        resynced = other_store.position()
        assert resynced.last_sequence == moved.last_sequence
        other_store.apply(rest, resynced)
        assert store.position().last_sequence == len(log.records)
        with pytest.raises(ProjectionConflict):
            store.apply(rest, moved)  # and now the first one is the stale one

    def test_a_position_the_store_is_not_at_is_refused_and_nothing_written(
        self, store: ViewStore
    ) -> None:
        # A writer that believes the views hold more than they do (its batch collides
        # with no stored row): only the position check stops it.
        log, _ = claims_log()
        at_three = store.apply(log.records[:3], store.position())
        before = store.snapshot()
        believed = Position(5, at_three.frontier)
        with pytest.raises(ProjectionConflict, match="no longer at sequence 5"):
            store.apply(log.records[5:8], believed)
        assert store.snapshot() == before
        assert store.position().last_sequence == 3

    # ------------------------------------------------------------------ failures

    @pytest.mark.parametrize(
        "statement",
        [
            "INSERT INTO audit_events",
            "UPDATE cases",
            "INSERT INTO agent_activity",
            "UPDATE projection",
        ],
    )
    def test_a_database_failing_mid_batch_writes_nothing(
        self, store: ViewStore, databases: Databases, statement: str
    ) -> None:
        log, _ = claims_log()
        first, second = log.records[:4], log.records[4:]
        position = store.apply(first, store.position())
        before = store.snapshot()
        with FailOn(store, statement) as failing, pytest.raises(StoreUnavailable) as caught:
            store.apply(second, position)
        assert failing.failed == 1
        assert caught.value.retryable
        assert "the disk went away" in str(caught.value)
        assert store.snapshot() == before
        assert store.position().last_sequence == position.last_sequence

        # Once the database is back, the same batch goes in whole.
        store.apply(second, position)
        reference = ViewStore.open(databases.new(self.kind))
        try:
            apply_all(reference, log.records, [len(log.records)])
            assert store.snapshot() == reference.snapshot()
        finally:
            reference.close()

    def test_a_database_failing_a_read_is_unavailable(self, store: ViewStore) -> None:
        log, _ = claims_log()
        store.apply(log.records, store.position())
        with FailOn(store, "cases"):
            with pytest.raises(StoreUnavailable):
                store.list_cases(CaseQuery())
            with pytest.raises(StoreUnavailable):
                store.case_detail("c-paid")
            with pytest.raises(StoreUnavailable):
                store.counts()
        with FailOn(store, "audit_events"):
            with pytest.raises(StoreUnavailable):
                store.timeline("c-paid")
            with pytest.raises(StoreUnavailable):
                list(store.stored_messages(None, 5))
            with pytest.raises(StoreUnavailable):
                store.leaf_hashes(5)
        with FailOn(store, "agent_activity"), pytest.raises(StoreUnavailable):
            store.activity()

    def test_an_unreachable_database_is_unavailable(self, tmp_path: Path) -> None:
        dsn = self.unreachable_dsn(tmp_path)
        log, _ = claims_log()
        with pytest.raises(StoreUnavailable):
            ViewStore.open(dsn)
        store = ViewStore(open_engine(dsn))
        try:
            with pytest.raises(StoreUnavailable):
                store.position()
            with pytest.raises(StoreUnavailable) as caught:
                store.apply(log.records[:3], Position(0, MerkleFrontier()))
            assert caught.value.retryable
            with pytest.raises(StoreUnavailable):
                store.list_cases(CaseQuery())
        finally:
            store.close()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TestSQLiteViewStore(ViewStoreContract):
    kind = "sqlite"

    def unreachable_dsn(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}"  # a directory: SQLite cannot open it


class TestPostgreSQLViewStore(ViewStoreContract):
    kind = "postgresql"

    def unreachable_dsn(self, tmp_path: Path) -> str:
        return f"postgresql://postgres@127.0.0.1:{_closed_port()}/views"
