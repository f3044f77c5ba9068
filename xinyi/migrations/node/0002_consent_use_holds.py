"""Consent use holds: a use taken but not yet answered, counted once by every process that
shares the database (xinyi.query.SharedUseLedger).

Revision ID: 0002
Revises: 0001
"""

from xinyi.migrations.shared_changes import create_use_holds, drop_use_holds

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_use_holds()


def downgrade() -> None:
    drop_use_holds()
