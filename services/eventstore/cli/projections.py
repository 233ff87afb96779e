"""`mesh projections …`: where the event store's views stand, per-agent activity, and
rebuilding the views from the case stream."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from contracts.eventstore_api import ActivityQuery, StoreStatus
from mesh.service import (
    ConfigurationError,
    KeyDirectory,
    MeshSettings,
    RegistryClient,
    run,
    session,
    shown,
)
from services.eventstore.cli._output import Json, console, echo_json, timestamp
from services.eventstore.export import store_request
from services.eventstore.projector import Projector
from services.eventstore.settings import EventStoreSettings
from services.eventstore.views import ViewStore

projections_app = typer.Typer(help="The event store's views.", no_args_is_help=True)


@projections_app.command("status")
def status(as_json: Json = False) -> None:
    """Where the running event store stands."""

    async def ask() -> StoreStatus | None:
        async with session() as mesh:
            return (await store_request(mesh.nc, mesh.topology, "status")).status

    result = run(ask())
    assert result is not None
    if as_json:
        echo_json(result)
        return
    console.print(
        f"applied up to sequence {result.last_sequence}; {result.cases} cases, "
        f"{result.flagged_events} flagged events; Merkle root {result.root_hash[:16]}… "
        f"(size {result.tree_size}); last signed checkpoint at size {result.last_checkpoint_size}",
        highlight=False,
    )


@projections_app.command("activity")
def activity(
    actor: Annotated[str | None, typer.Option(help="one agent")] = None, as_json: Json = False
) -> None:
    """What each agent has done: events by type, flagged ones, first and last seen."""

    async def ask() -> Any:
        async with session() as mesh:
            request = ActivityQuery(actor=actor)
            return (await store_request(mesh.nc, mesh.topology, "activity", request)).activity

    rows = run(ask())
    if as_json:
        echo_json(rows)
        return
    table = Table("actor", "event", "count", "flagged", "first", "last")
    for row in rows:
        table.add_row(
            row.actor,
            row.event_type,
            str(row.events),
            str(row.flagged),
            timestamp(row.first_at),
            timestamp(row.last_at),
        )
    console.print(table)


@projections_app.command("rebuild")
def rebuild(
    dsn: Annotated[
        str | None, typer.Option(help="the database to rebuild (default: the event store's)")
    ] = None,
) -> None:
    """Recreate the views from the case stream. Stop the event store that writes to
    the same database first (or rebuild into another with --dsn)."""
    target = dsn or EventStoreSettings().database_url(MeshSettings().data_dir)

    async def rebuild_views() -> tuple[int, float]:
        async with session() as mesh:
            keys = KeyDirectory()
            keys.load(await RegistryClient(mesh.nc, mesh.topology.subjects).keys())
            info = await mesh.js.stream_info(mesh.topology.cases_stream)
            store = ViewStore.open(target)
            try:
                store.reset()
                started = time.perf_counter()
                projector = Projector(mesh.js, mesh.topology, store, keys, batch=1000)
                position = await projector.run(stop_at=info.state.last_seq)
                return position.last_sequence, time.perf_counter() - started
            finally:
                store.close()

    try:
        applied, elapsed = run(rebuild_views())
    except ConfigurationError as exc:
        console.print(f"[red]error:[/red] {shown(str(exc))}")
        raise typer.Exit(2) from None
    rate = applied / elapsed if elapsed > 0 else 0.0
    console.print(f"rebuilt {applied} events in {elapsed:.1f}s ({rate:,.0f}/s) into {target}")
