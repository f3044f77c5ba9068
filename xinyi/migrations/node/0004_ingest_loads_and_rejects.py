"""Each load of a department's file (ingest_loads: file name, time, lines read, accepted and
rejected) and where its bad lines are (ingest_rejects: line number, field, reason without the
line's values), for the node operator's data-quality report (node.quality).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ingest_loads",
        sa.Column("load_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("category", sa.String(length=32), nullable=False),
        sa.Column("started_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("finished_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("lines_read", sa.BigInteger(), nullable=False),
        sa.Column("inserted", sa.BigInteger(), nullable=False),
        sa.Column("duplicates", sa.BigInteger(), nullable=False),
        sa.Column("rejected", sa.BigInteger(), nullable=False),
        sa.Column("failure", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("load_id"),
    )
    op.create_table(
        "ingest_rejects",
        sa.Column("load_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("line_no", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("field", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("load_id", "line_no"),
    )


def downgrade() -> None:
    op.drop_table("ingest_rejects")
    op.drop_table("ingest_loads")
