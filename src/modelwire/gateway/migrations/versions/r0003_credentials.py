"""Sign-in credentials shared by replicas: the Codex route's OAuth tokens, encrypted.

``mw_credentials`` holds one row per sign-in (``codex``): the tokens sealed with AES-256-GCM under
``MODELWIRE_CREDENTIALS_KEY``, and a version that moves with every write. Only a PostgreSQL store
uses it; a SQLite store's gateway keeps the tokens in the Codex CLI's ``auth.json``.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mw_credentials",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.BigInteger, nullable=False),
        sa.Column("secret", sa.LargeBinary, nullable=False),
        sa.Column("updated_at", sa.Double, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mw_credentials")
