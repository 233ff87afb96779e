"""Runtime commands: run an agent, the embedded server, streams, dead letters, keys,
contracts."""

from __future__ import annotations

import signal
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from contracts import schema_export
from mesh._broker.embedded import EmbeddedNats
from mesh._broker.provisioning import Outcome
from mesh._broker.stream_provisioning import provision_streams
from mesh._runtime.command_line import LogLevel, configure_logging, fail, run, session
from mesh._runtime.dead_letters import read_dead_letters, replay_dead_letter
from mesh._sdk.app import load_agent, run_agent
from mesh._support.text import shown
from mesh._trust.identity import Identity
from mesh.cli.delegations import delegations_app
from mesh.cli.registry import registry_app
from mesh.errors import ConfigurationError, MeshError
from mesh.settings import MeshSettings

app = typer.Typer(
    help="Agent Mesh: event-sourced agents over NATS JetStream.", no_args_is_help=True
)
keys_app = typer.Typer(help="Agent and human keys (nkeys).", no_args_is_help=True)
streams_app = typer.Typer(help="The mesh's JetStream streams.", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect and replay dead letters.", no_args_is_help=True)
contracts_app = typer.Typer(help="Event contracts and their JSON Schema.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(streams_app, name="streams")
app.add_typer(dlq_app, name="dlq")
app.add_typer(contracts_app, name="contracts")
app.add_typer(registry_app, name="registry")
app.add_typer(delegations_app, name="delegations")


def _add_plugins() -> None:
    """Subcommands that services contribute (entry points `mesh.commands`); loaded by
    name so the runtime package never depends on a service."""
    for entry in entry_points(group="mesh.commands"):
        app.add_typer(entry.load(), name=entry.name)


_add_plugins()


@app.command("run")
def run_command(
    target: Annotated[str, typer.Argument(help="module[:attribute] holding an Agent")],
    log_level: LogLevel = "INFO",
) -> None:
    """Run one agent as this process, until SIGINT/SIGTERM."""
    configure_logging(log_level)
    sys.path.insert(0, str(Path.cwd()))
    try:
        agent = load_agent(target)
    except MeshError as exc:
        raise fail(exc) from None
    run(run_agent(agent, MeshSettings()))


@app.command()
def nats(
    data_dir: Annotated[Path, typer.Option(help="store directory")] = Path(".mesh/nats"),
    port: Annotated[int, typer.Option(help="client port; 0 takes a free one")] = 0,
    log_level: LogLevel = "INFO",
) -> None:
    """Run the embedded nats-server in the foreground (JetStream, fsync always)."""
    configure_logging(log_level)
    try:
        server = EmbeddedNats(data_dir, port=port).start()
    except MeshError as exc:
        raise fail(exc) from None
    typer.echo(f"MESH_NATS_URL={server.url}")
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()


@keys_app.command("new")
def keys_new(
    out: Annotated[Path | None, typer.Option(help="write the seed here (0600)")] = None,
) -> None:
    """Create an nkey pair; print the public key (and the seed if no --out)."""
    identity = Identity.generate()
    if out is not None:
        identity.save(out)
        typer.echo(identity.public_key)
    else:
        typer.echo(orjson.dumps({"public_key": identity.public_key, "seed": identity.seed}))


@streams_app.command("provision")
def streams_provision(
    strict: Annotated[bool, typer.Option(help="exit 1 when any stream drifted")] = True,
) -> None:
    """Create missing streams; report any whose config drifted from the declaration."""

    async def provision() -> int:
        async with session(embedded=True) as mesh:
            drifted = 0
            for report in await provision_streams(mesh.js, mesh.topology):
                typer.echo(f"{report.resource}: {report.outcome.value}")
                for difference in report.differences:
                    typer.echo(f"  {difference}")
                drifted += report.outcome is Outcome.DRIFTED
            return drifted

    if run(provision()) and strict:
        raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list(
    start: Annotated[int, typer.Option(help="first DLQ sequence")] = 1,
    limit: Annotated[int, typer.Option()] = 50,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List dead letters with who filed them (the consumer that gave up) and why."""
    columns = ("sequence", "consumer", "kind", "original_subject", "original_sequence", "reason")

    async def read() -> list[dict[str, object]]:
        async with session() as mesh:
            letters = await read_dead_letters(mesh.js, mesh.topology, start=start, limit=limit)
        return [{column: getattr(letter, column) for column in columns} for letter in letters]

    rows = run(read())
    if as_json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(*columns)
    for row in rows:
        # A reason or subject can carry what a sender wrote: never read it as markup.
        table.add_row(*(shown(str(row[column])) for column in columns))
    Console().print(table)


@dlq_app.command("replay")
def dlq_replay(sequence: Annotated[int, typer.Argument(help="DLQ sequence to replay")]) -> None:
    """Send a dead letter back to the consumer that filed it; it takes the message from
    the case log by sequence."""

    async def replay() -> int:
        async with session() as mesh:
            letters = await read_dead_letters(mesh.js, mesh.topology, start=sequence, limit=1)
            if not letters or letters[0].sequence != sequence:
                raise ConfigurationError(f"no dead letter at sequence {sequence}")
            return await replay_dead_letter(mesh.js, mesh.topology, letters[0])

    new_sequence = run(replay())
    typer.echo(f"replayed dead letter {sequence} to its consumer (replay seq {new_sequence})")


@contracts_app.command("check")
def contracts_check() -> None:
    """Exit 1 if the committed JSON Schema files are stale."""
    stale = schema_export.stale_files()
    for name in stale:
        typer.echo(f"stale: contracts/schema/{name}")
    if stale:
        typer.echo("run: mesh contracts write")
        raise typer.Exit(1)
    typer.echo("contracts/schema is up to date")


@contracts_app.command("write")
def contracts_write() -> None:
    """Regenerate contracts/schema/*.json from the event types."""
    for path in schema_export.write():
        typer.echo(f"wrote {path}")
