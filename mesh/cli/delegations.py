"""`mesh delegations …`: a person hands an agent part of their authority to decide
approvals, scoped and time-bound (`contracts.delegation`), and takes it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import msgspec
import orjson
import typer
from rich.console import Console
from rich.table import Table

from contracts.delegation import Delegation, DelegationRecord
from contracts.ids import new_event_id
from mesh._runtime.command_line import operator_identity, run, session
from mesh._support.text import shown
from mesh._trust.identity import Identity
from mesh._trust.registry_client import RegistryClient

delegations_app = typer.Typer(
    help="Delegations of approval authority: give, list, revoke.", no_args_is_help=True
)
Many = Annotated[list[str], typer.Option(help="repeat for several")]
Seed = Annotated[
    Path | None,
    typer.Option("--seed-file", help="the signer's nkey seed (default: the operator's)"),
]


@delegations_app.command("give")
def give(
    delegator: Annotated[str, typer.Argument(help="the person handing over authority")],
    delegate: Annotated[str, typer.Argument(help="the agent receiving it")],
    seed_file: Annotated[Path, typer.Option("--seed-file", help="the delegator's nkey seed")],
    role: Annotated[str, typer.Option(help="the approver role it decides for")],
    action_type: Many,
    max_amount: Annotated[int, typer.Option(help="the most an approval lets through, cents")],
    case_kind: Many,
    hours: Annotated[float, typer.Option(help="valid from now for this long")] = 8.0,
    may_delegate: Annotated[bool, typer.Option(help="may the delegate pass it on")] = False,
    parent: Annotated[str | None, typer.Option(help="the delegation passed on")] = None,
    purpose: Annotated[str, typer.Option(help="why: it is recorded")] = "",
) -> None:
    """Sign a delegation with the delegator's key; the registry records it only if it
    gives no more than the delegator holds."""
    now = datetime.now(UTC)
    delegation = Delegation(
        delegation_id=f"dlg-{new_event_id()}",
        delegator=delegator,
        delegate=delegate,
        role=role,
        action_types=action_type,
        max_amount=max_amount,
        case_kinds=case_kind,
        valid_from=now,
        valid_until=now + timedelta(hours=hours),
        may_delegate=may_delegate,
        parent=parent,
        purpose=purpose,
    )

    async def record() -> None:
        async with session() as mesh:
            client = RegistryClient(mesh.nc, mesh.topology.subjects)
            await client.delegate(delegation, Identity.load(seed_file))

    run(record())
    typer.echo(
        f"{delegation.delegation_id}: {delegate} decides {role} approvals of "
        f"{', '.join(action_type)} up to {max_amount} for {delegator} until "
        f"{delegation.valid_until.isoformat(timespec='seconds')}"
    )


@delegations_app.command("revoke")
def revoke(
    delegation_id: str,
    reason: Annotated[str, typer.Option("--reason", help="why: it is recorded")],
    seed_file: Seed = None,
) -> None:
    """Revoke a delegation at once (and everything passed on from it): signed by its
    delegator, someone up its chain, or an operator."""

    async def withdraw() -> None:
        async with session() as mesh:
            signer = Identity.load(seed_file) if seed_file else operator_identity(mesh.settings)
            client = RegistryClient(mesh.nc, mesh.topology.subjects)
            await client.revoke_delegation(delegation_id, reason, signer)

    run(withdraw())
    typer.echo(f"{delegation_id}: revoked")


@delegations_app.command("list")
def list_delegations(
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Every delegation the registry's history holds, revoked ones included."""

    async def read() -> list[DelegationRecord]:
        async with session() as mesh:
            keys = await RegistryClient(mesh.nc, mesh.topology.subjects).keys()
            return [d for principal in keys for d in principal.delegations]

    records = run(read())
    if as_json:
        typer.echo(orjson.dumps(msgspec.to_builtins(records), option=orjson.OPT_INDENT_2).decode())
        return
    table = Table("delegation", "from", "to", "role", "actions", "max", "kinds", "until", "state")
    for held in records:
        d = held.delegation
        state = f"revoked by {held.revoked_by}" if held.revoked_at else "granted"
        table.add_row(
            *(
                shown(text)
                for text in (
                    d.delegation_id + (f" (of {d.parent})" if d.parent else ""),
                    d.delegator,
                    d.delegate,
                    d.role,
                    ", ".join(d.action_types),
                    str(d.max_amount),
                    ", ".join(d.case_kinds),
                    d.valid_until.isoformat(timespec="seconds"),
                    state,
                )
            )
        )
    Console().print(table)
