"""Many rows through one statement: compiled once per statement for the database in
use (SQLAlchemy's compiler picks the dialect's SQL and parameter style), then handed to
the driver's executemany as plain tuples or dicts. Per-row parameter processing in
SQLAlchemy cost more than the database itself; the types here (text, integers,
booleans, bytes) need no conversion on either driver."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Table, and_, bindparam
from sqlalchemy.engine import Connection

Row = dict[str, Any]


class BulkWriter:
    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str, tuple[str, ...]], Any] = {}

    def insert(self, conn: Connection, table: Table, rows: list[Row]) -> None:
        if rows:
            self._run(conn, self._compile(conn, "insert", table, ()), rows)

    def update(self, conn: Connection, table: Table, keys: Sequence[str], rows: list[Row]) -> None:
        """UPDATE … WHERE key = :key_<key> for whole rows (the key's bind name differs
        from the column's, which the SET clause already uses)."""
        if rows:
            compiled = self._compile(conn, "update", table, tuple(keys))
            params = [{**row, **{f"key_{c}": row[c] for c in keys}} for row in rows]
            self._run(conn, compiled, params)

    def upsert(
        self,
        conn: Connection,
        table: Table,
        keys: Sequence[str],
        rows: list[Row],
        exists: Callable[[Row], bool],
    ) -> None:
        """Insert the rows that do not exist yet, update the ones that do (the caller
        knows which: it loaded them in this transaction)."""
        self.insert(conn, table, [row for row in rows if not exists(row)])
        self.update(conn, table, keys, [row for row in rows if exists(row)])

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

    def _run(self, conn: Connection, compiled: Any, rows: list[Row]) -> None:
        if compiled.positional:
            ordered = operator.itemgetter(*compiled.positiontup)
            conn.exec_driver_sql(compiled.string, [ordered(row) for row in rows])
        else:
            conn.exec_driver_sql(compiled.string, rows)
