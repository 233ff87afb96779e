"""`mesh audit …`: a case's timeline, its replay at a time, verification of the log (or
of an exported bundle, offline) and export."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from contracts.eventstore_api import CaseDetail, CaseRequest, TimelineEntry
from mesh.service import KeyDirectory, MeshError, RegistryClient, run, session, shown
from services.eventstore.audit import Report, verify_bundle
from services.eventstore.cli._output import Json, console, echo_json, print_detail, timestamp
from services.eventstore.export import build_bundle, read_bundle, store_request, write_bundle
from services.eventstore.replay import replay_case

audit_app = typer.Typer(
    help="The audit record: timelines, replay, verification, export.", no_args_is_help=True
)


def _print_timeline(entries: list[TimelineEntry]) -> None:
    for entry in entries:
        mark = (
            "[green]✓[/green]" if entry.verified and entry.duplicate_of is None else "[red]✗[/red]"
        )
        console.print(
            f"{mark} #{entry.sequence} {timestamp(entry.stored_at)} "
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
        echo_json(timeline)
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
        echo_json(detail)
        return
    print_detail(detail, f"case as of {at or 'now'}:")


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
                    "notes": report.notes,
                },
                option=orjson.OPT_INDENT_2,
            ).decode()
        )
        return
    for violation in report.violations:
        # Subjects, ids and reasons come from the log: whatever they hold is shown as
        # text, never read as markup (a "[/b]" in a subject must not break the report).
        console.print(f"[red]✗[/red] {shown(str(violation))}", highlight=False)
    for remark in report.notes:
        console.print(f"[yellow]note:[/yellow] {shown(remark)}", highlight=False)
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
    compressed_clock: Annotated[
        bool,
        typer.Option(
            "--allow-compressed-clock",
            help="a demo's or a test's log: timers on a compressed clock are noted, not violations",
        ),
    ] = False,
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
    report = verify_bundle(loaded, store_key, compressed_clock_allowed=compressed_clock)
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
