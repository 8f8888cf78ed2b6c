"""The schema before versioning: client keys, usage records, stored responses.

Frozen here as ``metadata.create_all`` made it, so a store created before migrations existed is
stamped at this revision unchanged. Never edit it: change the schema in a new revision.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("models", sa.JSON, nullable=False),
        sa.Column("rpm", sa.Integer),
        sa.Column("tpm", sa.Integer),
        sa.Column("budget_usd", sa.Double),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("revoked_at", sa.Double),
    )
    live = sa.column("revoked", sa.Boolean) == sa.false()
    op.create_index(
        "mw_keys_live_name", "mw_keys", ["name"], unique=True, sqlite_where=live, postgresql_where=live
    )
    op.create_table(
        "mw_usage",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("time", sa.Double, nullable=False),
        sa.Column("key_name", sa.String(200)),
        sa.Column("public_model", sa.String(300), nullable=False),
        sa.Column("backend", sa.String(200)),
        sa.Column("upstream_model", sa.String(300)),
        sa.Column("dialect", sa.String(40), nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("cached_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("reasoning_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost", sa.Double),
        sa.Column("latency_ms", sa.Double, nullable=False),
        sa.Column("ttft_ms", sa.Double),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("stream", sa.Boolean, nullable=False),
    )
    op.create_index("mw_usage_time", "mw_usage", ["time"])
    op.create_index("mw_usage_key_time", "mw_usage", ["key_name", "time"])
    op.create_table(
        "mw_responses",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("key_name", sa.String(200)),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("previous_response_id", sa.String(200)),
        sa.Column("instructions", sa.Text),
        sa.Column("input_items", sa.JSON, nullable=False),
        sa.Column("output_items", sa.JSON, nullable=False),
        sa.Column("response", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mw_responses")
    op.drop_table("mw_usage")
    op.drop_table("mw_keys")
