"""Change counters for the key table and stored responses, and why a usage record did not succeed.

``mw_state`` holds named counters; ``keys`` moves in the same transaction as every key change, and
``responses`` as every deleted stored response, so running gateways can poll one small table four
times a second and reload their in-memory key table, or forget the responses they remember, only
when a counter moved. ``mw_usage.error`` is a short code (``shutdown``, ``client_closed``,
an upstream error code) next to the HTTP status.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    state = op.create_table(
        "mw_state",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(state, [{"name": "keys", "version": 0}, {"name": "responses", "version": 0}])
    op.add_column("mw_usage", sa.Column("error", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("mw_usage") as batch:
        batch.drop_column("error")
    op.drop_table("mw_state")
