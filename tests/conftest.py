"""Fixtures shared by the test suite.

`db_url` runs a test once on SQLite and once on PostgreSQL. PostgreSQL comes from
XINYI_TEST_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test); each test gets its
own schema, dropped afterwards. When PostgreSQL is unreachable those runs are skipped, except
under CI (env CI set), where a missing database must fail loudly rather than pass quietly.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pg_base_url() -> str:
    return os.environ.get("XINYI_TEST_PG", PG_DEFAULT)


@functools.cache
def _pg_unreachable() -> str | None:
    """Why PostgreSQL cannot be used, or None; asked once per session."""
    engine = create_engine(pg_base_url(), connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        return f"{e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        engine.dispose()


def _require_pg() -> None:
    reason = _pg_unreachable()
    if reason is None:
        return
    message = f"PostgreSQL at {make_url(pg_base_url()).render_as_string()} is unreachable ({reason})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must test PostgreSQL: start it or set XINYI_TEST_PG")
    pytest.skip(f"{message}; set XINYI_TEST_PG to test PostgreSQL")


class Databases:
    """Makes fresh, empty databases on one back end; drops the PostgreSQL ones afterwards."""

    def __init__(self, backend: str, tmp_path: Path) -> None:
        self.backend = backend
        self.tmp_path = tmp_path
        self._schemas: list[str] = []

    def new(self, name: str = "test") -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.tmp_path / (name + '.db')}"
        schema = f"t_{uuid.uuid4().hex}"
        admin = create_engine(pg_base_url())
        try:
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        finally:
            admin.dispose()
        self._schemas.append(schema)
        url = make_url(pg_base_url()).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self._schemas:
            return
        admin = create_engine(pg_base_url())
        try:
            with admin.begin() as conn:
                for schema in self._schemas:
                    conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    """Fresh databases on each back end: the test runs once on SQLite, once on PostgreSQL."""
    if request.param == "postgresql":
        _require_pg()
    dbs = Databases(request.param, tmp_path)
    yield dbs
    dbs.drop_all()


@pytest.fixture
def db_url(databases: Databases) -> str:
    """A database URL for a fresh, empty database on each back end."""
    return databases.new()


@pytest.fixture
async def network(databases: Databases, tmp_path: Path):
    """Registry + Chengdu (510100), Sichuan (510000) and Shanghai (310000) nodes, seeded, on each back end."""
    from harness import start_network

    net = await start_network(tmp_path, databases)
    yield net
    await net.stop()
