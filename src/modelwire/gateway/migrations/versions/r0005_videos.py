"""Video jobs and who holds them: ``mw_videos``.

A video is made asynchronously on one backend; its id is all a client has to poll and download it,
and the next request may reach any replica. Each row names the backend (and which of its keys)
that holds the job, and the client key that created it, which alone may see or delete it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_videos",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("key_name", sa.String(200)),
        sa.Column("backend", sa.String(200), nullable=False),
        sa.Column("upstream_key", sa.Integer, nullable=False),
        sa.Column("model", sa.String(300), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
    )
    op.create_index("mw_videos_key_time", "mw_videos", ["key_name", "created_at"])


def downgrade() -> None:
    op.drop_index("mw_videos_key_time", table_name="mw_videos")
    op.drop_table("mw_videos")
