"""`xinyi db upgrade` and `xinyi db status`: an operator brings a node's or the registry's
database to the schema this version of xinyi needs (xinyi.migrations), and sees where it stands.
Services refuse to start on a database that is not at that schema, naming `xinyi db upgrade`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

from xinyi.cli.common import EXIT_USAGE, CommandError, print_json

STATES = {
    "empty": "empty",
    "current": "up to date",
    "behind": "behind: back it up, then run `{command}`",
    "unstamped": "the first release's schema, no revision recorded: back it up, then run `{command}`",
    "unknown": "a revision this version of xinyi does not know: a newer version upgraded it",
}


@contextlib.contextmanager
def _database(url: str, *, must_exist: bool) -> Iterator:
    """The engine for --db; a database that cannot be reached is one line naming it, not a traceback."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from xinyi.db import normalize_url, open_engine, shown_url

    engine = open_engine(url)  # a URL that is not one: StoreError, exit 2
    file = make_url(normalize_url(url)).database if engine.dialect.name == "sqlite" else None
    if must_exist and file and not Path(file).exists():
        raise CommandError(f"--db {url}: no such file {file}", EXIT_USAGE)
    try:
        yield engine
    except SQLAlchemyError as e:
        raise CommandError(f"cannot use database {shown_url(engine.url)}: {e.__class__.__name__}: {str(e).splitlines()[0]}") from None
    finally:
        engine.dispose()


def cmd_db_status(args) -> None:
    from xinyi import migrations

    with _database(args.db, must_exist=True) as engine:
        st = migrations.status(engine, args.store)
    state = STATES[st.state].format(command=st.upgrade_command)
    if args.json:
        print_json({"database": st.url, "store": st.store, "revision": st.current, "head": st.head, "state": st.state,
                    "upgrade_needed": st.state in (migrations.BEHIND, migrations.UNSTAMPED)})
        return
    print(f"database  {st.url}")
    print(f"store     {st.store or '(none yet)'}")
    print(f"revision  {st.current or '(none)'}")
    print(f"head      {st.head or '(no store named)'}")
    print(f"state     {state}")


def cmd_db_upgrade(args) -> None:
    from xinyi import migrations

    with _database(args.db, must_exist=args.store is None) as engine:
        st = migrations.upgrade(engine, args.store, progress=lambda line: print(line, flush=True))
    print(f"{st.url}: the {st.store} database is at revision {st.head}, the newest this version of xinyi knows")


def add_parser(sub) -> None:
    db = sub.add_parser("db", help="operators: upgrade a node's or the registry's database schema; show its revision")
    cmds = db.add_subparsers(dest="db_cmd", required=True)
    store_help = "whose database it is (default: told by its tables; needed for an empty database)"
    a = cmds.add_parser("upgrade", help="bring the database to this version's schema, one revision at a time "
                                        "(back it up first)")
    a.add_argument("--db", required=True, help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    a.add_argument("--store", choices=("node", "registry"), help=store_help)
    a.set_defaults(func=cmd_db_upgrade)
    a = cmds.add_parser("status", help="the database's schema revision and the newest this version knows")
    a.add_argument("--db", required=True, help="sqlite:///FILE or postgresql+psycopg://USER@HOST/DB")
    a.add_argument("--store", choices=("node", "registry"), help=store_help)
    a.add_argument("--json", action="store_true", help="print JSON")
    a.set_defaults(func=cmd_db_status)
