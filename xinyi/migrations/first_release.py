"""The tables both stores had in the first release (0.1.0), for their revisions 0001.

Frozen: this is what those databases hold, whatever the code defines later. Never edit it; a
change to these tables is a new revision of each store (see README, "Upgrading").
"""

import sqlalchemy as sa
from alembic import op

# An integer key that numbers itself: INTEGER PRIMARY KEY on SQLite, BIGSERIAL on PostgreSQL.
SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

SHARED_TABLES = ("audit_log", "audit_checkpoints", "consents", "consent_changes", "consent_uses", "seen_nonces")


def create_shared_tables() -> None:
    op.create_table(
        "audit_log",
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("leaf_input", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("caller_id", sa.String(64), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("uscc", sa.String(18), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_log_leaf_hash", "audit_log", ["leaf_hash"])
    op.create_index("ix_audit_log_request_hash", "audit_log", ["request_hash"])
    op.create_index("ix_audit_log_uscc_idx", "audit_log", ["uscc", "idx"])
    op.create_table(
        "audit_checkpoints",
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "consents",
        sa.Column("consent_id", sa.String(64), primary_key=True),
        sa.Column("uscc", sa.String(18), nullable=False),
        sa.Column("grantee", sa.String(18), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("categories", sa.Text(), nullable=False),
        sa.Column("valid_from_ms", sa.BigInteger(), nullable=False),
        sa.Column("valid_until_ms", sa.BigInteger(), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("detail_level", sa.String(8), nullable=False),
        sa.Column("history_months", sa.Integer(), nullable=False),
        sa.Column("fetch_type", sa.String(8), nullable=False),
        sa.Column("max_fetches", sa.Integer(), nullable=False),
        sa.Column("fetch_period", sa.String(8), nullable=False),
        sa.Column("signed_by", sa.String(96), nullable=False),
        sa.Column("co_grantee", sa.String(18), nullable=False),
        sa.Column("delegation", sa.LargeBinary(), nullable=True),
        sa.Column("state", sa.String(8), nullable=False),
        sa.Column("state_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_consents_uscc", "consents", ["uscc"])
    op.create_table(
        "consent_changes",
        sa.Column("consent_id", sa.String(64), primary_key=True),
        sa.Column("at_ms", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
    )
    op.create_table(
        "consent_uses",
        sa.Column("consent_id", sa.String(64), primary_key=True),
        sa.Column("request_hash", sa.String(64), primary_key=True),
        sa.Column("asker", sa.String(64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "seen_nonces",
        sa.Column("signer", sa.String(64), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(32), primary_key=True),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_seen_nonces_expires_at_ms", "seen_nonces", ["expires_at_ms"])


def refuse_downgrade() -> None:
    raise NotImplementedError("the first release is the oldest schema; to go back, restore the backup taken before upgrading")
