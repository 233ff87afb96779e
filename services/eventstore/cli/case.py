"""`mesh case …`: cases and where each stands, from the running event store."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from contracts.eventstore_api import CaseDetail, CaseQuery, CaseRequest
from mesh.service import run, session
from services.eventstore.cli._output import Json, console, echo_json, escaped, print_detail
from services.eventstore.export import store_request

case_app = typer.Typer(help="Cases: their current state.", no_args_is_help=True)


@case_app.command("list")
def list_cases(
    status: Annotated[str | None, typer.Option(help="open, waiting, escalated, closed")] = None,
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
        echo_json(cases)
        return
    table = Table(
        "case", "kind", "status", "step", "outcome", "open actions", "approvals", "flagged"
    )
    for case in cases:
        table.add_row(
            *escaped(
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
        echo_json(detail)
        return
    print_detail(detail, "case")
