"""Alembic's entry point for modelwire's store, run only through ``modelwire.gateway.migrations``.

The caller hands over an open connection (inside its own, locked transaction); there is no
``alembic.ini`` and no offline (SQL script) mode.
"""

from __future__ import annotations

from alembic import context

from modelwire.gateway.migrations import VERSION_TABLE
from modelwire.gateway.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run modelwire's migrations with `modelwire db upgrade`, not the alembic command")

context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
