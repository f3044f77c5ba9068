"""Consent use holds: a use taken but not yet answered, counted once by every process that
shares the database (xinyi.query.SharedUseLedger).

Revision ID: 0003
Revises: 0002
"""

from xinyi.migrations.shared_changes import create_use_holds, drop_use_holds

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_use_holds()


def downgrade() -> None:
    drop_use_holds()
