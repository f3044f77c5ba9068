"""The stores' schemas and how a database moves from one to the next: Alembic migrations.

Each store has its own line of revisions, `node/` and `registry/` beside this file (0001 is the
first release); Alembic is configured here, so operators need no alembic.ini. A database records
its revision in the table alembic_version. Three callers:

- `ensure_current` (every service at start, `node ingest`, tests through create_schema): an
  empty database is created at the newest revision (head); one at head is used as it is;
  anything else is refused with a message that says what to do.
- `upgrade` (`xinyi db upgrade`): brings a database to head one revision at a time, each in a
  transaction of its own, reporting each; a database made by the first release (its tables, no
  alembic_version) is recognised and stamped 0001 first.
- `status` (`xinyi db status`): which store, which revision, which head.

On PostgreSQL each step holds a transaction-level advisory lock keyed by the database and the
schema, so registry replicas starting together on an empty database create it once.

This module may import sqlalchemy, alembic and xinyi.db only.
"""

from __future__ import annotations

import functools
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# Alembic's own lines ("setup plugin ..." as it is imported, "Context impl SQLiteImpl.") say
# nothing to an operator; `progress` does. Set before the import that logs the first of them.
logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import Script, ScriptDirectory  # noqa: E402
from alembic.util.exc import CommandError  # noqa: E402
from sqlalchemy import Connection, Engine, inspect, text  # noqa: E402

from xinyi.db import StoreError, shown_url  # noqa: E402

log = logging.getLogger("xinyi.migrations")

HERE = Path(__file__).resolve().parent
STORES = ("node", "registry")
VERSION_TABLE = "alembic_version"
FIRST_RELEASE = "0001"
# A table only that store has, since the first release: how a database says whose it is.
MARKERS = {"node": "records", "registry": "nodes"}

EMPTY, CURRENT, BEHIND, UNSTAMPED, UNKNOWN = "empty", "current", "behind", "unstamped", "unknown"


def config(store: str, connection: Connection | None = None, target_metadata=None) -> Config:
    """Alembic's configuration for one store's revisions (env.py reads the connection)."""
    if store not in STORES:
        raise StoreError(f"--store {store!r}: say node or registry")
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE))
    cfg.set_main_option("version_locations", str(HERE / store))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["connection"] = connection
    cfg.attributes["target_metadata"] = target_metadata
    return cfg


@functools.cache
def scripts(store: str) -> ScriptDirectory:
    return ScriptDirectory.from_config(config(store))


def head(store: str) -> str:
    return scripts(store).get_current_head()


@dataclass(frozen=True)
class Status:
    """Where one database stands."""

    url: str  # as shown to a person (no password)
    store: str | None  # "node" or "registry"; None for an empty database nobody named
    current: str | None  # the revision recorded in alembic_version; None when there is none
    head: str | None  # the newest revision this version of xinyi knows for the store
    state: str  # EMPTY, CURRENT, BEHIND, UNSTAMPED (the first release's tables, no revision) or UNKNOWN

    @property
    def upgrade_command(self) -> str:
        return f"xinyi db upgrade --db {shlex.quote(self.url)}"

    def refusal(self) -> str:
        """Why a service will not start on this database, and what the operator does about it."""
        what = f"the {self.store} database {self.url}"
        if self.state == UNKNOWN:
            return (f"{what} has schema revision {self.current}, which this version of xinyi does not know (its newest "
                    f"is {self.head}): a newer version upgraded it; run that version, or restore the backup taken "
                    "before the upgrade")
        have = "the first release's schema and no revision record" if self.state == UNSTAMPED \
            else f"schema revision {self.current}"
        return (f"{what} has {have}; this version of xinyi needs revision {self.head}: back the database up, then "
                f"run `{self.upgrade_command}`")


def shown(engine: Engine) -> str:
    return shown_url(engine.url)


def status(engine: Engine, store: str | None = None) -> Status:
    with engine.connect() as conn:
        return _status(conn, shown(engine), store)


def ensure_current(engine: Engine, store: str) -> None:
    """For a service about to start: create an empty database at head; refuse one that is not at head."""
    url = shown(engine)
    with engine.begin() as conn:
        _lock(conn)
        st = _status(conn, url, store)
        if st.state == EMPTY:
            command.upgrade(config(store, conn), "head")
            log.info("created the %s database %s at schema revision %s", store, url, st.head)
            return
    if st.state != CURRENT:
        raise StoreError(st.refusal())


def upgrade(engine: Engine, store: str | None = None, progress: Callable[[str], None] = log.info) -> Status:
    """Bring the database to head, one revision per transaction, telling `progress` about each;
    an empty database needs `store`. Returns where it ended (CURRENT)."""
    url = shown(engine)
    while True:
        with engine.begin() as conn:
            _lock(conn)  # a step re-reads the revision under the lock: another process may have moved it
            st = _status(conn, url, store)
            if st.state == CURRENT:
                return st
            if st.store is None:
                raise StoreError(f"{url} is empty: say which store to create there, --store node or --store registry")
            if st.state == UNKNOWN:
                raise StoreError(st.refusal())
            if st.state == UNSTAMPED:
                _check_first_release(conn, st)
                command.stamp(config(st.store, conn), FIRST_RELEASE)
                progress(f"{url}: the first release's {st.store} schema, without a revision record: stamped {FIRST_RELEASE}")
                continue
            step = _path(st.store, st.current)[0]
            progress(f"{url}: {st.current or 'empty'} -> {step.revision} ({_title(step)}) ...")
            started = time.monotonic()
            command.upgrade(config(st.store, conn), step.revision)
        progress(f"{url}: at {step.revision} ({time.monotonic() - started:.2f} s)")


def _status(conn: Connection, url: str, store: str | None) -> Status:
    tables = set(inspect(conn).get_table_names())
    found = [s for s, marker in MARKERS.items() if marker in tables]
    if len(found) > 1:
        raise StoreError(f"{url} holds both a node's and a registry's tables; give each its own database")
    if store is not None and found and found[0] != store:
        raise StoreError(f"{url} is a {found[0]}'s database, not a {store}'s: check --db")
    store = store or (found[0] if found else None)
    try:
        current = MigrationContext.configure(conn).get_current_revision() if VERSION_TABLE in tables else None
    except CommandError:  # more than one row in alembic_version: written by hand, not by xinyi
        raise StoreError(f"{url} records more than one schema revision (table {VERSION_TABLE}); it was edited by "
                         "hand: restore it from a backup") from None
    if store is None:
        if tables & _all_first_release_tables() or current is not None:
            raise StoreError(f"cannot tell whether {url} is a node's or a registry's database: say --store node or "
                             "--store registry")
        return Status(url, None, None, None, EMPTY)
    newest = head(store)
    if current is None:
        state = UNSTAMPED if tables & set(_first_release_tables(store)) else EMPTY
        later = sorted(tables - set(_first_release_tables(store)) - {VERSION_TABLE}) if state == UNSTAMPED else []
        if later:  # not the first release: a later one whose revision record was emptied or dropped
            raise StoreError(f"{url} holds tables of a later schema revision ({', '.join(later)}) but no revision "
                             f"record (table {VERSION_TABLE} was emptied or dropped): restore it from a backup")
    elif current == newest:
        state = CURRENT
    else:
        try:
            known = scripts(store).get_revision(current) is not None
        except CommandError:
            known = False
        state = BEHIND if known else UNKNOWN
    return Status(url, store, current, newest, state)


def _path(store: str, current: str | None) -> list[Script]:
    """The revisions after `current` up to head, oldest first."""
    return list(reversed(list(scripts(store).iterate_revisions(head(store), current or "base"))))


def _title(revision: Script) -> str:
    return (revision.doc or "").splitlines()[0].rstrip(".,:")


def _first_release_tables(store: str) -> tuple[str, ...]:
    return scripts(store).get_revision(FIRST_RELEASE).module.TABLES


def _all_first_release_tables() -> set[str]:
    return {t for s in STORES for t in _first_release_tables(s)}


def _check_first_release(conn: Connection, st: Status) -> None:
    """An unstamped database is taken as the first release's only when it has all of its tables."""
    missing = sorted(set(_first_release_tables(st.store)) - set(inspect(conn).get_table_names()))
    if missing:
        raise StoreError(f"{st.url} has some of a {st.store}'s tables but not {', '.join(missing)}: it was not made by "
                         "a release of xinyi; restore it from a backup")



def _lock(conn: Connection) -> None:
    """PostgreSQL: one schema change at a time per database and schema (released at commit)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended("
                          "'xinyi-migrations/' || current_database() || '/' || current_schema(), 0))"))
