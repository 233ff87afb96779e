"""A 3-node JetStream cluster on loopback for a test: three real nats-servers on free
ports with stores in the test's temp dir, formed and healthy (a meta leader elected)
before the test starts, every process gone when it ends. Separate from the session's
single server (`nats_url` in tests/conftest.py): a cluster test kills members."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh._broker.cluster import NatsCluster


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster", size=3)
    await asyncio.to_thread(nodes.start)
    try:
        yield nodes
    finally:
        await asyncio.to_thread(nodes.stop)
