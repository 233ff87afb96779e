"""The database under the views: one engine for SQLite or PostgreSQL, and the one place
where the driver's failures become the store's (`StoreUnavailable`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from mesh.service import ConfigurationError, MeshError


class StoreUnavailable(MeshError):
    """The database could not be reached or failed; nothing of the batch was written."""

    retryable = True


@contextmanager
def database_errors(doing: str) -> Iterator[None]:
    """Map the driver's errors raised in the block (sqlite3, psycopg, through
    SQLAlchemy) to `StoreUnavailable`: what the store's callers handle is a mesh error."""
    try:
        yield
    except DBAPIError as exc:
        raise StoreUnavailable(f"the view database failed to {doing}: {exc.orig}") from exc


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
