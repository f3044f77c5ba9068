"""Changes to the tables both stores share, made once here for the revision of each store that
makes them. Frozen once released, like first_release.py.

- node 0002, registry 0003: consent_use_holds, a consent use taken but not yet answered, so
  that processes sharing one database count a fetch limit once;
- node 0003, registry 0004: seen_nonces.request_hash, the query that took a nonce, so that the
  same query sent again to another process is told it was received, not called a replay.
"""

import sqlalchemy as sa
from alembic import op


def create_use_holds() -> None:
    op.create_table(
        "consent_use_holds",
        sa.Column("consent_id", sa.String(length=64), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("asker", sa.String(length=64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("consent_id", "request_hash"),
    )


def drop_use_holds() -> None:
    op.drop_table("consent_use_holds")


def add_nonce_request_hash() -> None:
    with op.batch_alter_table("seen_nonces") as batch:
        batch.add_column(sa.Column("request_hash", sa.String(length=64), nullable=False, server_default=sa.text("''")))


def drop_nonce_request_hash() -> None:
    with op.batch_alter_table("seen_nonces") as batch:
        batch.drop_column("request_hash")
