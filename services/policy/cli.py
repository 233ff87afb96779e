"""`mesh policy …` (a plug-in of the mesh CLI, registered as an entry point)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
import orjson
import typer
from nats.aio.client import Client
from rich.console import Console
from rich.table import Table

from contracts.envelope import Event
from contracts.events.actions import (
    ApprovalGranted,
    ApprovalGrantedPayload,
    ApprovalRejected,
    ApprovalRejectedPayload,
)
from mesh.service import (
    ConfigurationError,
    EventPublisher,
    Identity,
    MeshSettings,
    Topology,
    close,
    connect,
    connect_as,
    request_with_patience,
    run,
    running_mesh_settings,
    shown,
    topology_for,
)
from services.policy.approvals import PendingApproval
from services.policy.bundle import PolicyBundle, PolicyBundleInvalid
from services.policy.tables import run_tables

policy_app = typer.Typer(help="Cedar policy bundles: check and test them.", no_args_is_help=True)
console = Console()


@policy_app.command("test")
def test(
    bundle_dir: Annotated[Path, typer.Argument(help="bundle: *.cedar, schema, tests/*.json")],
) -> None:
    """Run the bundle's decision tables; exit 1 naming every row that fails."""
    try:
        results = run_tables(bundle_dir)
    except PolicyBundleInvalid as exc:
        console.print(f"[red]invalid bundle[/red] {exc.source}:")
        for error in exc.errors:
            console.print(f"  {error}")
        raise typer.Exit(2) from None
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    failed = [r for r in results if not r.passed]
    for result in results:
        mark = "[green]PASS[/green]" if result.passed else "[red]FAIL[/red]"
        console.print(f"{mark} {result.file}: {result.row.name} — {result.detail}", highlight=False)
    console.print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        raise typer.Exit(1)


@policy_app.command("check")
def check(bundle_dir: Annotated[Path, typer.Argument(help="bundle directory")]) -> None:
    """Validate a bundle against its schema and print its hash."""
    try:
        bundle = PolicyBundle.load(bundle_dir)
    except PolicyBundleInvalid as exc:
        console.print(f"[red]invalid bundle[/red] {exc.source}:")
        for error in exc.errors:
            console.print(f"  {error}")
        raise typer.Exit(2) from None
    console.print(f"{bundle_dir}: valid, {len(bundle.rules)} policies, sha256 {bundle.hash}")


approvals_app = typer.Typer(
    help="Human approvals: what waits, approve, reject.", no_args_is_help=True
)
Json = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _approver() -> tuple[str, Identity]:
    """The human deciding: MESH_APPROVER_ID and MESH_APPROVER_SEED_FILE."""
    approver_id = os.environ.get("MESH_APPROVER_ID")
    seed = os.environ.get("MESH_APPROVER_SEED_FILE")
    if not approver_id or not seed:
        raise ConfigurationError("set MESH_APPROVER_ID and MESH_APPROVER_SEED_FILE (your key)")
    return approver_id, Identity.load(Path(seed))


async def _pending(nc: Client, topology: Topology, principal: str) -> list[PendingApproval]:
    reply = await request_with_patience(
        nc,
        topology.subjects.service_as("policy", "pending", principal),
        b"",
        timeout=5,
        what="list pending approvals (is the policy service running?)",
    )
    return msgspec.json.decode(reply.data, type=list[PendingApproval])


@contextlib.asynccontextmanager
async def _as_approver() -> AsyncIterator[tuple[Client, Topology, str, Identity]]:
    settings = MeshSettings()
    if not settings.nats_url:
        settings = running_mesh_settings(settings)
    assert settings.nats_url is not None
    approver_id, identity = _approver()
    topology = topology_for(settings)
    if settings.nkey_auth:
        nc = await connect_as(settings.nats_url, approver_id, identity)
    else:
        nc = await connect(settings.nats_url, name=f"approver:{approver_id}")
    try:
        yield nc, topology, approver_id, identity
    finally:
        await close(nc)


@approvals_app.command("list")
def list_pending(as_json: Json = False) -> None:
    """Requests waiting for a human, with the role and deadline each needs."""

    async def read() -> list[PendingApproval]:
        async with _as_approver() as (nc, topology, approver_id, _):
            return await _pending(nc, topology, approver_id)

    pending = run(read())
    if as_json:
        typer.echo(orjson.dumps(msgspec.to_builtins(pending), option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(
        "request", "case", "action", "parameters", "requester", "role", "deadline", "digest"
    )
    for item in pending:
        table.add_row(
            *(
                shown(text)  # what an agent wrote must not be read as markup
                for text in (
                    item.request_id,
                    item.case_id,
                    item.action_type,
                    ", ".join(f"{k}={v}" for k, v in sorted(item.parameters.items())),
                    item.requester,
                    item.approver_role + (" (escalated)" if item.escalated else ""),
                    item.deadline.isoformat(timespec="seconds"),
                    item.request_digest[:16],
                )
            )
        )
    console.print(table)


def _decide(request_id: str, grant: bool, text: str) -> str:
    async def publish() -> str:
        async with _as_approver() as (nc, topology, approver_id, identity):
            found = [
                p for p in await _pending(nc, topology, approver_id) if p.request_id == request_id
            ]
            if not found:
                raise ConfigurationError(f"no approval is pending for request {request_id}")
            pending = found[0]
            envelope: dict[str, Any] = {
                "case_id": pending.case_id,
                "correlation_id": pending.correlation_id,
                "causation_id": pending.required_event_id,
                "actor": approver_id,
            }
            event: Event
            if grant:
                event = ApprovalGranted(
                    **envelope,
                    payload=ApprovalGrantedPayload(
                        request_id=request_id,
                        approver=approver_id,
                        comment=text,
                        request_digest=pending.request_digest,
                    ),
                )
            else:
                event = ApprovalRejected(
                    **envelope,
                    payload=ApprovalRejectedPayload(
                        request_id=request_id,
                        approver=approver_id,
                        reason=text,
                        request_digest=pending.request_digest,
                    ),
                )
            await EventPublisher(nc.jetstream(), identity, topology, nc=nc).publish(event)
            return event.event_id

    return run(publish())


@approvals_app.command("approve")
def approve(
    request_id: str,
    comment: Annotated[str, typer.Option(help="why, for the record")] = "",
) -> None:
    """Approve a waiting request, signed with your key."""
    event_id = _decide(request_id, True, comment)
    typer.echo(f"approval {event_id} sent for request {request_id}")


@approvals_app.command("reject")
def reject(
    request_id: str,
    reason: Annotated[str, typer.Option("--reason", help="why: it is recorded")],
) -> None:
    """Reject a waiting request, signed with your key."""
    event_id = _decide(request_id, False, reason)
    typer.echo(f"rejection {event_id} sent for request {request_id}")
