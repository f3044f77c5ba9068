"""Schema migrations (xinyi.migrations, `xinyi db upgrade`), on SQLite and PostgreSQL.

- Revision 0001 creates exactly the first release's schema: the DDL the first release sent,
  captured in tests/first_release/, and the database 0001 makes are the same, statement for
  statement (SQLite) or in pg_dump's description (PostgreSQL).
- The newest revision creates exactly the tables the code defines (Alembic's compare_metadata
  finds nothing): a table or column added without a revision fails here.
- A database made by the first release, filled with rows in every table and a real audit log
  with its signed checkpoint, is upgraded by `xinyi db upgrade` (a real process): every row is
  still there, the log reopens on its checkpoint, and the services accept the database.
- `xinyi node serve` and `xinyi registry serve` refuse a database behind the code, or at a
  revision they do not know, naming the command to run; `xinyi db status` says where one
  stands; a bad --db is one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from processes import ROOT, XINYI, Proc
from sqlalchemy import BigInteger, MetaData, insert, inspect, select, text
from sqlalchemy.engine import make_url
from testdb import Databases, pg_base_url

from node.store import NodeStore, Record
from registry.store import RegistryStore
from xinyi import migrations
from xinyi.audit.entry import AuditEntry
from xinyi.audit.log import AuditLog
from xinyi.clock import now_ms
from xinyi.crypto.identity import Principal, Role
from xinyi.crypto.pki import RootCA
from xinyi.db import StoreError, open_engine

FIRST_RELEASE_DDL = ROOT / "tests" / "first_release"
STORES = {"node": NodeStore, "registry": RegistryStore}
# Keys the database numbers itself (a value given here would leave PostgreSQL's sequence behind).
NUMBERED = {"records": "id", "alerts": "seq", "consent_events": "seq"}
ROWS_PER_TABLE = 3


def _load_script():
    spec = importlib.util.spec_from_file_location("migration_script", ROOT / "scripts" / "migration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


code_metadata = _load_script().code_metadata


def xinyi(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*XINYI, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def first_release_database(url: str, store: str) -> None:
    """A database exactly as the first release's create_schema left it: its DDL, no revision."""
    engine = open_engine(url)
    statements = FIRST_RELEASE_DDL.joinpath(f"{store}.{engine.dialect.name}.sql").read_text().split(";\n")
    with engine.begin() as conn:
        for statement in statements:
            sql = "\n".join(line for line in statement.splitlines() if not line.startswith("--")).strip()
            if sql:
                conn.exec_driver_sql(sql)
    engine.dispose()


def upgrade_to(url: str, store: str, revision: str) -> None:
    engine = open_engine(url)
    with engine.begin() as conn:
        command.upgrade(migrations.config(store, conn), revision)
    engine.dispose()


def behind_database(url: str, store: str) -> None:
    """The newest schema older than head: head's predecessor, or the first release unstamped."""
    down = migrations.scripts(store).get_revision(migrations.head(store)).down_revision
    if down is None:
        first_release_database(url, store)
    else:
        upgrade_to(url, store, down)


def schema_of(url: str) -> str:
    """What the database's schema is, as text two identical schemas give identically."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = conn.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master "
                                         "WHERE tbl_name != 'alembic_version' ORDER BY type, name")).all()
                return "\n".join(f"{r.type} {r.name} {r.tbl_name}\n{r.sql}" for r in rows)
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    finally:
        engine.dispose()
    pg = make_url(pg_base_url())
    dump = subprocess.run(["/usr/lib/postgresql/15/bin/pg_dump", "--schema-only", "--no-owner", "-n", schema,
                           "-T", f"{schema}.alembic_version", "-h", pg.host or "127.0.0.1", "-p", str(pg.port or 5432),
                           "-U", pg.username or "postgres", pg.database], capture_output=True, text=True, check=True)
    lines = [line for line in dump.stdout.replace(schema, "S").splitlines()
             if line and not line.startswith(("--", "\\restrict", "\\unrestrict"))]  # (a random key per dump)
    return "\n".join(lines)


# --- the revisions ---------------------------------------------------------------------------
@pytest.mark.parametrize("store", STORES)
def test_each_store_has_one_line_of_revisions_from_the_first_release(store: str):
    scripts = migrations.scripts(store)
    assert len(scripts.get_heads()) == 1, "two revisions follow one: re-chain the newer one (down_revision)"
    chain = list(scripts.walk_revisions())
    assert chain[-1].revision == migrations.FIRST_RELEASE and chain[-1].down_revision is None
    assert all(r.revision == f"{n:04d}" for n, r in enumerate(reversed(chain), 1)), "revisions are numbered 0001, 0002…"


@pytest.mark.parametrize("store", STORES)
def test_revision_0001_creates_the_first_release_schema(databases: Databases, store: str):
    frozen, migrated = databases.new("frozen"), databases.new("migrated")
    first_release_database(frozen, store)
    upgrade_to(migrated, store, migrations.FIRST_RELEASE)
    assert schema_of(migrated) == schema_of(frozen)
    engine = open_engine(migrated)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    engine.dispose()
    assert tables - {"alembic_version"} == set(migrations.scripts(store).get_revision("0001").module.TABLES)


@pytest.mark.parametrize("store", STORES)
def test_the_newest_revision_is_what_the_code_defines(databases: Databases, store: str):
    """A table, column or index added to the code without a revision fails this test."""
    url = databases.new()
    STORES[store](url).create_schema()
    engine = open_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diffs = compare_metadata(context, code_metadata(store))
        assert migrations.status(engine, store).state == migrations.CURRENT
    engine.dispose()
    assert diffs == [], f"the code's {store} tables differ from the newest revision; add one: " \
                        f"python scripts/migration.py {store} 'what changed'"


@pytest.mark.parametrize("store", STORES)
def test_the_first_release_ddl_is_what_the_code_made_then(store: str):
    """While the code is still at the first release's tables, the captured DDL is what it
    compiles to (run at the commit the DDL was captured at; later, 0001 stays checked against it)."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    if migrations.head(store) != migrations.FIRST_RELEASE:
        pytest.skip(f"the {store}'s code has moved past the first release (head {migrations.head(store)})")
    frozen = FIRST_RELEASE_DDL.joinpath(f"{store}.sqlite.sql").read_text()
    for table in code_metadata(store).sorted_tables:
        assert str(CreateTable(table).compile(dialect=sqlite.dialect())).strip() in frozen, table.name
        for index in table.indexes:
            assert str(CreateIndex(index).compile(dialect=sqlite.dialect())).strip() in frozen, index.name


# --- the first release, filled, upgraded -----------------------------------------------------
def _value(column, n: int):
    """Row n's value for a column: distinct per row, the right type, within its length."""
    kind = column.type.python_type
    if kind is bool:
        return n % 2 == 0
    if kind is int:
        return 1_700_000_000_000 + n if isinstance(column.type, BigInteger) else 100 + n
    if kind is float:
        return n + 0.25
    if kind is bytes:
        return bytes([n]) * (column.type.length or 40)
    raw = f"{column.name[:4]}{n}"
    return raw[: column.type.length] if getattr(column.type, "length", None) else raw


def fill(url: str, skip: set[str]) -> None:
    """ROWS_PER_TABLE rows in every table but `skip`, nullable columns alternately empty."""
    engine = open_engine(url)
    metadata = MetaData()
    metadata.reflect(engine)
    with engine.begin() as conn:
        for table in metadata.sorted_tables:
            if table.name in skip:
                continue
            rows = [{c.name: (None if c.nullable and n % 2 else _value(c, n)) for c in table.columns
                     if NUMBERED.get(table.name) != c.name} for n in range(ROWS_PER_TABLE)]
            conn.execute(insert(table), rows)
    engine.dispose()


def every_row(url: str) -> dict[str, list[tuple]]:
    engine = open_engine(url)
    metadata = MetaData()
    metadata.reflect(engine)
    out = {}
    with engine.connect() as conn:
        for table in metadata.sorted_tables:
            if table.name != "alembic_version":
                rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                out[table.name] = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in rows]
    engine.dispose()
    return out


async def real_audit_log(store, principal: Principal) -> str:
    """Entries (each with a nonce and a consent use, as queries write them) and a signed
    checkpoint, written by the real AuditLog; returns the checkpoint's note."""
    log = AuditLog(store, RootCA.create().issue(principal), now_ms)
    await log.open()
    for n in range(5):
        await log.append(AuditEntry(at_ms=now_ms(), caller_role="bank", caller_id="91440300192203821X", action="query",
                                    decision="allow", uscc="91510100MA6CXXXX0X", request_hash=f"{n:064x}"),
                         extras=[("seen_nonces", {"signer": "bank/x", "nonce": os.urandom(32), "expires_at_ms": 1}),
                                 ("consent_uses", {"consent_id": "c-real", "request_hash": f"{n:064x}", "asker": "x",
                                                   "at_ms": n})])
    await log.close()
    return log.latest.note


@pytest.mark.parametrize("store", STORES)
async def test_a_first_release_database_is_upgraded_with_every_row(databases: Databases, store: str):
    url = databases.new()
    first_release_database(url, store)
    old = STORES[store](url)
    old.shared = False  # as the first release wrote: one process, no consent use holds (0002) to clear
    principal = Principal(Role.NODE, "510100") if store == "node" else Principal(Role.REGISTRY, "national")
    note = await real_audit_log(old, principal)
    old.close()
    fill(url, skip={"audit_log", "audit_checkpoints"})
    before = every_row(url)
    assert all(before[t] for t in migrations.scripts(store).get_revision("0001").module.TABLES), "a table left empty"
    with pytest.raises(StoreError, match="xinyi db upgrade --db"):  # what a service says about it
        STORES[store](url).create_schema()

    done = await asyncio.to_thread(xinyi, "db", "upgrade", "--db", url)
    assert done.returncode == 0, done.stderr
    assert f"the first release's {store} schema, without a revision record: stamped 0001" in done.stdout
    for revision in migrations._path(store, migrations.FIRST_RELEASE):  # each later revision, reported
        assert f"-> {revision.revision} (" in done.stdout and f"at {revision.revision} (" in done.stdout
    assert f"is at revision {migrations.head(store)}" in done.stdout and "Traceback" not in done.stderr

    after = every_row(url)
    for table, rows in before.items():
        kept = [tuple(r[: len(rows[0])]) for r in after[table]]  # columns added later come after
        if table == "registry_meta":  # the replicas' shared counters (0002) join the old rows
            kept = [r for r in kept if r[0] not in ("consent_event_seq", "directory_version")]
        assert kept == rows, f"{table}: rows changed by the upgrade"
    if store == "registry":  # the event counter carries on after the events already stored
        meta = dict(after["registry_meta"])
        assert meta["consent_event_seq"] == max(r[0] for r in after["consent_events"]) and "directory_version" in meta
    upgraded = STORES[store](url)
    try:
        upgraded.create_schema()  # accepted now
        log = AuditLog(upgraded, RootCA.create().issue(principal), now_ms)
        await log.open()  # the tree rebuilt from the rows matches the stored checkpoint: not re-signed
        assert log.latest.note == note and log.tree.size == 5
        await log.close()
        if store == "node":  # the numbering continues after the rows the first release made
            assert upgraded.add_records([Record("91510100MA6CXXXX0X", "tax", "2026-01-01", "tax", {"x": 1})], 1) == 1
        else:
            assert upgraded.add_consent_event("c-new") == ROWS_PER_TABLE + 1
    finally:
        upgraded.close()
    again = await asyncio.to_thread(xinyi, "db", "upgrade", "--db", url)
    assert again.returncode == 0 and "stamped" not in again.stdout and " -> " not in again.stdout


# --- services refuse a database not at head ----------------------------------------------------
@pytest.fixture
def identities(tmp_path: Path) -> dict[str, Path]:
    root = RootCA.create()
    root.save(tmp_path / "certs")
    return {"node": root.issue(Principal(Role.NODE, "510100")).save(tmp_path / "certs"),
            "registry": root.issue(Principal(Role.REGISTRY, "national")).save(tmp_path / "certs")}


def serve_args(store: str, identity: Path, url: str) -> list[str]:
    extra = ["--registry", "127.0.0.1:1"] if store == "node" else []
    return [store, "serve", "--identity", str(identity), "--listen", "127.0.0.1:0", *extra, "--db", url]


@pytest.mark.slow  # a minute of make test's budget between these; CI runs them in make test-slow
@pytest.mark.parametrize("store", STORES)
async def test_a_service_refuses_a_database_behind_and_starts_once_upgraded(databases: Databases,
                                                                           identities: dict[str, Path],
                                                                           tmp_path: Path, store: str):
    url = databases.new()
    behind_database(url, store)
    refused = await asyncio.to_thread(xinyi, *serve_args(store, identities[store], url))
    assert refused.returncode == 2, refused.stderr
    shown = make_url(url).render_as_string(hide_password=True)
    assert f"run `xinyi db upgrade --db {shown}`" in refused.stderr or \
        f"run `xinyi db upgrade --db '{shown}'`" in refused.stderr, refused.stderr
    assert "back the database up" in refused.stderr and "Traceback" not in refused.stderr

    assert (await asyncio.to_thread(xinyi, "db", "upgrade", "--db", url)).returncode == 0
    proc = Proc(store, serve_args(store, identities[store], url), tmp_path)
    proc.start()
    try:
        await proc.wait_for_log("listening on port", timeout=30)
    finally:
        proc.kill()


@pytest.mark.parametrize("store", STORES)
async def test_a_service_refuses_a_database_of_a_revision_it_does_not_know(databases: Databases,
                                                                          identities: dict[str, Path], store: str):
    url = databases.new()
    STORES[store](url).create_schema()
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    refused = await asyncio.to_thread(xinyi, *serve_args(store, identities[store], url))
    assert refused.returncode == 2
    assert "schema revision 9999, which this version of xinyi does not know" in refused.stderr
    assert "a newer version upgraded it" in refused.stderr and "Traceback" not in refused.stderr
    upgrade = await asyncio.to_thread(xinyi, "db", "upgrade", "--db", url)
    assert upgrade.returncode == 2 and "does not know" in upgrade.stderr


async def test_a_node_refuses_a_registrys_database(databases: Databases, identities: dict[str, Path]):
    url = databases.new()
    RegistryStore(url).create_schema()
    refused = await asyncio.to_thread(xinyi, *serve_args("node", identities["node"], url))
    assert refused.returncode == 2 and "is a registry's database, not a node's: check --db" in refused.stderr


def test_replicas_starting_together_create_an_empty_database_once(databases: Databases):
    """Several registry processes starting on one empty database: one creates it, the others use it."""
    if databases.backend == "sqlite":
        pytest.skip("replicas share PostgreSQL; one process owns a SQLite file")
    url = databases.new()
    stores = [RegistryStore(url) for _ in range(3)]
    errors: list[Exception] = []

    def start(store: RegistryStore) -> None:
        try:
            store.create_schema()
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=start, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for s in stores:
        s.close()
    assert not errors, errors
    engine = open_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [migrations.head("registry")]
    engine.dispose()


# --- db status, bad --db ----------------------------------------------------------------------
async def test_db_status_says_where_a_database_stands(databases: Databases):
    url = databases.new()
    shown = make_url(url).render_as_string(hide_password=True)
    if databases.backend == "sqlite":
        open_engine(url).connect().close()  # an empty file
    empty = await asyncio.to_thread(xinyi, "db", "status", "--db", url)
    assert empty.returncode == 0 and "state     empty" in empty.stdout and "store     (none yet)" in empty.stdout

    first_release_database(url, "registry")
    old = await asyncio.to_thread(xinyi, "db", "status", "--db", url)
    assert old.returncode == 0, old.stderr
    assert "store     registry" in old.stdout and "revision  (none)" in old.stdout
    assert f"head      {migrations.head('registry')}" in old.stdout
    assert "the first release's schema, no revision recorded" in old.stdout and "xinyi db upgrade --db" in old.stdout

    assert (await asyncio.to_thread(xinyi, "db", "upgrade", "--db", url)).returncode == 0
    current = await asyncio.to_thread(xinyi, "db", "status", "--db", url, "--json")
    assert json.loads(current.stdout) == {"database": shown, "store": "registry", "revision": migrations.head("registry"),
                                          "head": migrations.head("registry"), "state": "current",
                                          "upgrade_needed": False}


async def test_an_empty_database_is_created_by_db_upgrade_only_for_a_named_store(databases: Databases):
    url = databases.new()
    if databases.backend == "sqlite":
        open_engine(url).connect().close()
    unnamed = await asyncio.to_thread(xinyi, "db", "upgrade", "--db", url)
    assert unnamed.returncode == 2 and "is empty: say which store to create there, --store node or --store registry" \
        in unnamed.stderr
    named = await asyncio.to_thread(xinyi, "db", "upgrade", "--db", url, "--store", "node")
    assert named.returncode == 0 and f"-> {migrations.FIRST_RELEASE} (first release" in named.stdout
    engine = open_engine(url)
    assert migrations.status(engine).state == migrations.CURRENT
    engine.dispose()
    wrong = await asyncio.to_thread(xinyi, "db", "status", "--db", url, "--store", "registry")
    assert wrong.returncode == 2 and "is a node's database, not a registry's: check --db" in wrong.stderr


@pytest.mark.parametrize("db, code, message", [
    ("mysql://u@h/d", 2, "only sqlite and postgresql are supported"),
    ("postgresql+psycopg://nobody@127.0.0.1:1/none", 1, "cannot use database postgresql+psycopg://nobody@127.0.0.1:1/none"),
    ("sqlite:///{tmp}/missing.db", 2, "no such file {tmp}/missing.db"),
    ("{tmp}/missing.db", 2, "no such file {tmp}/missing.db"),
    ("postgresql+psycopg://u@h1:5432,h2:port/d", 2, "is not a database URL"),  # a port that is not a number
    ("host=h1 port=5432 dbname='d", 2, "is not a libpq connection string"),
])
@pytest.mark.parametrize("cmd", ["status", "upgrade"])
def test_a_bad_db_is_one_line_naming_it(tmp_path: Path, cmd: str, db: str, code: int, message: str):
    result = xinyi("db", cmd, "--db", db.format(tmp=tmp_path))
    assert result.returncode == code, result.stderr
    assert message.format(tmp=tmp_path) in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "missing.db").exists()  # a typo creates no database


def test_a_password_in_the_urls_query_string_is_never_shown(tmp_path: Path):
    """libpq takes ?password= as well as user:password@: an error names the database, not the secret."""
    result = xinyi("db", "status", "--db", "postgresql+psycopg://nobody@127.0.0.1:1/none?password=S3cretPW")
    assert result.returncode == 1 and "cannot use database" in result.stderr
    assert "S3cretPW" not in result.stderr + result.stdout and "password=%2A%2A%2A" in result.stderr  # ***


@pytest.mark.parametrize("tamper, message", [
    ("INSERT INTO alembic_version VALUES ('0001')", "records more than one schema revision"),
    ("DELETE FROM alembic_version", "holds tables of a later schema revision"),
    ("DROP TABLE alembic_version", "holds tables of a later schema revision"),
])
@pytest.mark.parametrize("cmd", ["status", "upgrade"])
def test_a_revision_record_edited_by_hand_is_one_line_saying_restore(tmp_path: Path, cmd: str, tamper: str,
                                                                     message: str):
    """A database at head whose alembic_version was doubled or lost: not taken for the first
    release (upgrading it would fail half-way), no traceback, and the store is left as it was."""
    url = f"sqlite:///{tmp_path}/node.db"
    store = NodeStore(url)
    store.create_schema()
    store.close()
    engine = open_engine(url)
    with engine.begin() as conn:
        conn.execute(text(tamper))
    engine.dispose()
    result = xinyi("db", cmd, "--db", url)
    assert result.returncode != 0 and message in result.stderr and "restore it from a backup" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(StoreError, match=message):  # what a service says at start
        NodeStore(url).create_schema()
