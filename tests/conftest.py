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


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL for a fresh, empty database on each back end."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
        return
    _require_pg()
    schema = f"t_{uuid.uuid4().hex}"
    admin = create_engine(pg_base_url())
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(pg_base_url()).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
