"""Fixtures shared by the test suite.

`db_url` runs a test once on SQLite and once on PostgreSQL. PostgreSQL comes from
XINYI_TEST_PG (default postgresql+psycopg://postgres@127.0.0.1:5432/test); each test gets its
own schema, dropped afterwards. When PostgreSQL is unreachable those runs are skipped, except
under CI (env CI set), where a missing database must fail loudly rather than pass quietly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import faults
import pytest
from testdb import Databases, require_pg

# A PostgreSQL server of the test's own, to stop under a running network; a small disk to fill.
private_postgres = pytest.fixture(faults.private_postgres)
postgres_pair = pytest.fixture(faults.postgres_pair)
small_disk = pytest.fixture(faults.small_disk)


@pytest.fixture(params=["sqlite", "postgresql"])
def databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Databases]:
    """Fresh databases on each back end: the test runs once on SQLite, once on PostgreSQL."""
    if request.param == "postgresql":
        require_pg()
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test` runs whole networks (the `network` fixture) on SQLite and leaves their
    PostgreSQL runs to `make test-slow` (CI runs both), so that it stays under fifteen minutes on
    two cores; the store's own tests run on both back ends in either."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("databases") == "postgresql" and "network" in item.fixturenames:
            item.add_marker(pytest.mark.slow)
