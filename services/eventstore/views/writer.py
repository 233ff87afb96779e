"""The write side: a batch of log records applied to the views in the caller's
transaction, together with the new position. A crash anywhere leaves the views exactly
at a batch boundary — never half a batch, and never an event applied twice.

Only the rows a batch changes are written: the states of the cases it touches are
loaded once, folded with the domain's pure functions, and written back in bulk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from contracts.eventstore_api import AgentActivity
from services.eventstore.domain import (
    LogRecord,
    count_activity,
    evolve,
    mark_copy,
)
from services.eventstore.timeline import timeline_entry
from services.eventstore.views import position as positions
from services.eventstore.views.bulk import BulkWriter
from services.eventstore.views.position import Position, ProjectionConflict
from services.eventstore.views.queries import case_states
from services.eventstore.views.rows import event_row, from_row, to_row
from services.eventstore.views.schema import actions, agent_activity, audit_events, cases


def check_follows(records: Sequence[LogRecord], position: Position) -> None:
    """The batch must follow `position` without a gap or a repeat."""
    expected = position.last_sequence + 1
    for record in records:
        if record.sequence != expected:
            raise ProjectionConflict(
                f"the batch skips from sequence {expected - 1} to {record.sequence}"
            )
        expected += 1


def apply_batch(
    conn: Connection, bulk: BulkWriter, records: Sequence[LogRecord], position: Position
) -> Position:
    """Apply a batch that follows `position`; return the new position."""
    case_ids = {r.case_id for r in records}
    states = case_states(conn, case_ids)
    known_cases = set(states)
    actions_before = {
        (case, rid): a for case, st in states.items() for rid, a in st.actions.items()
    }
    first_copies = _first_copies(conn, records)
    activity = _activity(conn, records)
    known_activity = set(activity)

    frontier = position.frontier.copy()
    event_rows: list[dict[str, Any]] = []
    touched_activity: set[tuple[str, str]] = set()
    for stored in records:
        record = mark_copy(first_copies, stored)
        state = evolve(states.get(record.case_id), record)
        states[record.case_id] = state
        event_rows.append(event_row(record, timeline_entry(record), state.view.chain_head))
        counted = count_activity(activity, record)
        if counted is not None:
            touched_activity.add((counted.actor, counted.event_type))
        frontier.append(record.leaf)

    bulk.insert(conn, audit_events, event_rows)
    bulk.upsert(
        conn,
        cases,
        ["case_id"],
        [to_row(states[c].view) for c in case_ids],
        lambda row: row["case_id"] in known_cases,
    )
    changed_actions = [
        action
        for case, state in states.items()
        for rid, action in state.actions.items()
        if actions_before.get((case, rid)) != action
    ]
    bulk.upsert(
        conn,
        actions,
        ["case_id", "request_id"],
        [to_row(a) for a in changed_actions],
        lambda row: (row["case_id"], row["request_id"]) in actions_before,
    )
    bulk.upsert(
        conn,
        agent_activity,
        ["actor", "event_type"],
        [to_row(activity[k]) for k in touched_activity],
        lambda row: (row["actor"], row["event_type"]) in known_activity,
    )
    after = Position(records[-1].sequence, frontier)
    positions.move(conn, position, after)
    return after


def _first_copies(conn: Connection, records: Sequence[LogRecord]) -> dict[str, int]:
    """The first verified copy already stored of each event id in the batch (what
    `mark_copy` continues from): across cases, one event id names one event."""
    ids = list({r.event.event_id for r in records if r.event is not None})
    if not ids:
        return {}
    query = (
        select(audit_events.c.event_id, audit_events.c.sequence)
        .where(
            audit_events.c.event_id.in_(ids),
            audit_events.c.duplicate_of.is_(None),
            audit_events.c.verified.is_(True),
        )
        .order_by(audit_events.c.sequence)
    )
    found: dict[str, int] = {}
    for row in conn.execute(query):
        found.setdefault(row.event_id, row.sequence)
    return found


def _activity(
    conn: Connection, records: Sequence[LogRecord]
) -> dict[tuple[str, str], AgentActivity]:
    actors = list({r.event.actor for r in records if r.event is not None})
    if not actors:
        return {}
    query = select(agent_activity).where(agent_activity.c.actor.in_(actors))
    return {
        (row.actor, row.event_type): from_row(AgentActivity, row) for row in conn.execute(query)
    }
