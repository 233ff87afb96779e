"""The projected views in a relational database, through one code path for SQLite and
PostgreSQL (SQLAlchemy Core, no dialect branches in the queries).

`apply()` is the whole write side: a batch of log records goes in within one
transaction together with the new position (last sequence and Merkle frontier), so a
crash anywhere leaves the views exactly at a batch boundary — never half a batch, and
never an event applied twice. The position moves only if it still is where this
writer read it (optimistic concurrency), so two projectors on one database cannot
interleave.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import orjson
from sqlalchemy import (
    Engine,
    Row,
    Table,
    and_,
    bindparam,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from contracts.eventstore_api import (
    ActionView,
    AgentActivity,
    CaseDetail,
    CaseQuery,
    CaseView,
    TimelineEntry,
)
from mesh.service import ConfigurationError, MeshError
from services.eventstore.domain import (
    CaseState,
    LogRecord,
    count_activity,
    evolve,
    timeline_entry,
)
from services.eventstore.merkle import MerkleFrontier
from services.eventstore.schema import (
    VIEW_TABLES,
    actions,
    agent_activity,
    audit_events,
    cases,
    metadata,
    projection,
)

PROJECTION = "cases"


class ProjectionConflict(MeshError):
    """The stored position is not where this projector expected it: another writer
    moved it, or the batch does not follow on. Nothing of the batch was written."""

    retryable = True


class StoreUnavailable(MeshError):
    """The database could not be reached or failed; nothing of the batch was written."""

    retryable = True


@dataclass(frozen=True)
class Position:
    last_sequence: int
    frontier: MerkleFrontier

    @property
    def tree_size(self) -> int:
        return self.frontier.size


def open_engine(dsn: str) -> Engine:
    """An engine for `sqlite:///path` or `postgresql://…` (psycopg 3 is the driver)."""
    try:
        url = make_url(dsn)
    except Exception as exc:
        raise ConfigurationError(f"not a database URL: {dsn!r} ({exc})") from None
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)

        @event.listens_for(engine, "connect")
        def _durable(dbapi_connection: Any, _record: Any) -> None:
            # WAL lets queries read while the projector writes; FULL syncs every
            # commit, so an acknowledged batch survives a power cut, not only a crash.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True)
    raise ConfigurationError(f"unsupported database {backend!r}: use sqlite or postgresql")


# --------------------------------------------------------------------------- encoding


def _ts(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


# Columns holding JSON text (dicts and lists of a view).
_JSON_COLUMNS = frozenset({"parameters", "evidence", "determining_policies", "headers"})
V = TypeVar("V", bound=msgspec.Struct)


def _to_row(view: msgspec.Struct) -> dict[str, Any]:
    """A view as its row: field for column, times as ISO text, dicts and lists as JSON."""
    row = msgspec.structs.asdict(view)
    for name, value in row.items():
        if isinstance(value, datetime):
            row[name] = _ts(value)
        elif isinstance(value, dict | list):
            row[name] = _json(value)
    return row


def _from_row(view_type: type[V], row: Row[Any]) -> V:
    """A row back as its view (columns the view lacks, such as stored bytes, ignored)."""
    values = {  # str(): SQLAlchemy's column names are a str subclass msgspec refuses
        str(name): orjson.loads(value) if name in _JSON_COLUMNS else value
        for name, value in row._mapping.items()
    }
    return msgspec.convert(values, view_type, strict=False)


def _event_row(record: LogRecord, entry: TimelineEntry, chain: str) -> dict[str, Any]:
    """The timeline line, with the exact stored message an export carries."""
    return {
        **_to_row(entry),
        "subject": record.subject,
        "headers": _json(record.headers),
        "body": record.body,
        "leaf_hash": record.leaf.hex(),
        "chain_hash": chain,
    }


def _frontier_text(frontier: MerkleFrontier) -> str:
    return _json({"size": frontier.size, "nodes": [n.hex() for n in frontier.nodes]})


def _frontier(text: str) -> MerkleFrontier:
    data = orjson.loads(text)
    return MerkleFrontier(data["size"], [bytes.fromhex(n) for n in data["nodes"]])


class _Bulk:
    """Many rows through one statement: compiled once per statement for the database in
    use (SQLAlchemy's compiler picks the dialect's SQL and parameter style), then handed
    to the driver's executemany as plain tuples or dicts. Per-row parameter processing
    in SQLAlchemy cost more than the database itself; the types here (text, integers,
    booleans, bytes) need no conversion on either driver."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str, tuple[str, ...]], Any] = {}

    def _compile(self, conn: Connection, kind: str, table: Table, keys: tuple[str, ...]) -> Any:
        cache_key = (kind, table.name, keys)
        compiled = self._compiled.get(cache_key)
        if compiled is None:
            if kind == "insert":
                statement: Any = table.insert()
            else:
                where = and_(*(table.c[c] == bindparam(f"key_{c}") for c in keys))
                values: dict[str, Any] = {
                    c.name: bindparam(c.name) for c in table.columns if c.name not in keys
                }
                statement = table.update().where(where).values(values)
            compiled = statement.compile(dialect=conn.dialect)
            self._compiled[cache_key] = compiled
        return compiled

    def _run(self, conn: Connection, compiled: Any, rows: list[dict[str, Any]]) -> None:
        if compiled.positional:
            ordered = operator.itemgetter(*compiled.positiontup)
            conn.exec_driver_sql(compiled.string, [ordered(row) for row in rows])
        else:
            conn.exec_driver_sql(compiled.string, rows)

    def insert(self, conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
        if rows:
            self._run(conn, self._compile(conn, "insert", table, ()), rows)

    def update(
        self, conn: Connection, table: Table, keys: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        """UPDATE … WHERE key = :key_<key> for whole rows (the key's bind name differs
        from the column's, which the SET clause already uses)."""
        if rows:
            compiled = self._compile(conn, "update", table, tuple(keys))
            params = [{**row, **{f"key_{c}": row[c] for c in keys}} for row in rows]
            self._run(conn, compiled, params)


# --------------------------------------------------------------------------- the store


class ViewStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._bulk = _Bulk()

    @classmethod
    def open(cls, dsn: str) -> ViewStore:
        store = cls(open_engine(dsn))
        store.create()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def create(self) -> None:
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            if conn.execute(select(projection.c.name)).first() is None:
                conn.execute(
                    projection.insert().values(
                        name=PROJECTION, last_sequence=0, frontier=_frontier_text(MerkleFrontier())
                    )
                )

    def reset(self) -> None:
        """Drop and recreate every view: the start of a rebuild."""
        metadata.drop_all(self.engine)
        self.create()

    def position(self) -> Position:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(projection.c.last_sequence, projection.c.frontier).where(
                    projection.c.name == PROJECTION
                )
            ).one()
        return Position(row.last_sequence, _frontier(row.frontier))

    # ------------------------------------------------------------------ write side

    def apply(self, records: Sequence[LogRecord], position: Position) -> Position:
        """Apply a batch that follows `position` directly; return the new position."""
        if not records:
            return position
        expected = position.last_sequence + 1
        for record in records:
            if record.sequence != expected:
                raise ProjectionConflict(
                    f"the batch skips from sequence {expected - 1} to {record.sequence}"
                )
            expected += 1
        try:
            with self.engine.begin() as conn:
                return self._apply(conn, records, position)
        except IntegrityError as exc:
            # A row of this batch exists already: another writer got there first.
            raise ProjectionConflict(f"the batch collides with stored rows: {exc.orig}") from exc
        except DBAPIError as exc:
            raise StoreUnavailable(f"the view database failed: {exc.orig}") from exc

    def _apply(
        self, conn: Connection, records: Sequence[LogRecord], position: Position
    ) -> Position:
        case_ids = {r.case_id for r in records}
        states = self._load_states(conn, case_ids)
        known_cases = set(states)
        actions_before = {
            (case, rid): a for case, st in states.items() for rid, a in st.actions.items()
        }
        first_copies = self._first_copies(conn, records)
        activity = self._load_activity(conn, records)
        known_activity = set(activity)

        frontier = position.frontier.copy()
        event_rows: list[dict[str, Any]] = []
        touched_activity: set[tuple[str, str]] = set()
        for record in records:
            if record.event is not None and record.problem is None:
                # Only a verified copy is "the first": a forged message published
                # ahead of the genuine one must not make the genuine one a duplicate.
                # Across cases too: one event id names one event in the whole log.
                first = first_copies.get(record.event.event_id)
                if first is None:
                    first_copies[record.event.event_id] = record.sequence
                else:
                    record = replace(record, duplicate_of=first)
            state = evolve(states.get(record.case_id), record)
            states[record.case_id] = state
            event_rows.append(_event_row(record, timeline_entry(record), state.view.chain_head))
            counted = count_activity(activity, record)
            if counted is not None:
                touched_activity.add((counted.actor, counted.event_type))
            frontier.append(record.leaf)

        self._bulk.insert(conn, audit_events, event_rows)
        self._upsert(
            conn,
            cases,
            ["case_id"],
            [_to_row(states[c].view) for c in case_ids],
            lambda row: row["case_id"] in known_cases,
        )
        changed_actions = [
            action
            for case, state in states.items()
            for rid, action in state.actions.items()
            if actions_before.get((case, rid)) != action
        ]
        self._upsert(
            conn,
            actions,
            ["case_id", "request_id"],
            [_to_row(a) for a in changed_actions],
            lambda row: (row["case_id"], row["request_id"]) in actions_before,
        )
        self._upsert(
            conn,
            agent_activity,
            ["actor", "event_type"],
            [_to_row(activity[k]) for k in touched_activity],
            lambda row: (row["actor"], row["event_type"]) in known_activity,
        )
        new_last = records[-1].sequence
        moved = conn.execute(
            projection.update()
            .where(
                projection.c.name == PROJECTION,
                projection.c.last_sequence == position.last_sequence,
            )
            .values(last_sequence=new_last, frontier=_frontier_text(frontier))
        )
        if moved.rowcount != 1:
            raise ProjectionConflict(
                f"the projection is no longer at sequence {position.last_sequence}: "
                "another projector writes to this database"
            )
        return Position(new_last, frontier)

    def _upsert(
        self,
        conn: Connection,
        table: Table,
        key_columns: list[str],
        rows: list[dict[str, Any]],
        exists: Any,
    ) -> None:
        self._bulk.insert(conn, table, [row for row in rows if not exists(row)])
        self._bulk.update(conn, table, key_columns, [row for row in rows if exists(row)])

    def _load_states(self, conn: Connection, case_ids: Iterable[str]) -> dict[str, CaseState]:
        ids = list(case_ids)
        states = {
            row.case_id: CaseState(_from_row(CaseView, row))
            for row in conn.execute(select(cases).where(cases.c.case_id.in_(ids)))
        }
        for row in conn.execute(select(actions).where(actions.c.case_id.in_(ids))):
            states[row.case_id].actions[row.request_id] = _from_row(ActionView, row)
        return states

    def _first_copies(self, conn: Connection, records: Sequence[LogRecord]) -> dict[str, int]:
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

    def _load_activity(
        self, conn: Connection, records: Sequence[LogRecord]
    ) -> dict[tuple[str, str], AgentActivity]:
        actors = list({r.event.actor for r in records if r.event is not None})
        if not actors:
            return {}
        query = select(agent_activity).where(agent_activity.c.actor.in_(actors))
        return {
            (row.actor, row.event_type): _from_row(AgentActivity, row)
            for row in conn.execute(query)
        }

    # ------------------------------------------------------------------ read side

    def list_cases(self, query: CaseQuery) -> list[CaseView]:
        statement = select(cases).order_by(cases.c.case_id).limit(max(1, min(query.limit, 1000)))
        if query.status is not None:
            statement = statement.where(cases.c.status == query.status)
        if query.kind is not None:
            statement = statement.where(cases.c.kind == query.kind)
        if query.after is not None:
            statement = statement.where(cases.c.case_id > query.after)
        with self.engine.connect() as conn:
            return [_from_row(CaseView, row) for row in conn.execute(statement)]

    def case_detail(self, case_id: str) -> CaseDetail | None:
        with self.engine.connect() as conn:
            states = self._load_states(conn, [case_id])
        state = states.get(case_id)
        if state is None:
            return None
        ordered = sorted(state.actions.values(), key=lambda a: (a.requested_at, a.request_id))
        return CaseDetail(case=state.view, actions=ordered)

    def timeline(self, case_id: str) -> list[TimelineEntry]:
        statement = (
            select(audit_events)
            .where(audit_events.c.case_id == case_id)
            .order_by(audit_events.c.sequence)
        )
        with self.engine.connect() as conn:
            return [_from_row(TimelineEntry, row) for row in conn.execute(statement)]

    def activity(self, actor: str | None = None) -> list[AgentActivity]:
        statement = select(agent_activity).order_by(
            agent_activity.c.actor, agent_activity.c.event_type
        )
        if actor is not None:
            statement = statement.where(agent_activity.c.actor == actor)
        with self.engine.connect() as conn:
            return [_from_row(AgentActivity, row) for row in conn.execute(statement)]

    def counts(self) -> tuple[int, int]:
        """(cases, flagged events)."""
        with self.engine.connect() as conn:
            n_cases = conn.execute(select(func.count()).select_from(cases)).scalar_one()
            flagged = conn.execute(
                select(func.coalesce(func.sum(cases.c.flagged_events), 0))
            ).scalar_one()
        return int(n_cases), int(flagged)

    def leaf_hashes(self, tree_size: int, chunk: int = 10_000) -> list[bytes]:
        """The first `tree_size` leaves, in order (what Merkle proofs are built from)."""
        leaves: list[bytes] = []
        with self.engine.connect() as conn:
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

    def stored_messages(
        self,
        case_id: str | None,
        up_to: int,
        after: int = 0,
        limit: int | None = None,
        chunk: int = 2_000,
    ) -> Iterator[Any]:
        """The stored messages of one case (or all) after `after` and up to `up_to`,
        in order, at most `limit` of them."""
        columns = (
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
        left = limit
        with self.engine.connect() as conn:
            while left is None or left > 0:
                size = chunk if left is None else min(chunk, left)
                statement = (
                    select(*columns)
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

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every view, in key order: two stores hold the same views exactly
        when their snapshots are equal (what the rebuild test compares)."""
        result: dict[str, list[tuple[Any, ...]]] = {}
        with self.engine.connect() as conn:
            for table in VIEW_TABLES:
                order = [c for c in table.primary_key.columns]
                result[table.name] = [
                    tuple(row) for row in conn.execute(select(table).order_by(*order))
                ]
        return result
