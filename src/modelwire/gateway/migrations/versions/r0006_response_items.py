"""Which stored response holds each output item: ``mw_response_items``.

A client may resend an earlier stored answer as ``{"type": "item_reference", "id": "msg_…"}``; the
gateway finds the response holding that item through this table. Responses stored before it are
indexed here on upgrade.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_BATCH = 500


def upgrade() -> None:
    items = op.create_table(
        "mw_response_items",
        sa.Column("item_id", sa.String(200), primary_key=True),
        sa.Column("response_id", sa.String(200), nullable=False),
    )
    op.create_index("mw_response_items_response", "mw_response_items", ["response_id"])
    _index_stored(op.get_bind(), items)


def _index_stored(conn: sa.Connection, items: sa.Table) -> None:
    responses = sa.table("mw_responses", sa.column("id"), sa.column("output_items", sa.JSON))
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    for response_id, output in conn.execute(sa.select(responses.c.id, responses.c.output_items)):
        if isinstance(output, str):  # SQLite hands back JSON text where the type is not bound
            output = json.loads(output)
        for item in output or ():
            item_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(item_id, str) and item_id and item_id not in seen:
                seen.add(item_id)
                rows.append({"item_id": item_id, "response_id": response_id})
    for at in range(0, len(rows), _BATCH):
        conn.execute(sa.insert(items), rows[at : at + _BATCH])


def downgrade() -> None:
    op.drop_index("mw_response_items_response", table_name="mw_response_items")
    op.drop_table("mw_response_items")
