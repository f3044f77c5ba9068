"""Fixtures of the adversarial suite. (The faults it causes, a private PostgreSQL and a small
disk, are tests/faults.py's, as fixtures of tests/conftest.py.)

`network_of_processes` is one network per test module (registry and the Chengdu node as
processes) for the hostile-request and fuzz modules, once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import pytest
from testdb import Databases, require_pg


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def network_of_processes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The registry and the Chengdu node (510100) as processes, shared by one module's tests, on
    each back end (tests/conftest.py's Databases: PostgreSQL is skipped when unreachable, except in CI)."""
    from procnet import started

    if request.param == "postgresql":
        require_pg()
    tmp = tmp_path_factory.mktemp(f"net-{request.module.__name__}-{request.param}")
    databases = Databases(request.param, tmp)
    net = await started(tmp, databases, nodes=("510100",))
    net.backend = request.param
    try:
        yield net
    finally:
        await net.stop()
        databases.drop_all()
