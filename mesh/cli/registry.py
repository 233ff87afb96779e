"""`mesh registry …`: who is in the mesh, and the kill switch."""

from __future__ import annotations

from typing import Annotated

import msgspec
import orjson
import typer
from rich.console import Console
from rich.table import Table

from contracts.cards import AgentRecord
from contracts.registry_api import RegistryQuery
from mesh.cli._common import operator_identity, run, session
from mesh.registry_client import RegistryClient

registry_app = typer.Typer(help="Agents' identities, scopes and lifecycle.", no_args_is_help=True)
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]
Reason = Annotated[str, typer.Option("--reason", help="why: it is recorded in the history")]


def _print_records(records: list[AgentRecord], as_json: bool) -> None:
    if as_json:
        typer.echo(orjson.dumps(msgspec.to_builtins(records), option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("agent", "status", "owner", "version", "produces", "actions", "alive")
    for record in records:
        card = record.card
        table.add_row(
            card.agent_id,
            record.status,
            card.owner,
            card.version,
            ", ".join(card.produces),
            ", ".join(a.action_type for a in card.actions),
            "stale" if record.stale else "yes",
        )
    Console().print(table)


@registry_app.command("list")
def list_agents(
    status: Annotated[str | None, typer.Option(help="registered, active, …")] = None,
    event_type: Annotated[str | None, typer.Option(help="consumes or produces it")] = None,
    action_type: Annotated[str | None, typer.Option(help="may request it")] = None,
    as_json: Json = False,
) -> None:
    """List agents, optionally by status, event type or capability."""
    query = msgspec.convert(
        {"status": status, "event_type": event_type, "action_type": action_type}, RegistryQuery
    )

    async def find() -> list[AgentRecord]:
        async with session() as mesh:
            return await RegistryClient(mesh.nc, mesh.topology.subjects).find(query)

    _print_records(run(find()), as_json)


@registry_app.command("show")
def show(agent_id: str, as_json: Json = False) -> None:
    """One agent's card, status, key history and liveness."""

    async def get() -> AgentRecord:
        async with session() as mesh:
            return await RegistryClient(mesh.nc, mesh.topology.subjects).get(agent_id)

    record = run(get())
    if as_json:
        _print_records([record], True)
        return
    card = record.card
    typer.echo(f"{card.agent_id}  {card.name} v{card.version}  [{record.status}]")
    typer.echo(f"  owner:    {card.owner}")
    typer.echo(f"  purpose:  {card.purpose}")
    typer.echo(f"  consumes: {', '.join(card.consumes) or '-'}")
    typer.echo(f"  produces: {', '.join(card.produces) or '-'}")
    for grant in card.actions:
        typer.echo(f"  may request {grant.action_type} {grant.limits or ''}")
    if record.status_reason:
        typer.echo(f"  status since {record.status_changed_at.isoformat()}: {record.status_reason}")
    for key in record.key_history:
        until = key.valid_until.isoformat() if key.valid_until else "now"
        typer.echo(f"  key {key.public_key}  {key.valid_from.isoformat()} .. {until}")
    seen = record.last_heartbeat.isoformat() if record.last_heartbeat else "never"
    typer.echo(f"  last heartbeat: {seen}{'  (stale)' if record.stale else ''}")


def _status_command(operation: str, agent_id: str, reason: str) -> None:
    async def change() -> AgentRecord:
        async with session() as mesh:
            operator = operator_identity(mesh.settings)
            client = RegistryClient(mesh.nc, mesh.topology.subjects)
            return await client.change_status(operation, agent_id, reason, operator)

    record = run(change())
    typer.echo(f"{record.card.agent_id}: {record.status} ({record.status_reason})")


@registry_app.command("suspend")
def suspend(agent_id: str, reason: Reason) -> None:
    """Suspend an agent: its credentials go at once; activate brings them back."""
    _status_command("suspend", agent_id, reason)


@registry_app.command("revoke")
def revoke(agent_id: str, reason: Reason) -> None:
    """Revoke an agent for good: credentials gone, later signatures refused."""
    _status_command("revoke", agent_id, reason)


@registry_app.command("activate")
def activate(agent_id: str, reason: Reason) -> None:
    """Activate a registered agent, or reinstate a suspended one."""
    _status_command("activate", agent_id, reason)
