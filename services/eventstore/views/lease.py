"""Who may write the views: the event store runs active/standby, and the active is
whoever holds the writer lease of the view database.

PostgreSQL (`AdvisoryLease`): the lease is the session-level advisory lock
`pg_try_advisory_lock(WRITER_LOCK)`, held by one dedicated connection, and every batch
the active writes is committed *on that connection*. So:

- one writer at a time, decided by the database the views live in — no coordinator,
  no clock, nothing on the broker to keep in step with it;
- a dead active frees the lease the moment its session ends: a SIGKILLed process's
  socket is closed by the kernel, PostgreSQL ends the session, rolls back its open
  transaction and only then releases the lock — a standby that gets the lock reads
  a position no batch of the old active can move any more;
- a *silent* active (frozen with SIGSTOP, cut off by the network) is ended by the
  server: the lease session runs with `idle_session_timeout` and
  `idle_in_transaction_session_timeout` at `timeout`, and the active pings it well
  within that. Once the server has ended it, nothing the old active still tries can
  commit: its writes go through the session that is gone (the lease fences them);
- and the committed position's compare-and-swap (position.py) still guards every
  batch, lease or not: a batch that does not follow the stored position is refused
  whole. The lease keeps a standby from fetching, verifying and colliding for
  nothing, and gives the checkpoints one signer at a time; the CAS is what makes a
  write exactly-once whatever happens.

SQLite (`LocalLease`): the views are a local file, and the event store on it is one
instance — the lease is always held. (A second process on the same file would still be
refused batch by batch by the position's compare-and-swap, never doubled.)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from mesh.service import MeshError
from services.eventstore.domain import LogRecord
from services.eventstore.views.engine import StoreUnavailable, database_errors
from services.eventstore.views.position import Position

log = logging.getLogger(__name__)

# The advisory lock's key (64-bit, one per database): "mesh.eventstore.views" folded
# to a number. Advisory locks are per database, so stores on two databases never meet.
WRITER_LOCK = 0x6D65_7368_7669_6577  # b"meshview"
# A holder whose session has not changed state for this many lease timeouts is fenced
# off (its session terminated): an active frozen in the middle of sending a statement
# is in no idle state, so the server's idle timeouts never end its session (seen: a
# SIGSTOPped active kept the lease for good). A live active pings every timeout/4.
STALE_HOLDER_TIMEOUTS = 3
_FENCE_STALE_HOLDER = text(
    """
    SELECT pg_terminate_backend(a.pid)
    FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.classid = :high AND l.objid = :low
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND a.pid <> pg_backend_pid()
      AND a.state_change < now() - make_interval(secs => :stale)
    """
)


class LeaseLost(MeshError):
    """This instance no longer holds the writer lease: it must stop writing and stand
    by. Nothing of the batch it was writing was committed."""


class WriterLease(Protocol):
    @property
    def held(self) -> bool: ...

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True if this instance holds it now."""
        ...

    def keep(self) -> bool:
        """Show the database this holder is alive; False if the lease is gone."""
        ...

    def apply(self, records: Sequence[LogRecord], position: Position) -> Position:
        """Write a batch as the lease's holder (LeaseLost if it is not, any more)."""
        ...

    def release(self) -> None: ...


class Applier(Protocol):
    def apply_on(
        self, conn: Connection, records: Sequence[LogRecord], position: Position
    ) -> Position: ...

    def apply(self, records: Sequence[LogRecord], position: Position) -> Position: ...


class LocalLease:
    """SQLite: a local file, one event store on it. Always held."""

    def __init__(self, store: Applier) -> None:
        self.store = store

    @property
    def held(self) -> bool:
        return True

    def try_acquire(self) -> bool:
        return True

    def keep(self) -> bool:
        return True

    def apply(self, records: Sequence[LogRecord], position: Position) -> Position:
        return self.store.apply(records, position)

    def release(self) -> None:
        pass


class AdvisoryLease:
    """PostgreSQL: a session advisory lock on a connection of its own (never pooled:
    closing it must end the session, and with it the lock). Blocking: call it from a
    thread. One mutex serialises the pings and the writes on that connection."""

    def __init__(self, store: Applier, engine: Engine, timeout: float) -> None:
        self.store = store
        # The store's URL with its password, on a pool that keeps nothing: the session
        # is this connection's alone.
        self.engine = create_engine(
            engine.url,
            poolclass=NullPool,
            connect_args={
                "connect_timeout": max(1, round(timeout)),
                # A database host that vanished is noticed by the client, too.
                "keepalives": 1,
                "keepalives_idle": max(1, round(timeout / 2)),
                "keepalives_interval": 1,
                "keepalives_count": 3,
            },
        )
        self.timeout = timeout
        self._conn: Connection | None = None
        self._held = False
        self._mutex = threading.Lock()

    @property
    def held(self) -> bool:
        return self._held

    def try_acquire(self) -> bool:
        with self._mutex:
            if self._held:
                return True
            with database_errors("take the writer lease"):
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    got = self._try_lock(self._conn)
                    if not got and self._fence_stale_holder(self._conn):
                        got = self._try_lock(self._conn)
                except DBAPIError:
                    self._drop()
                    raise
            self._held = got
            return got

    @staticmethod
    def _try_lock(conn: Connection) -> bool:
        got = bool(conn.execute(select(func.pg_try_advisory_lock(WRITER_LOCK))).scalar())
        conn.commit()  # never left idle in a transaction
        return got

    def _fence_stale_holder(self, conn: Connection) -> bool:
        """End the session of a holder silent for STALE_HOLDER_TIMEOUTS lease timeouts;
        whether one was ended (its lock is then free, and its writes fail)."""
        ended = conn.execute(
            _FENCE_STALE_HOLDER,
            {
                "high": WRITER_LOCK >> 32,
                "low": WRITER_LOCK & 0xFFFF_FFFF,
                "stale": self.timeout * STALE_HOLDER_TIMEOUTS,
            },
        ).all()
        conn.commit()
        if any(row[0] for row in ended):
            log.warning(
                "ended the session of a writer silent for %.0fs: it no longer holds the lease",
                self.timeout * STALE_HOLDER_TIMEOUTS,
            )
            return True
        return False

    def keep(self) -> bool:
        with self._mutex:
            if not self._held or self._conn is None:
                return False
            try:
                self._conn.execute(text("SELECT 1"))
                self._conn.commit()
            except DBAPIError as exc:
                log.warning("the writer lease is gone: %s", exc.orig)
                self._drop()
                return False
            return True

    def apply(self, records: Sequence[LogRecord], position: Position) -> Position:
        with self._mutex:
            if not self._held or self._conn is None:
                raise LeaseLost("this event store does not hold the writer lease")
            try:
                return self.store.apply_on(self._conn, records, position)
            except StoreUnavailable as exc:
                # A failed statement leaves the session usable; a session the server
                # ended (or a connection that broke) does not: then the lease is lost.
                if self._conn.invalidated or not self._alive():
                    self._drop()
                    raise LeaseLost(f"the writer lease ended while writing: {exc}") from exc
                raise

    def release(self) -> None:
        with self._mutex:
            self._drop()

    def _connect(self) -> Connection:
        conn = self.engine.connect()
        millis = max(1000, int(self.timeout * 1000))
        try:
            # The server ends this session (and frees the lock) if its holder falls
            # silent: frozen, or cut off. PostgreSQL 14 and later.
            conn.execute(text(f"SET idle_session_timeout = {millis}"))
            conn.execute(text(f"SET idle_in_transaction_session_timeout = {millis}"))
            conn.commit()
        except DBAPIError as exc:
            conn.rollback()
            log.warning(
                "the database cannot end a silent writer's session (%s): a frozen active "
                "keeps the lease until its connection breaks",
                exc.orig,
            )
        return conn

    def _alive(self) -> bool:
        assert self._conn is not None
        try:
            self._conn.rollback()
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
        except DBAPIError:
            return False
        return True

    def _drop(self) -> None:
        """Close the lease's session (which frees the lock, if it held it)."""
        self._held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.invalidate()  # closes the DBAPI connection for good
                conn.close()
            except Exception as exc:  # a broken connection may fail to close: it is gone
                log.debug("closing the lease connection: %r", exc)


def open_lease(store: Applier, engine: Engine, timeout: float) -> WriterLease:
    if engine.dialect.name == "postgresql":
        return AdvisoryLease(store, engine, timeout)
    return LocalLease(store)
