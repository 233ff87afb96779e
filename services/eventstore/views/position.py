"""Where the projection stands — the last stream sequence applied and the Merkle
frontier after it — kept in one row beside the views and moved in the same
transaction as they are. It moves only if it still is where the writer read it
(optimistic concurrency), so two projectors on one database cannot interleave."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from sqlalchemy import select
from sqlalchemy.engine import Connection

from mesh.service import MeshError
from services.eventstore.merkle import MerkleFrontier
from services.eventstore.views.rows import json_text
from services.eventstore.views.schema import projection

PROJECTION = "cases"


class ProjectionConflict(MeshError):
    """The stored position is not where this projector expected it: another writer
    moved it, or the batch does not follow on. Nothing of the batch was written."""

    retryable = True


@dataclass(frozen=True)
class Position:
    last_sequence: int
    frontier: MerkleFrontier

    @property
    def tree_size(self) -> int:
        return self.frontier.size


def _frontier_text(frontier: MerkleFrontier) -> str:
    return json_text({"size": frontier.size, "nodes": [n.hex() for n in frontier.nodes]})


def _frontier(text: str) -> MerkleFrontier:
    data = orjson.loads(text)
    return MerkleFrontier(data["size"], [bytes.fromhex(n) for n in data["nodes"]])


def initialise(conn: Connection) -> None:
    """The position of empty views, unless there is one already."""
    if conn.execute(select(projection.c.name)).first() is None:
        conn.execute(
            projection.insert().values(
                name=PROJECTION, last_sequence=0, frontier=_frontier_text(MerkleFrontier())
            )
        )


def read(conn: Connection) -> Position:
    row = conn.execute(
        select(projection.c.last_sequence, projection.c.frontier).where(
            projection.c.name == PROJECTION
        )
    ).one()
    return Position(row.last_sequence, _frontier(row.frontier))


def move(conn: Connection, before: Position, after: Position) -> None:
    """From `before` to `after`, or ProjectionConflict if the stored one is not `before`
    (the caller's transaction then rolls back the whole batch)."""
    moved = conn.execute(
        projection.update()
        .where(
            projection.c.name == PROJECTION,
            projection.c.last_sequence == before.last_sequence,
        )
        .values(last_sequence=after.last_sequence, frontier=_frontier_text(after.frontier))
    )
    if moved.rowcount != 1:
        raise ProjectionConflict(
            f"the projection is no longer at sequence {before.last_sequence}: "
            "another projector writes to this database"
        )
