"""Schema migrations of the gateway's store, run by Alembic from code (no ``alembic.ini``).

Opening a :class:`~modelwire.gateway.store.Store` reads the revision first (:func:`fast_revision`).
Its common case — a store already at this code's head — costs that one read of the one-row version
table, in plain SQL, and imports neither SQLAlchemy nor Alembic; only a store that needs work pays
for their import and machinery (:func:`upgrade`).

The revisions this code knows are listed here as well as in ``versions/`` so the fast path can
recognise them (and refuse a newer store) without loading the scripts; a test keeps the two equal.

* A fresh database is built by running every revision from the base, so a new store and an
  upgraded one come from the same scripts.
* A database made by ``metadata.create_all`` before versioning existed (the modelwire tables, no
  version table) is stamped at revision ``0001`` — exactly that schema — and upgraded from there.
* A store at a revision this code does not know was upgraded by a newer modelwire: it is refused
  with :class:`SchemaError` rather than run by code that does not understand its tables.

Replicas opening one database together must not race: the whole check-and-migrate runs in one
transaction holding a lock — ``pg_advisory_xact_lock`` on PostgreSQL (keyed by the connection's
``search_path``, so per-schema test stores do not wait on each other), ``BEGIN IMMEDIATE`` on
SQLite. Both engines have transactional DDL, so a failed migration leaves the store as it was.

The version table is ``mw_alembic_version``, not Alembic's default ``alembic_version``: like every
modelwire table it is prefixed, so a store sharing a database with another Alembic-managed
application neither reads that application's revision nor overwrites it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..database import Database, StoreError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import Connection, Engine

VERSION_TABLE = "mw_alembic_version"
# Oldest first; keep in step with versions/ (tests compare them).
REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006")
HEAD = REVISIONS[-1]
BASELINE = "0001"  # the schema ``metadata.create_all`` made before versioning
BASELINE_TABLES = frozenset({"mw_keys", "mw_usage", "mw_responses"})
# pg_advisory_xact_lock(int4, int4): a fixed modelwire class id, then the search_path's hash.
LOCK_CLASS = 0x6D770001
_READ_VERSION = f"SELECT version_num FROM {VERSION_TABLE}"
# Alembic runs env.py through a module-global context: two threads of one process must not run it
# at once, even on different stores (whose database locks would not exclude each other).
_ALEMBIC = threading.Lock()


class SchemaError(Exception):
    """The store's schema cannot be used by this modelwire (newer, or not a modelwire schema)."""


@dataclass(frozen=True, slots=True)
class Upgrade:
    """What :func:`upgrade` did: from which revision (None: none, see ``legacy``) to which."""

    before: str | None
    after: str
    legacy: bool = False  # the store predates versioning (tables present, no version table)

    @property
    def changed(self) -> bool:
        return self.before != self.after

    def describe(self) -> str:
        if not self.changed:
            return f"already at head ({self.after})"
        return f"upgraded from {self.origin} to {self.after}"

    @property
    def origin(self) -> str:
        if self.before is not None:
            return f"revision {self.before}"
        return "an unversioned store (before schema versioning)" if self.legacy else "an empty database"


def fast_revision(db: Database) -> str | None:
    """The stored revision in one query; None when there is no version row (or no table).

    A missing table is an error on both engines; the caller then takes the slow path, which looks
    properly (and re-raises a real connection problem).
    """
    try:
        rows = db.rows(_READ_VERSION)
    except StoreError:
        return None
    return str(rows[0][0]) if len(rows) == 1 else None


def upgrade(engine: Engine, *, url: str, schema: str | None = None) -> Upgrade:
    """Create or upgrade the store's schema to head under the migration lock; see the module doc."""
    from sqlalchemy import text

    with engine.begin() as conn:
        _lock(conn)
        if schema is not None:
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
        before, legacy = read_state(conn)
        if before is not None and before not in REVISIONS:
            raise newer_error(before, url)
        if before == HEAD:
            return Upgrade(before, HEAD)
        _run_alembic(conn, stamp=BASELINE if legacy else None)
    return Upgrade(before, HEAD, legacy=legacy)


def read_state(conn: Connection) -> tuple[str | None, bool]:
    """(stored revision or None, whether the modelwire tables predate versioning).

    Uses the catalog rather than a failing query, which would abort a PostgreSQL transaction.
    """
    from sqlalchemy import inspect

    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        rows = conn.exec_driver_sql(_READ_VERSION).all()
        if len(rows) == 1:
            return str(rows[0][0]), False
    present = BASELINE_TABLES & tables
    if present and present != BASELINE_TABLES:
        missing = ", ".join(sorted(BASELINE_TABLES - present))
        raise SchemaError(
            f"the store has some modelwire tables but not {missing}, and no {VERSION_TABLE}: "
            "it is not a schema modelwire made; point the store at another database or schema"
        )
    return None, bool(present)


def newer_error(revision: str, url: str) -> SchemaError:
    return SchemaError(
        f"the store {url} is at schema revision {revision}, which this modelwire does not know "
        f"(the newest it knows is {HEAD}): a newer modelwire upgraded it. Upgrade modelwire "
        "(pip install -U modelwire) to use this store."
    )


def _lock(conn: Connection) -> None:
    """Serialise migrations of one store across processes, until this transaction ends."""
    from sqlalchemy import text

    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:cls, hashtext(current_setting('search_path')))"),
            {"cls": LOCK_CLASS},
        )
    elif conn.dialect.name == "sqlite":
        # pysqlite opens no transaction before DDL by itself; take the write lock now, so two
        # processes cannot both find the store empty and both build it.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _run_alembic(conn: Connection, *, stamp: str | None) -> None:
    from alembic import command

    config = alembic_config(conn)
    with _ALEMBIC:
        if stamp is not None:
            command.stamp(config, stamp)
        command.upgrade(config, "head")


def alembic_config(conn: Connection) -> Config:
    """Alembic's configuration from code: the scripts beside this module, migrating ``conn``.

    ``env.py`` runs on ``conn`` inside the caller's transaction, which Alembic then leaves alone.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    config.attributes["connection"] = conn
    return config


def migration_context(conn: Connection, **opts: Any) -> MigrationContext:
    """A context on this store's version table (for ``compare_metadata`` and inspection)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE, **opts})


def script_revisions() -> list[str]:
    """The revisions in ``versions/``, oldest first (what :data:`REVISIONS` must equal)."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory(str(Path(__file__).parent))
    return [s.revision for s in reversed(list(script.walk_revisions()))]


__all__ = [
    "HEAD",
    "REVISIONS",
    "VERSION_TABLE",
    "SchemaError",
    "Upgrade",
    "alembic_config",
    "fast_revision",
    "migration_context",
    "read_state",
    "upgrade",
]
