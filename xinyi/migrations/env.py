"""Alembic's environment for both stores: xinyi.migrations runs it on a connection it opened
(config.attributes["connection"]), one revision per transaction. There is no alembic.ini: the
configuration is built in xinyi/migrations/__init__.py."""

from alembic import context

config = context.config
context.configure(
    connection=config.attributes["connection"],
    # Only for autogenerate (scripts/migration.py): the tables the code defines today.
    target_metadata=config.attributes.get("target_metadata"),
    # SQLite alters a table by copying it: every op in a revision runs in batch mode there.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
