"""View databases for event-store tests: a SQLite file, and a fresh PostgreSQL database
per test on the server named by MESH_TEST_POSTGRES_DSN (which .ci/run sets). Without
that variable, or without a server answering there, PostgreSQL tests skip and say why."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

POSTGRES_ENV = "MESH_TEST_POSTGRES_DSN"
KINDS = ("sqlite", "postgresql")


class Databases:
    """Makes fresh, empty databases of either kind, and drops them afterwards."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._created: list[str] = []

    def new(self, kind: str) -> str:
        if kind == "sqlite":
            return f"sqlite:///{self.directory / f'views-{uuid.uuid4().hex[:8]}.db'}"
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (.ci/run sets it)")
        name = f"mesh_test_{uuid.uuid4().hex[:12]}"
        try:
            with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        except psycopg.OperationalError as exc:
            pytest.skip(f"no PostgreSQL server answers at {base}: {exc}")
        self._created.append(name)
        return make_url(base).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        base = os.environ.get(POSTGRES_ENV)
        if not base or not self._created:
            return
        with psycopg.connect(base, autocommit=True, connect_timeout=5) as conn:
            for name in self._created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def databases(tmp_path: Path) -> Iterator[Databases]:
    made = Databases(tmp_path)
    try:
        yield made
    finally:
        made.drop_all()


@pytest.fixture(params=KINDS)
def database_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


NewDatabase = Callable[[str], str]
