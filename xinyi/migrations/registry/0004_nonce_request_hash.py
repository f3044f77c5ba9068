"""The query that took each nonce (seen_nonces.request_hash): the same query sent again to
another process is told it was received before, not called a replay of someone else's.

Revision ID: 0004
Revises: 0003
"""

from xinyi.migrations.shared_changes import add_nonce_request_hash, drop_nonce_request_hash

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_nonce_request_hash()


def downgrade() -> None:
    drop_nonce_request_hash()
