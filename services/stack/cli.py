"""`mesh up` and `mesh demo` (plug-ins of the mesh CLI)."""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mesh.cli._common import configure_logging, run
from services.stack.demo import Demo, make_cases, print_summary
from services.stack.stack import running_stack

console = Console()
up_app = typer.Typer(help="Run the whole mesh as processes, until Ctrl-C.")
demo_app = typer.Typer(help="Run the mesh and feed it reference claims.")
DataDir = Annotated[Path, typer.Option(help="keys, logs, the NATS store, the views")]


@up_app.callback(invoke_without_command=True)
def up(data_dir: DataDir = Path(".mesh/up"), log_level: str = "WARNING") -> None:
    """Start nats-server, registry, policy, event store, ingress, the payment gateway
    and the four claims agents, each its own process with its own key; stop them all
    cleanly on Ctrl-C."""
    configure_logging(log_level)

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        async with running_stack(data_dir, on_step=lambda s: console.print(f"· {s}")) as stack:
            console.print(
                f"[bold]mesh up[/bold]: NATS {stack.url} · ingress HTTP {stack.ingress_http}"
                f" · logs in {stack.layout.logs}\n"
                f"  open a case: POST {stack.ingress_http}/v1/cases/crm "
                f"(token in {stack.layout.keys / 'crm.http-token'})\n"
                "  Ctrl-C stops everything.",
                highlight=False,
            )
            while not stop.is_set():
                stack.check_processes()
                await asyncio.wait([asyncio.ensure_future(stop.wait())], timeout=1.0)
        console.print("stopped.")

    run(serve())


@demo_app.callback(invoke_without_command=True)
def demo(
    cases: Annotated[int, typer.Option(help="how many claims to feed")] = 300,
    seed: Annotated[int, typer.Option(help="the mix of claims is random, from this")] = 7,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds")] = 100.0,
    data_dir: DataDir = Path(".mesh/demo"),
    log_level: str = "WARNING",
) -> None:
    """Bring the mesh up, feed it claims of mixed kinds, approve a share of what waits
    for a human, show the progress, and end with a summary and the audit verification."""
    configure_logging(log_level)
    shutil.rmtree(data_dir, ignore_errors=True)  # a demo starts from an empty log

    async def go() -> bool:
        started = time.monotonic()
        async with running_stack(data_dir, on_step=lambda s: console.print(f"· {s}")) as stack:
            console.print(f"· the mesh came up in {time.monotonic() - started:.1f}s")
            result = await Demo(stack, make_cases(cases, seed), console).run(timeout)
        print_summary(result, console)
        console.print(f"logs, keys, the log and the views are in {data_dir}/", highlight=False)
        return result.report.ok and result.all_final and result.paid_once

    if not run(go()):
        raise typer.Exit(1)
