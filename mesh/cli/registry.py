"""`mesh registry …`: who is in the mesh, and the kill switch."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated

import msgspec
import orjson
import typer
from rich.console import Console
from rich.table import Table

from contracts.cards import ActionGrant, AgentCard, AgentRecord, card_digest
from contracts.registry_api import RegistryQuery
from mesh._runtime.command_line import fail, operator_identity, run, session
from mesh._sdk.app import load_agent
from mesh._support.text import shown
from mesh._trust.enrolment import grant_for, sign_grant, write_grant
from mesh._trust.registry_client import RegistryClient
from mesh.errors import ConfigurationError
from mesh.settings import MeshSettings

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
            *(
                shown(text)  # what an agent wrote on its card must not be read as markup
                for text in (
                    card.agent_id,
                    record.status + (" (card pending)" if record.pending_card else ""),
                    card.owner,
                    card.version,
                    ", ".join(card.produces),
                    ", ".join(a.action_type for a in card.actions),
                    "stale" if record.stale else "yes",
                )
            )
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
    typer.echo(f"  kind:     {card.kind} {', '.join(card.roles)}".rstrip())
    typer.echo(f"  consumes: {', '.join(card.consumes) or '-'}")
    typer.echo(f"  produces: {', '.join(card.produces) or '-'}")
    typer.echo(f"  reads:    {', '.join(card.reads) or '-'}")
    typer.echo(f"  facts:    {', '.join(card.facts) or '-'}")
    for grant in card.actions:
        typer.echo(f"  may request {grant.action_type} {grant.limits or ''}")
    for period in record.card_history:
        until = period.valid_until.isoformat() if period.valid_until else "now"
        signer = f"signed by {period.approval.signer}" if period.approval else "no widening"
        typer.echo(
            f"  card v{period.card.version} in force {period.valid_from.isoformat()} .. "
            f"{until} ({signer})"
        )
    if record.pending_card is not None:
        pending = record.pending_card
        typer.echo(
            f"  PENDING card v{pending.version} (digest {card_digest(pending)}): waits for "
            f"`mesh registry approve {card.agent_id} --digest {card_digest(pending)}`"
        )
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
    """Reinstate a suspended agent."""
    _status_command("activate", agent_id, reason)


@registry_app.command("approve")
def approve(
    agent_id: str,
    reason: Reason,
    digest: Annotated[
        str, typer.Option("--digest", help="the pending card's digest, as `show` prints it")
    ],
) -> None:
    """Put an agent's proposed (wider) card in force: exactly the card with this digest."""

    async def change() -> AgentRecord:
        async with session() as mesh:
            operator = operator_identity(mesh.settings)
            client = RegistryClient(mesh.nc, mesh.topology.subjects)
            return await client.approve(agent_id, digest, reason, operator)

    record = run(change())
    typer.echo(f"{record.card.agent_id}: card v{record.card.version} in force")


Many = Annotated[list[str] | None, typer.Option(help="repeat for several")]


@registry_app.command("grant")
def grant(
    agent_id: str,
    out: Annotated[Path, typer.Option("--out", help="where to write the signed grant")],
    from_card: Annotated[
        str | None,
        typer.Option("--from-card", help="grant exactly the card of an agent module[:attr]"),
    ] = None,
    owner: Annotated[str | None, typer.Option(help="the accountable owner")] = None,
    kind: Annotated[str, typer.Option(help="agent, human or service")] = "agent",
    role: Many = None,
    consumes: Many = None,
    produces: Many = None,
    reads: Many = None,
    fact: Many = None,
    action: Annotated[
        list[str] | None,
        typer.Option(help="TYPE or TYPE:max_amount=5000000 (limits as name=number)"),
    ] = None,
    valid_hours: Annotated[float, typer.Option(help="expires after this many hours")] = 24.0,
) -> None:
    """Issue a one-time enrolment grant for AGENT_ID, signed with your operator key."""
    settings = MeshSettings()
    try:
        card = _granted_card(
            agent_id,
            from_card,
            {
                "owner": owner,
                "kind": kind,
                "roles": role or [],
                "consumes": consumes or [],
                "produces": produces or [],
                "reads": reads or [],
                "facts": fact or [],
                "actions": [_action(text) for text in action or []],
            },
        )
        operator = operator_identity(settings)
    except (ConfigurationError, msgspec.ValidationError) as exc:
        raise fail(exc) from None
    statement = sign_grant(
        grant_for(card, issued_by=settings.operator_name, valid_for=timedelta(hours=valid_hours)),
        operator,
    )
    write_grant(statement, out)
    typer.echo(f"grant for {agent_id} written to {out} (valid {valid_hours:g} h, usable once)")


def _granted_card(agent_id: str, from_card: str | None, scope: dict[str, object]) -> AgentCard:
    """The card a grant covers: an agent module's own, or one built from the options."""
    if from_card is not None:
        card = load_agent(from_card).card
        if card.agent_id != agent_id:
            raise ConfigurationError(f"{from_card} is agent {card.agent_id}, not {agent_id}")
        return card
    if scope["owner"] is None:
        raise ConfigurationError("name the owner (--owner) or grant a card (--from-card)")
    fields = {"agent_id": agent_id, "name": agent_id, "version": "granted", "purpose": "granted"}
    return msgspec.convert({**fields, **scope}, AgentCard)


def _action(text: str) -> ActionGrant:
    action_type, _, limits = text.partition(":")
    parsed: dict[str, object] = {}
    for item in filter(None, limits.split(",")):
        name, _, value = item.partition("=")
        try:
            parsed[name] = int(value)
        except ValueError:
            parsed[name] = value
    return ActionGrant(action_type=action_type, limits=parsed)
