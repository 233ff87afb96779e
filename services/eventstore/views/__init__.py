"""The projected views in a relational database, through one code path for SQLite and
PostgreSQL (SQLAlchemy Core, no dialect branches in the queries):

    store.py     ViewStore, the port: one transaction per batch, one connection per read
    engine.py    the engine for a DSN; driver errors → StoreUnavailable, at one place
    schema.py    the one schema (tables, indexes)
    position.py  where the projection stands, moved with optimistic concurrency
    lease.py     who may write: the active's advisory lock (PostgreSQL); SQLite is one
    writer.py    a batch of log records folded into rows (the domain's pure functions)
    bulk.py      many rows through one compiled statement
    rows.py      views as rows and back
    queries.py   the read side
"""

from services.eventstore.views.engine import StoreUnavailable, open_engine
from services.eventstore.views.lease import LeaseLost, WriterLease
from services.eventstore.views.position import Position, ProjectionConflict
from services.eventstore.views.store import ViewStore

__all__ = [
    "LeaseLost",
    "Position",
    "ProjectionConflict",
    "StoreUnavailable",
    "ViewStore",
    "WriterLease",
    "open_engine",
]
