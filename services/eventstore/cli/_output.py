"""How the event store's commands print: one console, `--json`, and a case's detail
(shared by `mesh case show` and `mesh audit replay`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
import orjson
import typer
from rich.console import Console
from rich.table import Table

from contracts.eventstore_api import CaseDetail
from mesh.service import shown

console = Console(soft_wrap=True)  # a violation is one line, whatever the terminal
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def echo_json(value: Any) -> None:
    typer.echo(orjson.dumps(msgspec.to_builtins(value), option=orjson.OPT_INDENT_2).decode())


def timestamp(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def escaped(*values: str) -> list[str]:
    """What the log holds, as text: never read as markup."""
    return [shown(value) for value in values]


def print_detail(detail: CaseDetail, title: str) -> None:
    case = detail.case
    console.print(
        f"[bold]{title}[/bold] {shown(case.case_id)}  ({shown(case.kind or 'kind unknown')})"
    )
    console.print(
        shown(
            f"status {case.status} · step {case.step or '-'} · outcome {case.outcome or '-'} · "
            f"{case.event_count} events ({case.flagged_events} flagged) · "
            f"opened {timestamp(case.opened_at)} · updated {timestamp(case.updated_at)}"
        ),
        highlight=False,
    )
    if detail.actions:
        table = Table("request", "action", "by", "status", "approver", "policy", "outcome")
        for action in detail.actions:
            table.add_row(
                *escaped(
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
