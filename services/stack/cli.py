"""`mesh up` and `mesh demo` (plug-ins of the mesh CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from mesh._broker.discovery import HINT, RunningMesh, announce, find_running, withdraw
from mesh._broker.topology import Topology
from mesh._runtime.command_line import configure_logging, fail, run
from mesh._support.text import shown
from mesh.errors import ConfigurationError, MeshError
from services.stack.demo import Demo, make_cases, print_summary
from services.stack.demo.workload import DEMO_CLOCK_RATE
from services.stack.layout import Layout
from services.stack.principals import (
    add_principal,
    agent_conflict,
    list_principals,
    reload_services,
    remove_principal,
)
from services.stack.processes import parse_replicas
from services.stack.stack import check_cluster_size, running_stack
from services.stack.supervisor import read_status

console = Console()
up_app = typer.Typer(help="Run the whole mesh as processes, until Ctrl-C.")
status_app = typer.Typer(help="The processes of the running `mesh up`.")
principals_app = typer.Typer(
    help="The mesh's static principals: outside systems and operators.", no_args_is_help=True
)
demo_app = typer.Typer(help="Run the mesh and feed it reference claims.")
T = TypeVar("T")
FoundDataDir = Annotated[
    Path | None, typer.Option(help="the mesh's data dir; the running mesh's if omitted")
]
DataDir = Annotated[Path, typer.Option(help="keys, logs, the NATS store, the views")]
Cluster = Annotated[
    int,
    typer.Option(
        help="run N nats-server members (odd, 3 or more) as one JetStream cluster with R3"
        " streams, instead of the one embedded server",
        show_default=False,
    ),
]


Replicas = Annotated[
    list[str] | None,
    typer.Option(
        help="run an agent (or registry, policy, ingress, reader, eventstore) as N "
        "processes, e.g. "
        "--replicas fraud=2 (repeatable); an agent's replicas share its work by partition "
        "and never handle one case at once",
        metavar="NAME=N",
        show_default=False,
    ),
]


def _replicas(values: list[str] | None) -> dict[str, int]:
    return _or_fail(lambda: parse_replicas(values or []))


def _cluster_size(cluster: int) -> int:
    if cluster:
        _or_fail(lambda: check_cluster_size(cluster))
    return cluster


@up_app.callback(invoke_without_command=True)
def up(
    data_dir: DataDir = Path(".mesh/up"),
    log_level: str = "WARNING",
    cluster: Cluster = 0,
    replicas: Replicas = None,
) -> None:
    """Start nats-server, registry, policy, event store, ingress, the payment gateway
    and the four claims agents, each its own process with its own key, and keep them
    running: a process that exits is started again (with a growing back-off; after
    repeated crashes it is given up on, loudly). `mesh status` shows each one.
    With --cluster N, N nats-server members form a JetStream cluster on loopback
    (each supervised like any other process). With --replicas NAME=N, that agent runs
    as N processes. Ctrl-C stops everything cleanly."""
    cluster = _cluster_size(cluster)
    per_agent = _replicas(replicas)
    configure_logging(log_level)
    data_dir = data_dir.resolve()

    def event(line: str) -> None:
        colour = "red" if "FAILED" in line else "yellow"
        console.print(f"[{colour}]! {shown(line)}[/{colour}]", highlight=False)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running_stack(
            data_dir,
            on_step=lambda s: console.print(f"· {s}"),
            on_event=event,
            cluster=cluster,
            replicas=per_agent,
        ) as stack:
            running = RunningMesh(
                nats_url=stack.url,
                subject_root=stack.topology.root,
                data_dir=str(data_dir),
                supervisor_pid=os.getpid(),
                ingress_http=stack.ingress_http,
            )
            announce(running)
            try:
                console.print(
                    f"[bold]mesh up[/bold]: NATS {stack.url} · ingress HTTP {stack.ingress_http}"
                    f" · logs in {stack.layout.logs}\n"
                    f"  open a case: POST {stack.ingress_http}/v1/cases/crm "
                    f"(token in {stack.layout.keys / 'crm.http-token'})\n"
                    "  `mesh status` shows every process; other `mesh` commands find this"
                    " mesh on their own.\n"
                    "  Ctrl-C stops everything.",
                    highlight=False,
                )
                await stop.wait()
            finally:
                withdraw(running)
        console.print("stopped.")

    run(serve())


@status_app.callback(invoke_without_command=True)
def status(
    data_dir: Annotated[
        Path | None, typer.Option(help="the mesh's data dir; found on its own if omitted")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Each process of the running `mesh up`: state, pid, restarts, last exit and why.
    Exits 1 if the mesh is not running or a process was given up on."""
    if data_dir is None and "MESH_DATA_DIR" in os.environ:
        data_dir = Path(os.environ["MESH_DATA_DIR"])
    found = find_running(data_dir)
    if found is None:
        console.print(f"[red]no running mesh found[/red]: {HINT}", highlight=False)
        raise typer.Exit(1)
    report = read_status(Layout(Path(found.data_dir)).status_file)
    if as_json:
        typer.echo(msgspec.json.encode(report).decode())
    else:
        table = Table(title=f"mesh up (pid {found.supervisor_pid}) · NATS {found.nats_url}")
        for column in ("process", "state", "pid", "restarts", "last exit", "since", "why"):
            table.add_column(column)
        now = time.time()
        for child in report.processes:
            colour = {"running": "green", "backoff": "yellow"}.get(child.state, "red")
            table.add_row(
                child.name,
                f"[{colour}]{child.state}[/{colour}]",
                str(child.pid or "-"),
                str(child.restarts),
                "-" if child.last_exit is None else str(child.last_exit),
                f"{now - child.since:.0f}s ago",
                shown(child.reason),
            )
        Console().print(table)
    if any(child.state == "failed" for child in report.processes):
        raise typer.Exit(1)


@demo_app.callback(invoke_without_command=True)
def demo(
    cases: Annotated[int, typer.Option(help="how many claims to feed")] = 300,
    seed: Annotated[int, typer.Option(help="the mix of claims is random, from this")] = 7,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 100.0,
    data_dir: DataDir = Path(".mesh/demo"),
    log_level: str = "WARNING",
    cluster: Cluster = 0,
    replicas: Replicas = None,
) -> None:
    """Bring the mesh up, feed it claims of mixed kinds, approve a share of what waits
    for a human, show the progress, and end with a summary and the audit verification.
    With --cluster N, on an N-member JetStream cluster with R3 streams; with
    --replicas NAME=N, that agent runs as N processes."""
    cluster = _cluster_size(cluster)
    per_agent = _replicas(replicas)
    configure_logging(log_level)
    data_dir = data_dir.resolve()
    shutil.rmtree(data_dir, ignore_errors=True)  # a demo starts from an empty log

    async def go() -> bool:
        started = time.monotonic()
        async with running_stack(
            data_dir,
            on_step=lambda s: console.print(f"· {s}"),
            cluster=cluster,
            replicas=per_agent,
            # Intake's 14-day wait for a police report passes in seconds (demo only).
            env={"intake": {"MESH_CLOCK_RATE": str(DEMO_CLOCK_RATE)}},
        ) as stack:
            console.print(f"· the mesh came up in {time.monotonic() - started:.1f}s")
            result = await Demo(stack, make_cases(cases, seed, waiting=True), console).run(timeout)
        print_summary(result, console)
        console.print(f"logs, keys, the log and the views are in {data_dir}/", highlight=False)
        return result.report.ok and result.all_final and result.paid_once

    if not run(go()):
        raise typer.Exit(1)


@principals_app.command("list")
def principals_list(
    data_dir: FoundDataDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """The mesh's static principals: services, operators and outside systems."""
    layout = Layout(_mesh_dir(data_dir))
    principals = _or_fail(lambda: list_principals(layout))
    if as_json:
        rows = [
            {
                "name": p.name,
                "role": p.role,
                "public_key": p.public_key,
                "added_at": p.valid_from.isoformat(),
                "removed_at": p.valid_until.isoformat() if p.valid_until else None,
            }
            for p in principals
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"principals of {layout.data_dir}")
    for column in ("name", "role", "public key", "in force"):
        table.add_column(column)
    for p in principals:
        since = (
            "from the start" if p.valid_from.year == 1970 else f"from {p.valid_from:%Y-%m-%d %H:%M}"
        )
        span = f"removed {p.valid_until:%Y-%m-%d %H:%M}" if p.valid_until else since
        table.add_row(p.name, p.role, p.public_key, span)
    Console().print(table)


@principals_app.command("add")
def principals_add(
    name: Annotated[str, typer.Argument(help="the principal's id: 1-60 of [A-Za-z0-9_]")],
    role: Annotated[str, typer.Option(help="external (opens cases) or operator")] = "external",
    public_key: Annotated[
        str | None,
        typer.Option(help="its nkey user public key (U…), if its team keeps its own seed"),
    ] = None,
    data_dir: FoundDataDir = None,
) -> None:
    """Add an outside system or an operator, write what its team needs (an nkey seed
    file unless --public-key, an HTTP token, a connection file), and reload the
    registry and the ingress of the running mesh."""
    layout = Layout(_mesh_dir(data_dir))
    found = find_running(layout.data_dir)
    if found is not None:  # the registry knows every agent's id and keys: ask it first
        clash = run(agent_conflict(found, layout, name, public_key))
        if clash:
            raise fail(ConfigurationError(clash))
    credentials = _or_fail(
        lambda: add_principal(
            layout,
            Topology(found.subject_root if found else "mesh"),
            name,
            role,  # type: ignore[arg-type]  # checked inside, with a clear message
            public_key=public_key,
            nats_url=found.nats_url if found else "",
            ingress_http=found.ingress_http if found else "",
        )
    )
    console.print(f"added {credentials.principal.role} [bold]{shown(name)}[/bold]")
    for label, path in (
        ("NATS credential (nkey seed; hand over securely)", credentials.seed_file),
        ("HTTP bearer token", credentials.http_token_file),
        ("connection details (subjects, inbox prefix, schemas)", credentials.connection_file),
    ):
        if path is not None:
            console.print(f"  {label}: {path}", highlight=False)
    _reload(layout)


@principals_app.command("remove")
def principals_remove(
    name: Annotated[str, typer.Argument(help="the principal to remove")],
    data_dir: FoundDataDir = None,
) -> None:
    """End an outside system's or an operator's access now. Its entry stays (ended),
    so that what it signed before still verifies and its name is never reused."""
    layout = Layout(_mesh_dir(data_dir))
    ended = _or_fail(lambda: remove_principal(layout, name))
    console.print(f"removed {shown(name)} at {ended.valid_until:%Y-%m-%d %H:%M:%S} UTC")
    _reload(layout)


def _mesh_dir(data_dir: Path | None) -> Path:
    """The data dir given, else the running `mesh up`'s."""
    if data_dir is not None:
        return data_dir.resolve()
    if "MESH_DATA_DIR" in os.environ:
        return Path(os.environ["MESH_DATA_DIR"]).resolve()
    found = find_running()
    if found is None:
        console.print(f"[red]no running mesh found[/red] (or pass --data-dir): {HINT}")
        raise typer.Exit(2)
    return Path(found.data_dir)


def _or_fail(action: Callable[[], T]) -> T:
    try:
        return action()
    except MeshError as exc:
        raise fail(exc) from None


def _reload(layout: Layout) -> None:
    signalled = reload_services(layout)
    if signalled:
        console.print(f"  reloaded: {', '.join(signalled)} (SIGHUP); in force within a second")
    else:
        console.print(
            "  no mesh runs from this data dir: it takes effect when the mesh starts "
            "(or on SIGHUP to its registry and ingress)"
        )
