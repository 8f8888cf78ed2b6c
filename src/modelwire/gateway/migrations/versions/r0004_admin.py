"""Admin keys, and how many upstream attempts each request made.

``mw_keys.admin`` marks an operator's key: it opens the admin API (``/admin/v1``) and the dashboard
(``/ui``) and is refused by every proxy route, as an ordinary key is refused by the admin ones.
``mw_usage.hops`` is the number of upstream attempts a request made (retries and failovers
included), for the request log. ``mw_usage_request_id`` finds one request's rows. ``mw_sessions``
holds dashboard sign-ins (hashed ids), so any replica can serve a signed-in operator.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("mw_keys", sa.Column("admin", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("mw_usage", sa.Column("hops", sa.Integer, nullable=False, server_default="0"))
    op.create_index("mw_usage_request_id", "mw_usage", ["request_id"])
    op.create_table(
        "mw_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mw_sessions")
    op.drop_index("mw_usage_request_id", "mw_usage")
    with op.batch_alter_table("mw_usage") as batch:
        batch.drop_column("hops")
    with op.batch_alter_table("mw_keys") as batch:
        batch.drop_column("admin")
