"""The read side: what the endpoints, the exports and the rebuild check ask of the
views, each a query on a connection the store opens."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from contracts.eventstore_api import (
    ActionView,
    AgentActivity,
    CaseDetail,
    CaseQuery,
    CaseView,
    TimelineEntry,
)
from mesh.service import MeshError
from services.eventstore.domain import CaseState
from services.eventstore.views.rows import from_row
from services.eventstore.views.schema import (
    VIEW_TABLES,
    actions,
    agent_activity,
    audit_events,
    cases,
)


def case_states(conn: Connection, case_ids: Iterable[str]) -> dict[str, CaseState]:
    """The stored state of these cases (those that exist), with their actions."""
    ids = list(case_ids)
    states = {
        row.case_id: CaseState(from_row(CaseView, row))
        for row in conn.execute(select(cases).where(cases.c.case_id.in_(ids)))
    }
    for row in conn.execute(select(actions).where(actions.c.case_id.in_(ids))):
        states[row.case_id].actions[row.request_id] = from_row(ActionView, row)
    return states


def list_cases(conn: Connection, query: CaseQuery) -> list[CaseView]:
    statement = select(cases).order_by(cases.c.case_id).limit(max(1, min(query.limit, 1000)))
    if query.status is not None:
        statement = statement.where(cases.c.status == query.status)
    if query.kind is not None:
        statement = statement.where(cases.c.kind == query.kind)
    if query.after is not None:
        statement = statement.where(cases.c.case_id > query.after)
    return [from_row(CaseView, row) for row in conn.execute(statement)]


def case_detail(conn: Connection, case_id: str) -> CaseDetail | None:
    state = case_states(conn, [case_id]).get(case_id)
    if state is None:
        return None
    ordered = sorted(state.actions.values(), key=lambda a: (a.requested_at, a.request_id))
    return CaseDetail(case=state.view, actions=ordered)


def timeline(conn: Connection, case_id: str) -> list[TimelineEntry]:
    statement = (
        select(audit_events)
        .where(audit_events.c.case_id == case_id)
        .order_by(audit_events.c.sequence)
    )
    return [from_row(TimelineEntry, row) for row in conn.execute(statement)]


def activity(conn: Connection, actor: str | None = None) -> list[AgentActivity]:
    statement = select(agent_activity).order_by(agent_activity.c.actor, agent_activity.c.event_type)
    if actor is not None:
        statement = statement.where(agent_activity.c.actor == actor)
    return [from_row(AgentActivity, row) for row in conn.execute(statement)]


def counts(conn: Connection) -> tuple[int, int]:
    """(cases, flagged events)."""
    n_cases = conn.execute(select(func.count()).select_from(cases)).scalar_one()
    flagged = conn.execute(select(func.coalesce(func.sum(cases.c.flagged_events), 0))).scalar_one()
    return int(n_cases), int(flagged)


def leaf_hashes(conn: Connection, tree_size: int, chunk: int = 10_000) -> list[bytes]:
    """The first `tree_size` leaves, in order (what Merkle proofs are built from)."""
    leaves: list[bytes] = []
    while len(leaves) < tree_size:
        statement = (
            select(audit_events.c.leaf_hash)
            .where(audit_events.c.sequence > len(leaves))
            .order_by(audit_events.c.sequence)
            .limit(min(chunk, tree_size - len(leaves)))
        )
        batch = [bytes.fromhex(h) for h in conn.execute(statement).scalars()]
        if not batch:
            raise MeshError(f"the store holds {len(leaves)} leaves, not {tree_size}")
        leaves.extend(batch)
    return leaves


_STORED_MESSAGE = (
    audit_events.c.sequence,
    audit_events.c.case_id,
    audit_events.c.event_id,
    audit_events.c.subject,
    audit_events.c.stored_at,
    audit_events.c.headers,
    audit_events.c.body,
    audit_events.c.leaf_hash,
    audit_events.c.chain_hash,
    audit_events.c.duplicate_of,
)


def stored_messages(
    conn: Connection,
    case_id: str | None,
    up_to: int,
    after: int = 0,
    limit: int | None = None,
    chunk: int = 2_000,
) -> Iterator[Any]:
    """The stored messages of one case (or all) after `after` and up to `up_to`, in
    order, at most `limit` of them, read `chunk` at a time."""
    left = limit
    while left is None or left > 0:
        size = chunk if left is None else min(chunk, left)
        statement = (
            select(*_STORED_MESSAGE)
            .where(audit_events.c.sequence > after, audit_events.c.sequence <= up_to)
            .order_by(audit_events.c.sequence)
            .limit(size)
        )
        if case_id is not None:
            statement = statement.where(audit_events.c.case_id == case_id)
        rows = list(conn.execute(statement))
        if not rows:
            return
        yield from rows
        after = rows[-1].sequence
        if left is not None:
            left -= len(rows)


def snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every view, in key order: two stores hold the same views exactly
    when their snapshots are equal (what the rebuild test compares)."""
    result: dict[str, list[tuple[Any, ...]]] = {}
    for table in VIEW_TABLES:
        order = list(table.primary_key.columns)
        result[table.name] = [tuple(row) for row in conn.execute(select(table).order_by(*order))]
    return result
