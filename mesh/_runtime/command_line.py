"""What every `mesh` subcommand shares: a console, logging, and a NATS session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from nats.aio.client import Client
from nats.js.client import JetStreamContext
from rich.console import Console

from mesh._broker.connection import close, connect
from mesh._broker.discovery import HINT, find_running
from mesh._broker.topology import Topology, topology_for
from mesh._sdk.app import nats_url
from mesh._support.text import shown
from mesh._trust.identity import Identity
from mesh._trust.onboarding import inbox_prefix
from mesh.errors import ConfigurationError, MeshError
from mesh.settings import MeshSettings

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


def running_mesh_settings(settings: MeshSettings) -> MeshSettings:
    """Settings for the `mesh up` found running (see mesh._broker.discovery): its NATS URL,
    subject root and keys; MESH_DATA_DIR, when set, says which one."""
    chosen = settings.data_dir if "MESH_DATA_DIR" in os.environ else None
    found = find_running(chosen)
    if found is None:
        where = f" in {chosen}" if chosen is not None else ""
        raise ConfigurationError(f"no running mesh found{where}: {HINT}")
    return settings.model_copy(
        update={
            "nats_url": found.nats_url,
            "subject_root": found.subject_root,
            "data_dir": Path(found.data_dir),
            "nkey_auth": True,
        }
    )


@contextlib.asynccontextmanager
async def session(*, embedded: bool = False) -> AsyncIterator[Session]:
    """A connection to the mesh's NATS. Commands that inspect a running mesh need
    MESH_NATS_URL; only those that may bootstrap one (`embedded=True`) start a server."""
    settings = MeshSettings()
    if not settings.nats_url and not embedded:
        settings = running_mesh_settings(settings)
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
            yield Session(settings, nc, topology_for(settings))
        finally:
            await close(nc)
