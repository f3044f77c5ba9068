"""first release (0.1.0)

The registry's schema as the first release made it: nodes and their claims, institutions, keys,
witness state, consent events and deliveries, delegations, models, revocations, and the tables
it shares with the nodes.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

import sqlalchemy as sa
from alembic import op

from xinyi.migrations.first_release import SEQ, SHARED_TABLES, create_shared_tables, refuse_downgrade

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# What a registry's database made by the first release holds (xinyi.migrations checks an unstamped one).
TABLES = SHARED_TABLES + ("nodes", "holding_claims", "institutions", "key_history", "witnessed_logs", "consent_events",
                          "consent_heads", "consent_node_results", "consent_deliveries", "delegations", "models",
                          "authorities", "revocation_lists", "registry_meta")


def upgrade() -> None:
    create_shared_tables()
    op.create_table(
        "nodes",
        sa.Column("node_id", sa.String(6), primary_key=True),
        sa.Column("endpoint", sa.String(255), nullable=False),
        sa.Column("signing_cert", sa.LargeBinary(), nullable=False),
        sa.Column("registered_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "holding_claims",
        sa.Column("node_id", sa.String(6), primary_key=True),
        sa.Column("uscc", sa.String(18), primary_key=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("claimed_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("decided_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "institutions",
        sa.Column("institution_id", sa.String(18), primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
        sa.Column("licence", sa.String(64), nullable=False),
        sa.Column("registered_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "key_history",
        sa.Column("principal", sa.String(64), primary_key=True),
        sa.Column("valid_from_ms", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("signing_cert", sa.LargeBinary(), nullable=False),
        sa.Column("valid_until_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "witnessed_logs",
        sa.Column("origin", sa.String(64), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "consent_events",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("consent_id", sa.String(64), nullable=False),
    )
    op.create_table(
        "consent_heads",
        sa.Column("consent_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False, unique=True),
    )
    op.create_table(
        "consent_node_results",
        sa.Column("consent_id", sa.String(64), primary_key=True),
        sa.Column("request_hash", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(6), primary_key=True),
        sa.Column("outcome", sa.Integer(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "consent_deliveries",
        sa.Column("consent_id", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(6), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ack_seq", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_consent_deliveries_waiting", "consent_deliveries", ["node_id", "delivered"])
    op.create_table(
        "delegations",
        sa.Column("uscc", sa.String(18), primary_key=True),
        sa.Column("representative", sa.String(64), primary_key=True),
        sa.Column("valid_until_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("issued_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("sha256", sa.LargeBinary(32), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("submitted_by", sa.String(64), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("onnx", sa.LargeBinary(), nullable=False),
        sa.Column("approval", sa.LargeBinary(), nullable=True),
        sa.Column("submitted_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "authorities",
        sa.Column("subject_sha256", sa.LargeBinary(32), primary_key=True),
        sa.Column("certificate", sa.LargeBinary(), nullable=False),
        sa.Column("published_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "revocation_lists",
        sa.Column("issuer_sha256", sa.LargeBinary(32), primary_key=True),
        sa.Column("crl_number", sa.BigInteger(), nullable=False),
        sa.Column("crl", sa.LargeBinary(), nullable=False),
        sa.Column("published_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "registry_meta",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    refuse_downgrade()
