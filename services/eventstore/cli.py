"""`mesh case …`, `mesh audit …` and `mesh projections …` (plug-ins of the mesh CLI).

Queries go to the running event store over request/reply. Replay and verification
read the log itself; `audit verify --bundle` needs nothing but the file.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
import typer
from rich.console import Console
from rich.table import Table

from contracts.eventstore_api import (
    ActivityQuery,
    CaseDetail,
    CaseQuery,
    CaseRequest,
    StoreStatus,
    TimelineEntry,
)
from mesh.service import (
    ConfigurationError,
    KeyDirectory,
    MeshError,
    MeshSettings,
    RegistryClient,
    run,
    session,
    shown,
)
from services.eventstore.audit import Report, verify_bundle
from services.eventstore.export import build_bundle, read_bundle, store_request, write_bundle
from services.eventstore.projector import Projector
from services.eventstore.replay import replay_case
from services.eventstore.settings import EventStoreSettings
from services.eventstore.views import ViewStore

case_app = typer.Typer(help="Cases: their current state.", no_args_is_help=True)
audit_app = typer.Typer(
    help="The audit record: timelines, replay, verification, export.", no_args_is_help=True
)
projections_app = typer.Typer(help="The event store's views.", no_args_is_help=True)
console = Console(soft_wrap=True)  # a violation is one line, whatever the terminal
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _echo_json(value: Any) -> None:
    typer.echo(orjson.dumps(msgspec.to_builtins(value), option=orjson.OPT_INDENT_2).decode())


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def _escaped(*values: str) -> list[str]:
    """What the log holds, as text: never read as markup."""
    return [shown(value) for value in values]


def _print_detail(detail: CaseDetail, title: str) -> None:
    case = detail.case
    console.print(
        f"[bold]{title}[/bold] {shown(case.case_id)}  ({shown(case.kind or 'kind unknown')})"
    )
    console.print(
        shown(
            f"status {case.status} · step {case.step or '-'} · outcome {case.outcome or '-'} · "
            f"{case.event_count} events ({case.flagged_events} flagged) · "
            f"opened {_time(case.opened_at)} · updated {_time(case.updated_at)}"
        ),
        highlight=False,
    )
    if detail.actions:
        table = Table("request", "action", "by", "status", "approver", "policy", "outcome")
        for action in detail.actions:
            table.add_row(
                *_escaped(
                    action.request_id,
                    action.action_type,
                    action.requested_by,
                    action.status,
                    action.approver or "",
                    (action.policy_bundle_hash or "")[:12],
                    action.outcome or "",
                )
            )
        console.print(table)


# --------------------------------------------------------------------------- mesh case


@case_app.command("list")
def list_cases(
    status: Annotated[str | None, typer.Option(help="open, escalated, closed")] = None,
    kind: Annotated[str | None, typer.Option(help="the case kind")] = None,
    limit: Annotated[int, typer.Option(help="at most this many")] = 100,
    after: Annotated[str | None, typer.Option(help="page on after this case id")] = None,
    as_json: Json = False,
) -> None:
    """Cases and where each stands."""
    query = msgspec.convert(
        {"status": status, "kind": kind, "limit": limit, "after": after}, CaseQuery
    )

    async def ask() -> Any:
        async with session() as mesh:
            return (await store_request(mesh.nc, mesh.topology, "cases", query)).cases

    cases = run(ask())
    if as_json:
        _echo_json(cases)
        return
    table = Table(
        "case", "kind", "status", "step", "outcome", "open actions", "approvals", "flagged"
    )
    for case in cases:
        table.add_row(
            *_escaped(
                case.case_id,
                case.kind or "",
                case.status,
                case.step or "",
                case.outcome or "",
                str(case.open_actions),
                str(case.pending_approvals),
                str(case.flagged_events),
            )
        )
    console.print(table)


@case_app.command("show")
def show_case(case_id: str, as_json: Json = False) -> None:
    """One case: its state and its actions."""

    async def ask() -> CaseDetail | None:
        async with session() as mesh:
            reply = await store_request(
                mesh.nc, mesh.topology, "case", CaseRequest(case_id=case_id)
            )
            return reply.detail

    detail = run(ask())
    assert detail is not None
    if as_json:
        _echo_json(detail)
        return
    _print_detail(detail, "case")


# --------------------------------------------------------------------------- mesh audit


def _print_timeline(entries: list[TimelineEntry]) -> None:
    for entry in entries:
        mark = (
            "[green]✓[/green]" if entry.verified and entry.duplicate_of is None else "[red]✗[/red]"
        )
        console.print(
            f"{mark} #{entry.sequence} {_time(entry.stored_at)} "
            f"[bold]{shown(entry.actor or '?')}[/bold] {shown(entry.summary)}",
            highlight=False,
        )
        details = []
        if entry.rationale:
            details.append(f"why: {entry.rationale}")
        if entry.evidence:
            details.append(
                f"evidence: {orjson.dumps(entry.evidence, option=orjson.OPT_SORT_KEYS).decode()}"
            )
        if entry.policy_bundle_hash:
            rules = ", ".join(entry.determining_policies) or "default"
            details.append(f"policy {entry.policy_bundle_hash[:12]} ({rules})")
        if entry.approver:
            details.append(f"approver: {entry.approver}")
        details = [shown(line) for line in details]
        if entry.problem:
            details.append(f"[red]flagged: {shown(entry.problem)}[/red]")
        if entry.duplicate_of is not None:
            details.append(f"[red]a second copy of #{entry.duplicate_of}[/red]")
        for line in details:
            console.print(f"      {line}", highlight=False)


@audit_app.command("show")
def show_timeline(case_id: str, as_json: Json = False) -> None:
    """A case's audit timeline: who did what, with which evidence, rationale, policy
    decision and approver."""

    async def ask() -> list[TimelineEntry]:
        async with session() as mesh:
            request = CaseRequest(case_id=case_id)
            return (await store_request(mesh.nc, mesh.topology, "timeline", request)).timeline

    timeline = run(ask())
    if as_json:
        _echo_json(timeline)
        return
    console.print(f"[bold]timeline of case {shown(case_id)}[/bold]")
    _print_timeline(timeline)


def _parse_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO-8601 time") from None
    if parsed.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no time zone: add Z or +00:00")
    return parsed


@audit_app.command("replay")
def replay(
    case_id: str,
    at: Annotated[str | None, typer.Option("--at", help="ISO-8601 time with zone")] = None,
    as_json: Json = False,
) -> None:
    """The case as it stood at a time, rebuilt from the log alone (no agent runs)."""
    moment = _parse_time(at) if at else None

    async def fold() -> CaseDetail | None:
        async with session() as mesh:
            keys = KeyDirectory()
            keys.load(await RegistryClient(mesh.nc, mesh.topology.subjects).keys())
            return await replay_case(mesh.js, mesh.topology, keys, case_id, moment)

    detail = run(fold())
    if detail is None:
        console.print(f"case {case_id} had no event in the log by {at or 'now'}")
        raise typer.Exit(1)
    if as_json:
        _echo_json(detail)
        return
    _print_detail(detail, f"case as of {at or 'now'}:")


def _print_report(report: Report, as_json: bool) -> None:
    if as_json:
        typer.echo(
            orjson.dumps(
                {
                    "ok": report.ok,
                    "scope": report.scope,
                    "events": report.events,
                    "cases": report.cases,
                    "checkpoints": report.checkpoints,
                    "tree_size": report.tree_size,
                    "violations": [
                        {"check": v.check, "where": v.where, "problem": v.problem}
                        for v in report.violations
                    ],
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    for violation in report.violations:
        # Subjects, ids and reasons come from the log: whatever they hold is shown as
        # text, never read as markup (a "[/b]" in a subject must not break the report).
        console.print(f"[red]✗[/red] {shown(str(violation))}", highlight=False)
    verdict = "[green]verified[/green]" if report.ok else "[red]FAILED[/red]"
    console.print(
        f"{verdict}: {report.events} events in {report.cases} cases, "
        f"{report.checkpoints} signed checkpoints, log size {report.tree_size}, "
        f"{len(report.violations)} violations",
        highlight=False,
    )


@audit_app.command("verify")
def verify(
    case_id: Annotated[str | None, typer.Option("--case", help="one case")] = None,
    everything: Annotated[bool, typer.Option("--all", help="the whole log")] = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="an exported bundle")] = None,
    store_key: Annotated[
        str | None, typer.Option(help="pin the event store's public key (U…)")
    ] = None,
    as_json: Json = False,
) -> None:
    """Check signatures against the keys valid at the time, the hash chains and signed
    Merkle checkpoints, and the policy invariants. Exits 1 naming each violation."""
    if sum((case_id is not None, everything, bundle is not None)) != 1:
        raise typer.BadParameter("give exactly one of --case ID, --all or --bundle FILE")
    if bundle is not None:
        try:
            loaded = read_bundle(bundle)
        except MeshError as exc:
            console.print(f"[red]error:[/red] {shown(str(exc))}")
            raise typer.Exit(2) from None
    else:

        async def export() -> Any:
            async with session() as mesh:
                return await build_bundle(mesh.nc, mesh.topology, case_id)

        loaded = run(export())
    report = verify_bundle(loaded, store_key)
    _print_report(report, as_json)
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="where to write the bundle")],
    case_id: Annotated[str | None, typer.Argument(help="the case; or --all")] = None,
    everything: Annotated[bool, typer.Option("--all", help="the whole log")] = False,
) -> None:
    """Write a self-contained audit bundle that `mesh audit verify --bundle` checks
    offline."""
    if (case_id is None) == (not everything):
        raise typer.BadParameter("give a case id or --all (not both)")

    async def build() -> Any:
        async with session() as mesh:
            return await build_bundle(mesh.nc, mesh.topology, case_id)

    bundle = run(build())
    write_bundle(bundle, out)
    console.print(
        f"wrote {out}: {len(bundle.events)} events, {len(bundle.checkpoints)} checkpoints, "
        f"log size {bundle.proofs.tree_size}",
        highlight=False,
    )


# --------------------------------------------------------------------------- projections


@projections_app.command("status")
def status(as_json: Json = False) -> None:
    """Where the running event store stands."""

    async def ask() -> StoreStatus | None:
        async with session() as mesh:
            return (await store_request(mesh.nc, mesh.topology, "status")).status

    result = run(ask())
    assert result is not None
    if as_json:
        _echo_json(result)
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
        _echo_json(rows)
        return
    table = Table("actor", "event", "count", "flagged", "first", "last")
    for row in rows:
        table.add_row(
            row.actor,
            row.event_type,
            str(row.events),
            str(row.flagged),
            _time(row.first_at),
            _time(row.last_at),
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
