"""Replica state: the directory each version was signed as, node addresses kept in the store,
and the counters replicas share (the directory version, the consent event sequence).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_addresses",
        sa.Column("node_id", sa.String(length=6), nullable=False),
        sa.Column("endpoint", sa.String(length=255), nullable=False),
        sa.Column("registered_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("previous_endpoint", sa.String(length=255), nullable=False),
        sa.Column("changed_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("conflict_endpoints", sa.Text(), nullable=False),
        sa.Column("conflict_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
    )
    op.create_table(
        "signed_directory",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("signed_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    # The shared counters' rows (RegistryStore.create_schema makes them too, whichever replica
    # starts first): the consent event counter carries on after the events already stored.
    op.execute("INSERT INTO registry_meta (key, value) SELECT 'consent_event_seq', COALESCE(MAX(seq), 0) "
               "FROM consent_events WHERE NOT EXISTS (SELECT 1 FROM registry_meta WHERE key = 'consent_event_seq')")
    op.execute("INSERT INTO registry_meta (key, value) SELECT 'directory_version', 0 "
               "WHERE NOT EXISTS (SELECT 1 FROM registry_meta WHERE key = 'directory_version')")


def downgrade() -> None:
    op.drop_table("signed_directory")
    op.drop_table("node_addresses")
