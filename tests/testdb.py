"""The databases tests run on: SQLite, and PostgreSQL from XINYI_TEST_PG (default
postgresql+psycopg://postgres@127.0.0.1:5432/test), each test in a schema of its own, dropped
afterwards. When PostgreSQL is unreachable those runs are skipped, except under CI (env CI set),
where a missing database must fail loudly rather than pass quietly.

A module of its own (not conftest.py) so that any test module, at any depth, can import it.
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path

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


def require_pg() -> None:
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
