"""consent_use_holds, which both stores gained in the same revision (node 0002, registry 0003):
a consent use taken but not yet answered, so that processes sharing one database count a fetch
limit once. Frozen once released, like first_release.py.
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
