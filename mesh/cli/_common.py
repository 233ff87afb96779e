"""What every `mesh` subcommand shares: a console, logging, and a NATS session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from rich.console import Console

from mesh.app import nats_url
from mesh.connection import close, connect
from mesh.errors import ConfigurationError, MeshError
from mesh.identity import Identity
from mesh.onboarding import inbox_prefix
from mesh.settings import MeshSettings
from mesh.text import shown
from mesh.topology import Topology

T = TypeVar("T")

console = Console(stderr=True)
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")]


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {shown(str(exc))}")  # an error can quote what a peer wrote
    return typer.Exit(2)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a MeshError becomes a one-line error and exit code 2."""
    try:
        return asyncio.run(coroutine)
    except MeshError as exc:
        raise fail(exc) from None


def operator_identity(settings: MeshSettings) -> Identity:
    """The key the CLI signs operator actions with (and authenticates by, under nkey
    auth): MESH_OPERATOR_SEED_FILE, or <data_dir>/keys/<operator_name>.nk."""
    path = settings.operator_seed_file or (
        settings.data_dir / "keys" / f"{settings.operator_name}.nk"
    )
    if not path.exists():
        raise ConfigurationError(f"no operator seed at {path} (set MESH_OPERATOR_SEED_FILE)")
    return Identity.load(path)


@dataclass(frozen=True)
class Session:
    settings: MeshSettings
    nc: Client
    topology: Topology

    @property
    def js(self) -> JetStreamContext:
        return self.nc.jetstream(timeout=self.settings.request_timeout)


@contextlib.asynccontextmanager
async def session(*, embedded: bool = False) -> AsyncIterator[Session]:
    """A connection to the mesh's NATS. Commands that inspect a running mesh need
    MESH_NATS_URL; only those that may bootstrap one (`embedded=True`) start a server."""
    settings = MeshSettings()
    if not settings.nats_url and not embedded:
        raise ConfigurationError("set MESH_NATS_URL to the mesh's NATS server")
    async with nats_url(settings) as url:
        if settings.nkey_auth:
            # A broker enforcing the registry: the CLI is the operator principal.
            nc = await connect(
                url,
                name="mesh-cli",
                identity=operator_identity(settings),
                inbox_prefix=inbox_prefix(settings.operator_name),
                connect_timeout=settings.connect_timeout,
            )
        else:
            nc = await connect(url, name="mesh-cli", connect_timeout=settings.connect_timeout)
        try:
            yield Session(settings, nc, Topology(settings.subject_root, settings.stream_replicas))
        finally:
            await close(nc)
