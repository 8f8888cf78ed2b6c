"""Schema migrations on real engines: a SQLite file and the local PostgreSQL (a schema per test).

The store built before versioning is frozen below exactly as ``metadata.create_all`` made it, so
upgrading "today's" databases stays tested after ``store.metadata`` moves on.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from alembic import command
from alembic.autogenerate import compare_metadata
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    false,
    inspect,
    select,
    text,
)

from modelwire.gateway import migrations
from modelwire.gateway.database import Database as DatabaseLink
from modelwire.gateway.migrations import HEAD, REVISIONS, VERSION_TABLE, SchemaError
from modelwire.gateway.store import Store, StoredResponse, open_engine, upgrade_schema
from modelwire.gateway.tables import metadata

from .gateway_fixtures import MODELWIRE
from .services import SHARED_POSTGRES_URL as PG_URL
from .services import drop_schema

SECRET = "mw-legacy-secret-0123456789abcdefghijklmnopqrstuv"
T0 = 1_700_000_000.0

# ----------------------------------------------------------------------------------------------
# The schema before versioning (revision 0001), frozen
# ----------------------------------------------------------------------------------------------

legacy = MetaData()
legacy_keys = Table(
    "mw_keys",
    legacy,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False),
    Column("models", JSON, nullable=False),
    Column("rpm", Integer),
    Column("tpm", Integer),
    Column("budget_usd", Double),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("revoked_at", Double),
)
Index(
    "mw_keys_live_name",
    legacy_keys.c.name,
    unique=True,
    sqlite_where=legacy_keys.c.revoked == false(),
    postgresql_where=legacy_keys.c.revoked == false(),
)
legacy_usage = Table(
    "mw_usage",
    legacy,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("time", Double, nullable=False),
    Column("key_name", String(200)),
    Column("public_model", String(300), nullable=False),
    Column("backend", String(200)),
    Column("upstream_model", String(300)),
    Column("dialect", String(40), nullable=False),
    Column("input_tokens", BigInteger, nullable=False, default=0),
    Column("cached_tokens", BigInteger, nullable=False, default=0),
    Column("output_tokens", BigInteger, nullable=False, default=0),
    Column("reasoning_tokens", BigInteger, nullable=False, default=0),
    Column("cost", Double),
    Column("latency_ms", Double, nullable=False, default=0.0),
    Column("ttft_ms", Double),
    Column("status", Integer, nullable=False, default=200),
    Column("request_id", String(200), nullable=False, default=""),
    Column("stream", Boolean, nullable=False, default=False),
)
Index("mw_usage_time", legacy_usage.c.time)
Index("mw_usage_key_time", legacy_usage.c.key_name, legacy_usage.c.time)
legacy_responses = Table(
    "mw_responses",
    legacy,
    Column("id", String(200), primary_key=True),
    Column("key_name", String(200)),
    Column("model", String(300), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("previous_response_id", String(200)),
    Column("instructions", Text),
    Column("input_items", JSON, nullable=False),
    Column("output_items", JSON, nullable=False),
    Column("response", JSON, nullable=False),
)

LEGACY_KEY = {
    "id": "key_0123456789abcdef",
    "name": "veteran",
    "key_hash": hashlib.sha256(SECRET.encode()).hexdigest(),
    "prefix": SECRET[:8],
    "models": ["gpt-5*"],
    "rpm": 60,
    "tpm": None,
    "budget_usd": 5.0,
    "created_at": T0,
    "expires_at": None,
    "revoked": False,
    "revoked_at": None,
}
LEGACY_USAGE = [
    {
        "time": T0 + i,
        "key_name": "veteran",
        "public_model": "gpt-5.1",
        "backend": "openai",
        "upstream_model": "gpt-5.1",
        "dialect": "openai_chat",
        "input_tokens": 10 * i,
        "cached_tokens": 0,
        "output_tokens": 5,
        "reasoning_tokens": 0,
        "cost": 0.001,
        "latency_ms": 100.0 + i,
        "ttft_ms": None,
        "status": 200 if i else 502,
        "request_id": f"req_{i}",
        "stream": bool(i % 2),
    }
    for i in range(3)
]
LEGACY_RESPONSE = StoredResponse(
    id="resp_legacy",
    key_name="veteran",
    model="gpt-5.1",
    created_at=T0,
    previous_response_id=None,
    input_items=[{"type": "message", "role": "user", "content": "héllo"}],
    output_items=[
        {"id": "msg_legacy", "type": "message", "content": [{"type": "output_text", "text": "hi"}]}
    ],
    response={"id": "resp_legacy", "status": "completed"},
    instructions="Be brief.",
)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@dataclass
class Database:
    """An empty database (a SQLite file, or a fresh PostgreSQL schema) and how to open it."""

    url: str
    schema: str | None

    def store(self) -> Store:
        return Store(self.url, schema=self.schema)

    def engine(self) -> Engine:
        """A plain engine on the same database and schema, outside the Store under test."""
        return open_engine(self.url, schema=self.schema)

    def execute(self, sql: str, **params: Any) -> list[Any]:
        engine = self.engine()
        try:
            with engine.begin() as conn:
                result = conn.execute(text(sql), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        yield Database(f"sqlite:///{tmp_path}/state.db", None)
        return
    schema = f"mw_mig_{uuid.uuid4().hex[:16]}"
    try:
        yield Database(PG_URL, schema)
    finally:
        drop_schema(schema)


@pytest.fixture
def legacy_database(database: Database) -> Database:
    """A store as modelwire made it before versioning, with a key, usage and a stored response."""
    create_legacy_store(database.engine(), database.schema)
    return database


def create_legacy_store(engine: Engine, schema: str | None) -> None:
    """``create_all`` of the frozen schema, then one key, three usage rows and a stored response."""
    response = {k: getattr(LEGACY_RESPONSE, k) for k in legacy_responses.c.keys()}  # noqa: SIM118 - column names
    try:
        with engine.begin() as conn:
            if schema is not None:
                conn.execute(text(f"CREATE SCHEMA {schema}"))
            legacy.create_all(conn)
            conn.execute(legacy_keys.insert(), [LEGACY_KEY])
            conn.execute(legacy_usage.insert(), LEGACY_USAGE)
            conn.execute(legacy_responses.insert(), [response])
    finally:
        engine.dispose()


def stored_revision(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return [row[0] for row in conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))]


def schema_differences(store: Store) -> list[Any]:
    with store.engine.connect() as conn:
        return list(compare_metadata(migrations.migration_context(conn), metadata))


# ----------------------------------------------------------------------------------------------
# Revisions
# ----------------------------------------------------------------------------------------------


def test_known_revisions_are_the_scripts() -> None:
    """The fast path's list must be the scripts' chain, or it would refuse (or skip) a revision."""
    assert migrations.script_revisions() == list(REVISIONS)
    assert HEAD == REVISIONS[-1] == "0006"


# ----------------------------------------------------------------------------------------------
# Fresh and unversioned stores
# ----------------------------------------------------------------------------------------------


def test_fresh_database_is_created_at_head(database: Database) -> None:
    with database.store() as store:
        assert stored_revision(store) == [HEAD]
        assert store.keys_version() == 0
        assert schema_differences(store) == []


def test_unversioned_store_is_upgraded_with_its_data(legacy_database: Database) -> None:
    with legacy_database.store() as store:
        assert stored_revision(store) == [HEAD]
        found = store.find_key(SECRET)
        assert found is not None
        assert (found.id, found.name, found.models, found.rpm, found.budget_usd) == (
            LEGACY_KEY["id"],
            "veteran",
            ("gpt-5*",),
            60,
            5.0,
        )
        assert store.keys_version() == 0
        assert [h for h, _ in store.live_keys()] == [LEGACY_KEY["key_hash"]]
        (row,) = store.usage_summary(since=0, by="key")
        assert (row.group, row.requests, row.errors, row.input_tokens) == ("veteran", 3, 1, 30)
        assert store.spent_usd("veteran") == pytest.approx(0.003)
        assert store.get_response("resp_legacy") == LEGACY_RESPONSE
        assert store.get_response_holding("msg_legacy") == LEGACY_RESPONSE  # indexed by 0006
        with store.engine.connect() as conn:
            columns = {c["name"]: c for c in inspect(conn).get_columns("mw_usage")}
            errors = conn.execute(text("SELECT error FROM mw_usage")).scalars().all()
        assert columns["error"]["nullable"] and errors == [None, None, None]
        assert schema_differences(store) == []
        _, record = store.create_key(name="newcomer")  # the upgraded store takes new keys
        assert store.keys_version() == 1 and store.find_key(SECRET) is not None
        assert record.name in {k.name for k in store.list_keys()}


def test_upgrade_reports_where_it_started(legacy_database: Database) -> None:
    upgrade = upgrade_schema(legacy_database.url, schema=legacy_database.schema)
    assert (upgrade.before, upgrade.after, upgrade.legacy) == (None, HEAD, True)
    assert upgrade.describe() == f"upgraded from an unversioned store (before schema versioning) to {HEAD}"
    again = upgrade_schema(legacy_database.url, schema=legacy_database.schema)
    assert not again.changed and again.describe() == f"already at head ({HEAD})"


def test_older_revision_is_upgraded(database: Database) -> None:
    """A store at 0001 (as Alembic left it) is brought to head on open; the down path works too."""
    database.store().close()
    engine = database.engine()
    try:
        with engine.begin() as conn:
            command.downgrade(migrations.alembic_config(conn), "0001")
        with engine.connect() as conn:
            assert "mw_state" not in inspect(conn).get_table_names()
            assert "error" not in {c["name"] for c in inspect(conn).get_columns("mw_usage")}
    finally:
        engine.dispose()
    with database.store() as store:
        assert stored_revision(store) == [HEAD]
        assert store.keys_version() == 0 and schema_differences(store) == []


def test_a_failed_upgrade_leaves_the_store_as_it_was(legacy_database: Database) -> None:
    """Revision 0002 fails on a stray ``mw_state``; the stamp at 0001 before it is rolled back too."""
    legacy_database.execute("CREATE TABLE mw_state (stray INTEGER)")
    with pytest.raises(Exception, match="mw_state"):
        legacy_database.store()
    engine = legacy_database.engine()
    try:
        with engine.connect() as conn:
            assert VERSION_TABLE not in inspect(conn).get_table_names()
            assert "error" not in {c["name"] for c in inspect(conn).get_columns("mw_usage")}
    finally:
        engine.dispose()


def test_partial_unversioned_schema_is_refused(database: Database) -> None:
    engine = database.engine()
    try:
        with engine.begin() as conn:
            if database.schema is not None:
                conn.execute(text(f"CREATE SCHEMA {database.schema}"))
            legacy_keys.create(conn)
    finally:
        engine.dispose()
    with pytest.raises(SchemaError, match="mw_responses, mw_usage"):
        database.store()


# ----------------------------------------------------------------------------------------------
# A store newer than this code
# ----------------------------------------------------------------------------------------------


def stamp_future(database: Database) -> None:
    database.store().close()
    database.execute(f"UPDATE {VERSION_TABLE} SET version_num = '9999'")


def test_newer_store_is_refused(database: Database) -> None:
    stamp_future(database)
    with pytest.raises(SchemaError) as info:
        database.store()
    message = str(info.value)
    assert "revision 9999" in message and f"newest it knows is {HEAD}" in message
    assert "Upgrade modelwire" in message
    assert database.execute(f"SELECT version_num FROM {VERSION_TABLE}") == [("9999",)]  # untouched


def test_db_upgrade_refuses_a_newer_store(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path}/state.db", None)
    stamp_future(database)
    config = tmp_path / "modelwire.yaml"
    config.write_text(yaml.safe_dump({"store": "sqlite:///state.db"}))
    result = subprocess.run(
        [MODELWIRE, "db", "upgrade", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1, result
    said = " ".join(result.stderr.split())
    assert "revision 9999" in said and f"newest it knows is {HEAD}" in said and "Upgrade modelwire" in said


# ----------------------------------------------------------------------------------------------
# Replicas and the fast path
# ----------------------------------------------------------------------------------------------


def open_together(database: Database, count: int = 2) -> list[Store | BaseException]:
    """Open ``count`` stores at the same moment from as many threads."""
    barrier = threading.Barrier(count)
    results: list[Store | BaseException] = [RuntimeError("not run")] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = database.store()
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


@pytest.mark.parametrize("attempt", range(3))
def test_replicas_opening_a_fresh_database_together(database: Database, attempt: int) -> None:
    stores = open_together(database)
    try:
        assert [type(s) for s in stores] == [Store, Store], stores
        first = stores[0]
        assert isinstance(first, Store)
        assert stored_revision(first) == [HEAD]
        assert sorted(database.execute("SELECT name, version FROM mw_state")) == [
            ("keys", 0),
            ("responses", 0),
        ]
    finally:
        for store in stores:
            if isinstance(store, Store):
                store.close()


def test_opening_a_store_at_head_loads_neither_sqlalchemy_nor_alembic(database: Database) -> None:
    """What a serving gateway runs is plain SQL; SQLAlchemy (16 MiB) and Alembic load only for
    an upgrade, or for key management and reports."""
    database.store().close()
    probe = (
        "import sys; from modelwire.gateway.store import Store; "
        f"s = Store({database.url!r}, schema={database.schema!r}); s.versions(); s.live_keys(); "
        "s.spent_usd('k'); s.get_response('r'); s.get_response_holding('i'); s.delete_response('r'); "
        "s.close(); print(sorted({m.split('.')[0] for m in sys.modules} & {'alembic', 'sqlalchemy'}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_opening_at_head_is_one_statement(database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    database.store().close()
    seen: list[str] = []
    rows = DatabaseLink.rows
    monkeypatch.setattr(DatabaseLink, "rows", lambda db, sql, *a: seen.append(sql) or rows(db, sql, *a))
    monkeypatch.setattr(DatabaseLink, "transaction", None)
    database.store().close()
    assert seen == [f"SELECT version_num FROM {VERSION_TABLE}"]


def test_version_table_lives_in_the_store_schema() -> None:
    """Per-schema isolation holds for the version table too: two schemas, two histories."""
    schemas = [f"mw_mig_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    try:
        Store(PG_URL, schema=schemas[0]).close()
        Database(PG_URL, schemas[0]).execute(f"UPDATE {VERSION_TABLE} SET version_num = '9999'")
        Store(PG_URL, schema=schemas[1]).close()  # not refused: its own version table
        found = Database(PG_URL, None).execute(
            "SELECT table_schema FROM information_schema.tables"
            " WHERE table_name = :t AND table_schema = ANY(:s)",
            t=VERSION_TABLE,
            s=schemas,
        )
        assert sorted(r[0] for r in found) == sorted(schemas)
    finally:
        for schema in schemas:
            drop_schema(schema)


def test_usage_rows_survive_untouched(legacy_database: Database) -> None:
    """Every legacy usage column reads back as written (and the new one as NULL)."""
    with legacy_database.store() as store, store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(select(legacy_usage).order_by(legacy_usage.c.time)).mappings()]
    assert [{k: v for k, v in r.items() if k != "id"} for r in rows] == LEGACY_USAGE
