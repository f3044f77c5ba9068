"""Write a new schema revision for the node's or the registry's store (`make migration`).

    python scripts/migration.py node "alert cursors per bank"

Alembic compares the tables the code defines now (`code_metadata`) with a scratch SQLite
database brought to the current head, and writes what differs as the next revision,
xinyi/migrations/<store>/NNNN_<message>.py, in batch mode (SQLite alters a table by copying it).
Read it before committing: Alembic does not see renames (it writes a drop and an add: rewrite
them as op.alter_column / batch.alter_column) nor data that must move, and a new NOT NULL column
on a table with rows needs a server_default. tests/test_migrations.py then checks that the new
head equals the code on SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from sqlalchemy import MetaData

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from xinyi import migrations  # noqa: E402 - after the path above, as in the other scripts
from xinyi.db import open_engine  # noqa: E402


def code_metadata(store: str) -> MetaData:
    """Every table the store's code uses, including those node/alerts.py and node/stats.py add."""
    if store == "node":
        from node.alerts import register_tables as alert_tables
        from node.stats import register_tables as stats_tables
        from node.store import NodeStore

        node = NodeStore("sqlite://")
        alert_tables(node)
        stats_tables(node)
        node.close()
        return node.metadata
    from registry.store import RegistryStore

    registry = RegistryStore("sqlite://")
    registry.close()
    return registry.metadata


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store", choices=migrations.STORES)
    p.add_argument("message", help="what the revision does, in a few words")
    p.add_argument("--empty", action="store_true", help="write a revision even when the tables equal head (to move data)")
    args = p.parse_args()
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    current = migrations.head(args.store)
    rev_id = f"{int(current) + 1:04d}"
    metadata = code_metadata(args.store)
    with tempfile.TemporaryDirectory() as scratch:
        engine = open_engine(f"sqlite:///{scratch}/head.db")
        migrations.upgrade(engine, args.store, progress=lambda line: None)
        with engine.begin() as conn:
            if not args.empty and not compare_metadata(MigrationContext.configure(conn), metadata):
                sys.exit(f"the code's {args.store} tables equal revision {current}: nothing to write "
                         "(--empty writes a revision that only moves data)")
            script = command.revision(migrations.config(args.store, conn, metadata), args.message,
                                      autogenerate=not args.empty, rev_id=rev_id)
        engine.dispose()
    print(f"wrote {script.path} ({current} -> {rev_id}); review it, then run tests/test_migrations.py")


if __name__ == "__main__":
    main()
