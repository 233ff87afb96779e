"""The `mesh` command line. Subcommand groups live in their own modules."""

from mesh.cli.commands import app


def main() -> None:
    app()


__all__ = ["app", "main"]
