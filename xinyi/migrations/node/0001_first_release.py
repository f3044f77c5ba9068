"""first release (0.1.0)

The node's schema as the first release made it: records, disputes, alerts, privacy budgets,
and the tables it shares with the registry.

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

# What a node's database made by the first release holds (xinyi.migrations checks an unstamped one).
TABLES = SHARED_TABLES + ("records", "disputes", "node_state", "alert_subscriptions", "alerts", "privacy_budget")


def upgrade() -> None:
    create_shared_tables()
    op.create_table(
        "records",
        sa.Column("id", SEQ, primary_key=True, autoincrement=True),
        sa.Column("record_key", sa.String(64), nullable=False, unique=True),
        sa.Column("uscc", sa.String(18), nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("as_of", sa.String(10), nullable=False),
        sa.Column("source", sa.String(128), nullable=False),
        sa.Column("fields_json", sa.Text(), nullable=False),
        sa.Column("ingested_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("superseded_by", sa.String(64), nullable=True),
    )
    op.create_index("ix_records_uscc_category", "records", ["uscc", "category"])
    op.create_table(
        "disputes",
        sa.Column("dispute_id", sa.String(32), primary_key=True),
        sa.Column("record_key", sa.String(64), nullable=False),
        sa.Column("uscc", sa.String(18), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("filed_by", sa.String(96), nullable=False),
        sa.Column("filed_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("due_ms", sa.BigInteger(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("resolution", sa.Text(), nullable=False),
        sa.Column("resolved_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("corrected_key", sa.String(64), nullable=True),
    )
    op.create_index("ix_disputes_record_key", "disputes", ["record_key"])
    op.create_index("ix_disputes_uscc", "disputes", ["uscc"])
    op.create_table(
        "node_state",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "alert_subscriptions",
        sa.Column("bank", sa.String(18), primary_key=True),
        sa.Column("uscc", sa.String(18), primary_key=True),
        sa.Column("consent_id", sa.String(32), primary_key=True),
        sa.Column("since_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_alert_subscriptions_uscc", "alert_subscriptions", ["uscc"])
    op.create_table(
        "alerts",
        sa.Column("seq", SEQ, primary_key=True, autoincrement=True),
        sa.Column("uscc", sa.String(18), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("summary", sa.String(200), nullable=False),
        sa.Column("record_key", sa.String(64), nullable=False),
        sa.Column("detected_at_ms", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("record_key", "kind", name="uq_alerts_record_kind"),
        sqlite_autoincrement=True,  # a seq is never reused after pruning (a bank's cursor is past it)
    )
    op.create_index("ix_alerts_detected_at_ms", "alerts", ["detected_at_ms"])
    op.create_index("ix_alerts_uscc_seq", "alerts", ["uscc", "seq"])
    op.create_table(
        "privacy_budget",
        sa.Column("requester", sa.String(128), primary_key=True),
        sa.Column("year", sa.Integer(), primary_key=True),
        sa.Column("spent", sa.Double(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    refuse_downgrade()
