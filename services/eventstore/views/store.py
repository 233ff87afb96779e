"""The view store: the port the projector writes through and the endpoints read from,
over one engine (SQLite or PostgreSQL). Each call is one transaction or one read
connection; the driver's failures leave it as `StoreUnavailable`, a batch that does not
follow the stored position as `ProjectionConflict` — in both cases with nothing of the
batch written."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError

from contracts.eventstore_api import (
    AgentActivity,
    CaseDetail,
    CaseQuery,
    CaseView,
    TimelineEntry,
)
from services.eventstore.domain import LogRecord
from services.eventstore.views import position as positions
from services.eventstore.views import queries
from services.eventstore.views.bulk import BulkWriter
from services.eventstore.views.engine import database_errors, open_engine
from services.eventstore.views.lease import WriterLease, open_lease
from services.eventstore.views.position import Position, ProjectionConflict
from services.eventstore.views.schema import metadata
from services.eventstore.views.writer import apply_batch, check_follows


class ViewStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._bulk = BulkWriter()

    @classmethod
    def open(cls, dsn: str) -> ViewStore:
        store = cls(open_engine(dsn))
        store.create()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def create(self) -> None:
        """The tables and the position of empty views, where they do not exist yet."""
        with database_errors("create the views"):
            metadata.create_all(self.engine)
            with self.engine.begin() as conn:
                positions.initialise(conn)

    def reset(self) -> None:
        """Drop and recreate every view: the start of a rebuild."""
        with database_errors("drop the views"):
            metadata.drop_all(self.engine)
        self.create()

    def position(self) -> Position:
        with database_errors("read the position"), self.engine.connect() as conn:
            return positions.read(conn)

    # ------------------------------------------------------------------ write side

    def apply(self, records: Sequence[LogRecord], position: Position) -> Position:
        """Apply a batch that follows `position` directly; return the new position."""
        if not records:
            return position
        check_follows(records, position)
        with database_errors("apply a batch"):
            try:
                with self.engine.begin() as conn:
                    return apply_batch(conn, self._bulk, records, position)
            except IntegrityError as exc:
                # A row of this batch exists already: another writer got there first.
                raise ProjectionConflict(
                    f"the batch collides with stored rows: {exc.orig}"
                ) from exc

    def apply_on(
        self, conn: Connection, records: Sequence[LogRecord], position: Position
    ) -> Position:
        """`apply`, in a transaction of `conn` (the writer lease's own session)."""
        if not records:
            return position
        check_follows(records, position)
        with database_errors("apply a batch"):
            try:
                with conn.begin():
                    return apply_batch(conn, self._bulk, records, position)
            except IntegrityError as exc:
                raise ProjectionConflict(
                    f"the batch collides with stored rows: {exc.orig}"
                ) from exc

    def lease(self, timeout: float) -> WriterLease:
        """The writer lease of this database (see lease.py): an advisory lock on
        PostgreSQL; on SQLite, a local file, always held."""
        return open_lease(self, self.engine, timeout)

    # ------------------------------------------------------------------ read side

    def list_cases(self, query: CaseQuery) -> list[CaseView]:
        with database_errors("list cases"), self.engine.connect() as conn:
            return queries.list_cases(conn, query)

    def case_detail(self, case_id: str) -> CaseDetail | None:
        with database_errors("read a case"), self.engine.connect() as conn:
            return queries.case_detail(conn, case_id)

    def timeline(self, case_id: str) -> list[TimelineEntry]:
        with database_errors("read a timeline"), self.engine.connect() as conn:
            return queries.timeline(conn, case_id)

    def activity(self, actor: str | None = None) -> list[AgentActivity]:
        with database_errors("read the activity"), self.engine.connect() as conn:
            return queries.activity(conn, actor)

    def counts(self) -> tuple[int, int]:
        """(cases, flagged events)."""
        with database_errors("count cases"), self.engine.connect() as conn:
            return queries.counts(conn)

    def leaf_hashes(self, tree_size: int, chunk: int = 10_000) -> list[bytes]:
        """The first `tree_size` leaves, in order (what Merkle proofs are built from)."""
        with database_errors("read the leaves"), self.engine.connect() as conn:
            return queries.leaf_hashes(conn, tree_size, chunk)

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
        with database_errors("read stored messages"), self.engine.connect() as conn:
            yield from queries.stored_messages(conn, case_id, up_to, after, limit, chunk)

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every view, in key order: two stores hold the same views exactly
        when their snapshots are equal (what the rebuild test compares)."""
        with database_errors("read the views"), self.engine.connect() as conn:
            return queries.snapshot(conn)
