"""`mesh policy …` (a plug-in of the mesh CLI, registered as an entry point)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
