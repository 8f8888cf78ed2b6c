"""The store against real engines: a SQLite file and the local PostgreSQL server.

Every store test runs on both. PostgreSQL tests isolate themselves (pytest-xdist runs them in
parallel in one database) with a fresh schema per test, passed as ``Store(schema=...)`` so the
store's own ``search_path`` handling is what is exercised; the schema is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import inspect
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError

from modelwire.gateway import database
from modelwire.gateway.app import Gateway
from modelwire.gateway.call import Call
from modelwire.gateway.config import parse_config
from modelwire.gateway.database import StoreError, parse_target
from modelwire.gateway.store import (
    KeyRecord,
    Statements,
    Store,
    StoredResponse,
    UsageRecord,
    UsageWriter,
    hash_secret,
    percentile,
    usage_values,
)
from modelwire.gateway.surfaces import CHAT
from modelwire.gateway.tables import keys_table, usage_table

from .fake_upstream import FakeUpstream
from .gateway_fixtures import loaded_by_a_serving_gateway
from .services import SHARED_POSTGRES_URL as PG_URL
from .services import PrivatePostgres, drop_schema, shared_stores

T0 = 1_700_000_000.0

StoreFactory = Callable[..., Store]


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores over one shared database, like several gateway replicas (or the gateway and CLI)."""
    yield from shared_stores(request.param, tmp_path)


@pytest.fixture
def store(open_store: StoreFactory) -> Store:
    return open_store()


def usage(**overrides: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "time": T0,
        "key_name": "alice",
        "public_model": "gpt-a",
        "backend": "openai",
        "upstream_model": "gpt-a-2025",
        "dialect": "openai_chat",
    }
    return UsageRecord(**{**fields, **overrides})


def usage_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(usage_table)).scalar_one())


def raw_rows(store: Store, table: Any) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        return [dict(row) for row in conn.execute(select(table)).mappings()]


# ----------------------------------------------------------------------------------------------
# Opening
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["postgres://u:pw@h/db", "postgresql://u:pw@h/db", "postgresql+psycopg://u@h/d"]
)
def test_postgres_spellings_use_psycopg(url: str) -> None:
    target = parse_target(url)
    assert target.dialect == "postgresql" and target.where is not None
    assert target.where.startswith("postgresql://")  # the libpq URI psycopg 3 connects with


@pytest.mark.parametrize("url", ["mysql://u:hunter2@h/db", "not a url hunter2", "redis://h:6379/0"])
def test_unsupported_urls_are_refused_without_echoing_passwords(url: str) -> None:
    with pytest.raises(ValueError) as info:
        Store(url)
    assert "hunter2" not in str(info.value)


def test_repr_hides_the_database_password() -> None:
    assert "hunter2" not in repr(parse_target("postgresql://u:hunter2@h/db"))


def test_schema_is_postgres_only_and_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        Store(f"sqlite:///{tmp_path}/x.db", schema="s")
    with pytest.raises(ValueError, match="schema"):
        Store(PG_URL, schema="bad; DROP TABLE x")
    with pytest.raises(ValueError, match="schema"):
        Store(PG_URL, schema="trailing\n")


def test_sqlite_creates_parent_dirs_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "state.db"
    with Store(f"sqlite:///{path}") as store:
        assert path.exists()
        with store.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_sqlite_binds_none_and_bool_without_searching_for_an_adapter(tmp_path: Path) -> None:
    """Without an adapter, sqlite3 looks for one on each None and bool by raising two
    AttributeErrors: the store registers adapters that bind the values sqlite3 would anyway."""
    with Store(f"sqlite:///{tmp_path / 'state.db'}") as store:
        for value in (None, True, False):
            adapted = sqlite3.adapt(value)  # ProgrammingError ("can't adapt") when none is registered
            assert adapted is None if value is None else (adapted == int(value) and type(adapted) is int)
        store.write_usage([usage(stream=True, cost=None)])
        conn = store.engine.raw_connection()
        try:
            stored = (
                conn.cursor().execute("SELECT typeof(stream), stream, typeof(cost) FROM mw_usage").fetchone()
            )
        finally:
            conn.close()
        assert tuple(stored) == ("integer", 1, "null")


def test_a_serving_gateway_loads_neither_sqlalchemy_nor_psycopg(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Its store statements are plain SQL on sqlite3: SQLAlchemy would stay resident (16 MiB, a
    sixth of a worker), the PostgreSQL driver too (13 MiB) in a gateway on SQLite. The store is
    new, so its schema was built too (in a child process)."""
    packages = {"sqlalchemy", "alembic", "psycopg"}
    assert loaded_by_a_serving_gateway(upstream, tmp_path, packages) == "200 []"


@pytest.mark.parametrize("ping_after", [0.0, 3600.0], ids=["pinged", "retried"])
def test_reads_outlive_a_postgres_restart(
    private_postgres: PrivatePostgres, ping_after: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restart drops every pooled connection. One idle past the ping threshold is checked before
    use; one used just before fails its read, which is made again on a new connection (the pool's
    other idle connections, dropped too, are let go rather than tried one by one)."""
    monkeypatch.setattr(database, "PING_AFTER_IDLE", ping_after)
    with Store(private_postgres.url) as store:
        _, record = store.create_key(name="kept")
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # four reads at once: four pooled connections
            list(pool.map(lambda _: store.db.rows("SELECT pg_sleep(0.2)"), range(4)))
        assert len(store.db._idle) == 4
        for mode in ("fast", "immediate"):
            private_postgres.stop(mode)
            with pytest.raises(StoreError):  # down: refused at once, never served from nowhere
                store.live_keys()
            private_postgres.start()
            assert store.versions() == {"keys": 1, "responses": 0}
            assert [r for _, r in store.live_keys()] == [record]


def test_sqlite_in_memory_works_across_threads() -> None:
    async def main(store: Store) -> None:
        await asyncio.to_thread(store.write_usage, [usage()])

    with Store("sqlite://") as store:
        asyncio.run(main(store))
        assert usage_count(store) == 1


def test_postgres_schemas_isolate_stores() -> None:
    schemas = [f"mw_test_{uuid.uuid4().hex[:16]}" for _ in range(2)]
    try:
        with Store(PG_URL, schema=schemas[0]) as one, Store(PG_URL, schema=schemas[1]) as two:
            secret, _ = one.create_key(name="dev")
            two.create_key(name="dev")  # same name, other schema: no clash
            assert two.find_key(secret) is None
            with one.engine.connect() as conn:
                assert conn.execute(text("SELECT current_schema()")).scalar() == schemas[0]
                tables = conn.execute(
                    text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
                    {"s": schemas[0]},
                ).scalars()
                assert set(tables) == {
                    "mw_keys",
                    "mw_usage",
                    "mw_responses",
                    "mw_response_items",
                    "mw_state",
                    "mw_credentials",
                    "mw_videos",
                    "mw_sessions",
                    "mw_alembic_version",
                }
    finally:
        for schema in schemas:
            drop_schema(schema)


def test_reopening_is_idempotent_and_shares_state(open_store: StoreFactory) -> None:
    secret, _ = open_store().create_key(name="shared")
    replica = open_store()
    found = replica.find_key(secret)
    assert found is not None and found.name == "shared"


# ----------------------------------------------------------------------------------------------
# Client keys
# ----------------------------------------------------------------------------------------------


def test_create_and_find_key(store: Store) -> None:
    before = time.time()
    secret, record = store.create_key(
        name="dev", models=["gpt-5*", "openai/*"], rpm=60, tpm=1000, budget_usd=5.5
    )
    assert secret.startswith("mw-") and len(secret) == 46
    assert record.prefix == secret[:8]
    assert record.id.startswith("key_")
    assert record.models == ("gpt-5*", "openai/*")
    assert (record.rpm, record.tpm, record.budget_usd) == (60, 1000, 5.5)
    assert before <= record.created_at <= time.time()
    assert record.revoked is False and record.source == "store" and record.expires_at is None
    assert store.find_key(secret) == record
    assert store.find_key(secret + "x") is None
    assert store.find_key("") is None


def test_default_models_allow_everything(store: Store) -> None:
    _, record = store.create_key(name="all")
    assert record.models == ("*",)


def test_secrets_are_unique(store: Store) -> None:
    secrets = {store.create_key(name=f"k{i}")[0] for i in range(20)}
    assert len(secrets) == 20


def test_secret_is_never_stored_only_its_sha256(store: Store) -> None:
    secret, _ = store.create_key(name="dev")
    rows = raw_rows(store, keys_table)
    assert len(rows) == 1
    for column, value in rows[0].items():
        assert secret not in str(value), column
    assert rows[0]["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert rows[0]["prefix"] == secret[:8]


def test_secret_stays_out_of_reprs(store: Store) -> None:
    secret, record = store.create_key(name="dev")
    assert secret not in repr(record)
    assert secret not in repr((secret, record))
    assert secret not in repr(store)
    assert f"{secret}" == str(secret) == secret  # shown once, in full, where the caller asks for it


def test_duplicate_live_name_is_rejected(store: Store) -> None:
    store.create_key(name="dev")
    with pytest.raises(ValueError, match="dev"):
        store.create_key(name="dev")
    assert len(store.list_keys()) == 1


def test_revoked_name_can_be_reused(store: Store) -> None:
    old_secret, old = store.create_key(name="dev")
    assert store.revoke_key("dev")
    new_secret, new = store.create_key(name="dev")
    assert new.id != old.id
    revoked = store.find_key(old_secret)
    assert revoked is not None and revoked.revoked
    assert store.find_key(new_secret) == new


def test_list_keys(store: Store) -> None:
    names = ["b", "a", "c"]
    for name in names:
        store.create_key(name=name)
    store.revoke_key("a")
    assert [k.name for k in store.list_keys()] == ["b", "c"]
    listed = store.list_keys(include_revoked=True)
    assert [k.name for k in listed] == names
    assert [k.revoked for k in listed] == [False, True, False]


def test_revoke_by_name_or_id(store: Store) -> None:
    secret_a, a = store.create_key(name="a")
    _, b = store.create_key(name="b")
    assert store.revoke_key(a.id) is True
    assert store.revoke_key(a.id) is False
    assert store.revoke_key("b") is True
    assert store.revoke_key("b") is False
    assert store.revoke_key("nobody") is False
    found = store.find_key(secret_a)
    assert found is not None and found.revoked
    assert store.list_keys() == []
    assert {k.id for k in store.list_keys(include_revoked=True)} == {a.id, b.id}


def test_expiry_roundtrip(store: Store) -> None:
    soon = time.time() + 3600.125
    secret, _ = store.create_key(name="temp", expires_at=soon)
    found = store.find_key(secret)
    assert found is not None and found.expires_at == soon and not found.expired()
    past_secret, _ = store.create_key(name="old", expires_at=T0)
    expired = store.find_key(past_secret)
    assert expired is not None and expired.expired()  # returned all the same: the caller refuses it
    assert expired.expired(now=T0 - 1) is False


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "   "},
        {"name": "x", "rpm": 0},
        {"name": "x", "tpm": -1},
        {"name": "x", "budget_usd": -0.01},
        {"name": "x", "models": "gpt-*"},
        {"name": "x", "models": [""]},
    ],
)
def test_create_key_rejects_nonsense(store: Store, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        store.create_key(**kwargs)
    assert store.list_keys(include_revoked=True) == []


def test_keys_version_moves_with_every_key_change(open_store: StoreFactory) -> None:
    """The counter gateways poll: one step per committed change, none for a refused or no-op one."""
    store, replica = open_store(), open_store()
    assert store.keys_version() == 0
    _, record = store.create_key(name="dev")
    assert store.keys_version() == replica.keys_version() == 1
    with pytest.raises(ValueError):
        store.create_key(name="dev")  # refused: its transaction, bump included, rolled back
    assert store.keys_version() == 1
    assert replica.revoke_key(record.id)
    assert store.keys_version() == 2
    assert not store.revoke_key(record.id)
    assert store.keys_version() == 2


def test_deleting_a_stored_response_moves_its_counter(open_store: StoreFactory) -> None:
    """Other replicas forget what they remember of stored responses when this one moves."""
    store, replica = open_store(), open_store()
    store.put_response(stored("resp_gone"))
    assert store.versions() == {"keys": 0, "responses": 0}
    assert replica.delete_response("resp_gone")
    assert store.versions()["responses"] == 1
    assert not replica.delete_response("resp_gone")
    assert store.versions() == {"keys": 0, "responses": 1}


def test_key_changes_and_their_bump_commit_together(store: Store) -> None:
    """With the counter's table gone the bump fails, and takes the key change down with it."""
    _, record = store.create_key(name="kept")
    with store.engine.begin() as conn:
        conn.execute(text("DROP TABLE mw_state"))
    with pytest.raises(SQLAlchemyError):
        store.create_key(name="lost")
    with pytest.raises(StoreError):
        store.revoke_key("kept")
    assert store.list_keys() == [record]


def test_live_keys_are_unrevoked_with_their_hashes(store: Store) -> None:
    secret_a, a = store.create_key(name="a")
    _, b = store.create_key(name="b")
    secret_old, old = store.create_key(name="old", expires_at=T0)
    store.revoke_key("b")
    live = dict(store.live_keys())
    assert live == {hash_secret(secret_a): a, hash_secret(secret_old): old}  # expired still listed
    assert hash_secret(secret_a) == hashlib.sha256(secret_a.encode()).hexdigest()
    assert b not in live.values()


def test_key_record_is_frozen() -> None:
    record = KeyRecord("key_1", "n", "mw-abcde", ("*",), None, None, None, T0, None, False)
    with pytest.raises(AttributeError):
        record.name = "other"  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------
# Usage
# ----------------------------------------------------------------------------------------------


def known_usage() -> list[UsageRecord]:
    """alice: 20 requests on gpt-a/openai, latencies 1..20 ms, 2 errors, 0.01 each.
    bob: 3 requests on gpt-b/local, latencies 100/300/200, one error, one unpriced.
    no key: 1 request on gpt-a/openai at 50 ms, free. Plus one expensive request before the window.
    """
    records = [
        usage(
            time=T0 + i,
            latency_ms=float(i + 1),
            status=(500 if i == 3 else 429 if i == 7 else 200),
            input_tokens=10,
            cached_tokens=2,
            output_tokens=5,
            reasoning_tokens=1,
            cost=0.01,
        )
        for i in range(20)
    ]
    bob = {"key_name": "bob", "public_model": "gpt-b", "backend": "local", "upstream_model": "qwen"}
    records += [
        usage(**bob, time=T0 + 1, latency_ms=100.0, cost=1.0, input_tokens=100, output_tokens=50),
        usage(**bob, time=T0 + 2, latency_ms=300.0, cost=None, status=400, input_tokens=7),
        usage(**bob, time=T0 + 3, latency_ms=200.0, cost=1.0, input_tokens=100, output_tokens=50),
        usage(key_name=None, time=T0 + 4, latency_ms=50.0, cost=0.0),
        usage(time=T0 - 100, latency_ms=9999.0, cost=100.0, status=500, input_tokens=1000),
    ]
    return records


def test_write_usage_keeps_every_field(store: Store) -> None:
    record = usage(
        input_tokens=1,
        cached_tokens=2,
        output_tokens=3,
        reasoning_tokens=4,
        cost=0.125,
        latency_ms=12.5,
        ttft_ms=3.25,
        status=201,
        request_id="req_é1",
        stream=True,
        error="client_closed",
    )
    store.write_usage([record])
    (row,) = raw_rows(store, usage_table)
    row.pop("id")
    assert row == asdict(record)


def test_usage_error_defaults_to_null(store: Store) -> None:
    store.write_usage([usage(), usage(status=503, error="upstream_unavailable")])
    assert sorted(str(row["error"]) for row in raw_rows(store, usage_table)) == [
        "None",
        "upstream_unavailable",
    ]


def statement_rows(sql: str) -> int:
    """How many rows a multi-row INSERT writes: its value tuples are joined by ``), (``."""
    return sql.count("), (") + 1


def test_usage_batches_of_any_size_use_a_few_statement_shapes(store: Store) -> None:
    """The driver caches a prepared statement per SQL text: every batch size must not make one."""
    shapes: set[str] = set()
    for size in (1, 3, 17, 255, 500, 1000):
        records = [usage(request_id=f"r{size}-{n}") for n in range(size)]
        statements = store.usage_statements([usage_values(r) for r in records])
        shapes |= {sql for sql, _ in statements}
        values = [v for _, params in statements for v in params]
        assert len(values) == size * len(dataclasses.fields(UsageRecord))
        assert values[:: len(dataclasses.fields(UsageRecord))] == [r.time for r in records]
    assert len(shapes) <= 5
    # The driver binds a statement's values holding the GIL: a statement of more rows stalls the
    # event loop for longer (the gateway's p99 at one connection).
    assert max(map(statement_rows, shapes)) == 64
    rows = [usage_values(usage(request_id=f"w{n}")) for n in range(300)]
    store.run_statements(store.usage_statements(rows))
    assert usage_count(store) == 300


def test_write_usage_is_one_transaction(store: Store) -> None:
    with pytest.raises(StoreError) as failed:
        store.write_usage([usage(), usage(public_model=None)])
    assert isinstance(failed.value.orig, store.engine.dialect.loaded_dbapi.IntegrityError)  # the driver's
    assert usage_count(store) == 0
    store.write_usage([])
    assert usage_count(store) == 0


def test_usage_summary_by_model(store: Store) -> None:
    store.write_usage(known_usage())
    rows = store.usage_summary(since=T0, by="model")
    assert [r.group for r in rows] == ["gpt-b", "gpt-a"]
    b, a = rows
    assert (b.requests, b.errors, b.input_tokens, b.output_tokens) == (3, 1, 207, 100)
    assert b.cost == pytest.approx(2.0)
    assert (b.p50_ms, b.p95_ms) == (200.0, 300.0)
    assert b.error_rate == pytest.approx(1 / 3)
    assert (a.requests, a.errors) == (21, 2)
    assert (a.input_tokens, a.cached_tokens, a.output_tokens, a.reasoning_tokens) == (200, 40, 100, 20)
    assert a.cost == pytest.approx(0.2)
    assert (a.p50_ms, a.p95_ms) == (11.0, 20.0)  # nearest rank over 1..20 and 50


def test_usage_summary_by_key(store: Store) -> None:
    store.write_usage(known_usage())
    rows = store.usage_summary(since=T0, by="key")
    assert [r.group for r in rows] == ["bob", "alice", "(none)"]
    alice = rows[1]
    assert (alice.requests, alice.errors, alice.error_rate) == (20, 2, 0.1)
    assert alice.cost == pytest.approx(0.2)
    assert (alice.p50_ms, alice.p95_ms) == (10.0, 19.0)
    nobody = rows[2]
    assert (nobody.requests, nobody.cost, nobody.p50_ms, nobody.p95_ms) == (1, 0.0, 50.0, 50.0)


def test_usage_summary_by_backend(store: Store) -> None:
    store.write_usage(known_usage())
    rows = store.usage_summary(since=T0, by="backend")
    assert [(r.group, r.requests) for r in rows] == [("local", 3), ("openai", 21)]


def test_usage_summary_window_includes_older_rows_when_asked(store: Store) -> None:
    store.write_usage(known_usage())
    (alice,) = [r for r in store.usage_summary(since=0, by="key") if r.group == "alice"]
    assert (alice.requests, alice.errors, alice.input_tokens) == (21, 3, 1200)
    assert alice.cost == pytest.approx(100.2)
    assert alice.p95_ms == 20.0 and alice.p50_ms == 11.0
    assert store.usage_summary(since=T0 + 1000) == []


def test_usage_summary_orders_ties_by_requests(store: Store) -> None:
    store.write_usage([usage(public_model="few"), *[usage(public_model="many") for _ in range(3)]])
    assert [r.group for r in store.usage_summary(since=0)] == ["many", "few"]


def test_usage_summary_rejects_unknown_grouping(store: Store) -> None:
    with pytest.raises(ValueError, match="by"):
        store.usage_summary(since=0, by="dialect")


DAY = 86400.0
MIDNIGHT = 1_764_547_200.0  # 2025-12-01 00:00 UTC


def bucketed_usage() -> list[UsageRecord]:
    """Around midnight, with times whose day or hour index rounds up but must floor.

    ``MIDNIGHT - 0.4`` is 0.999995 of a day and 0.9999 of an hour past the previous one: a CAST
    that rounds (PostgreSQL's) would put it in the next bucket.
    """
    return [
        usage(time=MIDNIGHT - 3600 - 1, latency_ms=10.0, cost=1.0),  # 2025-11-30 22:59:59
        usage(time=MIDNIGHT - 0.4, latency_ms=30.0, cost=0.000042, status=500),  # 23:59:59.6
        usage(time=MIDNIGHT - 1800, latency_ms=20.0, cost=0.5),  # 23:30
        usage(time=MIDNIGHT, latency_ms=40.0, cost=0.25),  # 2025-12-01 00:00
        usage(time=MIDNIGHT + 3600 + 0.6, latency_ms=50.0, cost=0.125),  # 01:00:00.6
    ]


def test_usage_summary_by_day(store: Store) -> None:
    store.write_usage(bucketed_usage())
    rows = store.usage_summary(since=0, by="day")
    assert [(r.group, r.requests, r.errors) for r in rows] == [("2025-11-30", 3, 1), ("2025-12-01", 2, 0)]
    before, after = rows
    assert before.cost == pytest.approx(1.500042)
    assert (before.p50_ms, before.p95_ms) == (20.0, 30.0)
    assert (after.p50_ms, after.p95_ms) == (40.0, 50.0)


def test_usage_summary_by_hour_is_oldest_first(store: Store) -> None:
    store.write_usage(bucketed_usage())
    rows = store.usage_summary(since=MIDNIGHT - 2 * 3600, by="hour")
    assert [(r.group, r.requests) for r in rows] == [
        ("2025-11-30 22:00", 1),
        ("2025-11-30 23:00", 2),
        ("2025-12-01 00:00", 1),
        ("2025-12-01 01:00", 1),
    ]  # by time, though the costliest hour is the first
    assert rows[1].cost == pytest.approx(0.500042)
    assert store.usage_summary(since=MIDNIGHT, by="hour")[0].group == "2025-12-01 00:00"


def test_spent_by_key(store: Store) -> None:
    store.write_usage(known_usage())
    assert store.spent_by_key() == pytest.approx({"alice": 100.2, "bob": 2.0})  # the keyless one left out
    assert store.spent_by_key(since=T0) == pytest.approx({"alice": 0.2, "bob": 2.0})
    assert store.spent_by_key(since=T0 + 1000) == {}


def test_spent_usd(store: Store) -> None:
    store.write_usage(known_usage())
    assert store.spent_usd("alice") == pytest.approx(100.2)
    assert store.spent_usd("alice", since=T0) == pytest.approx(0.2)
    assert store.spent_usd("bob") == pytest.approx(2.0)
    assert store.spent_usd("nobody") == 0.0
    assert store.spent_usd("bob", since=T0 + 3) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("values", "p50", "p95"),
    [
        ([], None, None),
        ([7.0], 7.0, 7.0),
        ([1.0, 2.0], 1.0, 2.0),
        ([float(i) for i in range(1, 101)], 50.0, 95.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], p50: float | None, p95: float | None) -> None:
    assert (percentile(values, 50), percentile(values, 95)) == (p50, p95)


# ----------------------------------------------------------------------------------------------
# Stored responses
# ----------------------------------------------------------------------------------------------


def stored(id: str = "resp_1", **overrides: Any) -> StoredResponse:
    fields: dict[str, Any] = {
        "id": id,
        "key_name": "alice",
        "model": "gpt-a",
        "created_at": T0,
        "previous_response_id": None,
        "input_items": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "héllo 世界 🚀"}]},
        ],
        "output_items": [
            {
                "type": "function_call",
                "call_id": "c1",
                "name": "lookup",
                "arguments": '{"q": "naïve \\"quoted\\""}',
            },
            {"type": "reasoning", "encrypted_content": "gAAAA" + "x" * 2000, "summary": []},
        ],
        "response": {
            "zeta": 1,
            "id": id,
            "object": "response",
            "usage": {"input_tokens": 3, "output_tokens_details": {"reasoning_tokens": 2}},
            "metadata": {"empty": {}, "none": None, "flag": True, "pi": 3.14159, "big": 2**53},
            "alpha": ["ünïcödé", "\u0000\u001f", "\\"],
        },
        "instructions": "Be brief. ✓",
    }
    return StoredResponse(**{**fields, **overrides})


def test_put_and_get_response(store: Store) -> None:
    original = stored()
    store.put_response(original)
    got = store.get_response("resp_1")
    assert got == original
    assert got is not None and list(got.response) == list(original.response)  # key order kept
    assert store.get_response("resp_missing") is None


def test_put_response_upserts(store: Store) -> None:
    store.put_response(stored(previous_response_id=None))
    newer = stored(
        previous_response_id="resp_0",
        output_items=[{"type": "message", "content": [{"type": "output_text", "text": "ok"}]}],
        response={"status": "completed"},
        instructions=None,
    )
    store.put_response(newer)
    assert store.get_response("resp_1") == newer
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM mw_responses")).scalar() == 1


def test_delete_response(store: Store) -> None:
    store.put_response(stored("resp_a"))
    store.put_response(stored("resp_b"))
    assert store.delete_response("resp_a") is True
    assert store.delete_response("resp_a") is False
    assert store.get_response("resp_a") is None
    assert store.get_response("resp_b") is not None


def test_a_response_is_found_by_its_output_items(store: Store) -> None:
    """An ``item_reference`` names an output item: the store finds the response holding it, forgets
    the item with its response, and keeps the first holder of an id (an id is minted once)."""

    def answer(id: str, *item_ids: str) -> StoredResponse:
        items = [{"id": i, "type": "message", "role": "assistant", "content": []} for i in item_ids]
        return stored(id, output_items=[*items, {"type": "reasoning", "summary": []}])

    store.put_responses([answer("resp_a", "msg_a1", "fc_a2"), answer("resp_b", "msg_b1")])
    store.put_response(answer("resp_c", "msg_a1"))
    assert store.get_response_holding("fc_a2") == answer("resp_a", "msg_a1", "fc_a2")
    assert store.get_response_holding("msg_b1") == answer("resp_b", "msg_b1")
    held = store.get_response_holding("msg_a1")
    assert held is not None and held.id == "resp_a"
    assert store.get_response_holding("msg_none") is None
    assert store.delete_response("resp_a")
    assert store.get_response_holding("msg_a1") is None and store.get_response_holding("fc_a2") is None
    assert store.get_response_holding("msg_b1") is not None


# ----------------------------------------------------------------------------------------------
# UsageWriter
# ----------------------------------------------------------------------------------------------


class FlakyStore(Store):
    """A real store whose writes fail while ``failing`` is set, counting every attempt."""

    failing = False
    attempts = 0

    def run_statements(self, statements: Statements) -> None:
        self.attempts += 1
        if self.failing:
            raise ConnectionError("database is down")
        super().run_statements(statements)


@pytest.fixture
def flaky(open_store: StoreFactory) -> FlakyStore:
    store = open_store(FlakyStore)
    assert isinstance(store, FlakyStore)
    return store


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll until true; the generous bound only matters when something is broken."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - polling a database, not waiting on an in-process event
            await asyncio.sleep(0.01)


async def test_add_is_synchronous_and_fast(store: Store) -> None:
    writer = UsageWriter(store, interval=60, max_batch=10_000_000)
    assert not inspect.iscoroutinefunction(writer.add)
    record = usage()
    start = time.perf_counter()
    for _ in range(10_000):
        writer.add(record)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5, f"10k adds took {elapsed:.3f}s"
    assert writer.pending == 10_000 and usage_count(store) == 0
    await writer.stop()
    assert writer.pending == 0 and usage_count(store) == 10_000


async def test_add_takes_the_record_as_it_is_then(store: Store) -> None:
    """The values are taken at add(), not at the flush: a flush of 500 records gathering them all
    at once held the event loop for ~0.4 ms."""
    writer = UsageWriter(store, interval=60)
    record = usage(status=200)
    writer.add(record)
    record.status = 500
    await writer.stop()
    assert [row["status"] for row in raw_rows(store, usage_table)] == [200]


class StatementSizes(Store):
    """A real store that records how many rows each usage statement it runs holds."""

    sizes: list[int]

    def run_statements(self, statements: Statements) -> None:
        self.sizes.extend(statement_rows(sql) for sql, _ in statements if "mw_usage" in sql)
        super().run_statements(statements)


@pytest.mark.parametrize(("quiet", "largest"), [(True, 16), (False, 64)])
async def test_a_quiet_gateway_writes_usage_in_short_statements(
    open_store: StoreFactory, quiet: bool, largest: int
) -> None:
    """Serving one request at a time, the writer binds 16 rows per statement (each holds the GIL
    that request waits for); busy, 64 (each statement waits for the GIL the busy loop holds)."""
    store = open_store(StatementSizes)
    assert isinstance(store, StatementSizes)
    store.sizes = []
    writer = UsageWriter(store, interval=60, quiet=lambda: quiet)
    for i in range(300):
        writer.add(usage(time=T0 + i))
    await writer.stop()
    assert max(store.sizes) == largest and sum(store.sizes) == 300
    assert usage_count(store) == 300


async def test_the_gateway_counts_itself_quiet_while_serving_one_request(tmp_path: Path) -> None:
    gateway = Gateway(parse_config({"store": f"sqlite:///{tmp_path}/state.db"}))
    await gateway.startup()
    try:
        usage_writer = gateway.state.usage
        assert usage_writer is not None
        calls = [Call(f"req-{n}", CHAT, time.monotonic()) for n in range(2)]
        quiet = []
        for call in calls:
            quiet.append(usage_writer._quiet())
            gateway.inflight.enter(call)
        quiet.append(usage_writer._quiet())
        assert quiet == [True, True, False]
        gateway.inflight.leave(calls[0])
        assert usage_writer._quiet()
    finally:
        await gateway.shutdown()


async def test_flushes_on_interval(store: Store) -> None:
    writer = UsageWriter(store, interval=0.05, max_batch=1000)
    await writer.start()
    try:
        for i in range(3):
            writer.add(usage(time=T0 + i))
        assert usage_count(store) == 0
        await eventually(lambda: writer.pending == 0)  # the commit lands just before the write returns
        assert usage_count(store) == 3
    finally:
        await writer.stop()


async def test_flushes_when_a_batch_is_full(store: Store) -> None:
    writer = UsageWriter(store, interval=60, max_batch=5)
    await writer.start()
    try:
        for i in range(5):
            writer.add(usage(time=T0 + i))
        await eventually(lambda: writer.pending == 0)  # long before the 60 s interval
        assert usage_count(store) == 5
        for i in range(3):
            writer.add(usage(time=T0 + 10 + i))
        await asyncio.sleep(0.1)
        assert writer.pending == 3 and usage_count(store) == 5  # under a batch: waits for the interval
    finally:
        await writer.stop()
    assert writer.pending == 0 and usage_count(store) == 8


async def test_stop_flushes_everything(store: Store) -> None:
    writer = UsageWriter(store, interval=60, max_batch=100)
    await writer.start()
    for i in range(1234):
        writer.add(usage(time=T0 + i))
    await writer.stop()
    assert writer.pending == 0 and writer.dropped == 0
    assert usage_count(store) == 1234
    assert store.usage_summary(since=0, by="key")[0].requests == 1234


async def test_stop_without_start_still_flushes(store: Store) -> None:
    writer = UsageWriter(store)
    writer.add(usage())
    await writer.stop()
    assert usage_count(store) == 1


async def test_failed_write_keeps_the_batch(flaky: FlakyStore, caplog: pytest.LogCaptureFixture) -> None:
    writer = UsageWriter(flaky, interval=60, max_batch=4)
    for i in range(7):
        writer.add(usage(time=T0 + i))
    flaky.failing = True
    with caplog.at_level(logging.WARNING, logger="modelwire.store"):
        await writer.flush()  # logged, never raised
    assert writer.pending == 7 and usage_count(flaky) == 0
    assert "database is down" in caplog.text and "kept for retry" in caplog.text
    flaky.failing = False
    await writer.flush()
    assert writer.pending == 0
    with flaky.engine.connect() as conn:
        times = conn.execute(select(usage_table.c.time).order_by(usage_table.c.id)).scalars().all()
    assert sorted(times) == [T0 + i for i in range(7)]


class HeldStore(FlakyStore):
    """A store whose writes wait, once begun, until ``release`` is set."""

    begun: threading.Event
    release: threading.Event

    def run_statements(self, statements: Statements) -> None:
        self.begun.set()
        assert self.release.wait(5)
        super().run_statements(statements)


async def test_a_flush_writes_what_was_queued_when_it_began(open_store: StoreFactory) -> None:
    """Records queued while a batch is written wait for the next flush: a writer chasing its queue
    wrote a few records per transaction, back to back, all the time a gateway was busy."""
    store = open_store(HeldStore)
    assert isinstance(store, HeldStore)
    store.begun, store.release = threading.Event(), threading.Event()
    writer = UsageWriter(store, interval=60, max_batch=100)
    for i in range(3):
        writer.add(usage(time=T0 + i))
    flushing = asyncio.ensure_future(writer.flush())
    assert await asyncio.to_thread(store.begun.wait, 5)
    for i in range(3, 5):
        writer.add(usage(time=T0 + i))  # arrives while the first batch is being written
    store.release.set()
    await flushing
    assert (store.attempts, usage_count(store), writer.pending) == (1, 3, 2)
    await writer.stop()  # stop writes everything, what arrives meanwhile included
    assert (store.attempts, usage_count(store), writer.pending) == (2, 5, 0)


async def test_background_retry_succeeds_after_an_outage(flaky: FlakyStore) -> None:
    flaky.failing = True
    writer = UsageWriter(flaky, interval=0.02, max_batch=2, max_backoff=0.05)
    await writer.start()
    try:
        for i in range(5):
            writer.add(usage(time=T0 + i))
        await eventually(lambda: flaky.attempts >= 2)
        assert writer.pending == 5
        flaky.failing = False
        await eventually(lambda: writer.pending == 0)
        assert usage_count(flaky) == 5 and writer.dropped == 0
    finally:
        await writer.stop()


async def test_backlog_is_bounded_dropping_oldest(flaky: FlakyStore) -> None:
    flaky.failing = True
    writer = UsageWriter(flaky, interval=60, max_batch=3, max_pending=5)
    for i in range(4):
        writer.add(usage(time=T0 + i))
    await writer.flush()
    for i in range(4, 8):
        writer.add(usage(time=T0 + i))
    assert (writer.pending, writer.dropped) == (5, 3)
    flaky.failing = False
    await writer.stop()
    with flaky.engine.connect() as conn:
        times = sorted(conn.execute(select(usage_table.c.time)).scalars())
    assert times == [T0 + i for i in range(3, 8)]


async def test_stop_with_the_store_down_keeps_records_and_logs(
    flaky: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    flaky.failing = True
    writer = UsageWriter(flaky, interval=60)
    await writer.start()
    writer.add(usage())
    with caplog.at_level(logging.ERROR, logger="modelwire.store"):
        await writer.stop()
    assert writer.pending == 1
    assert "1 records unwritten" in caplog.text


async def test_wake_writes_the_backlog_without_waiting_out_the_backoff(flaky: FlakyStore) -> None:
    writer = UsageWriter(flaky, interval=30, max_batch=100)
    await writer.start()
    try:
        assert writer.healthy
        flaky.failing = True
        writer.add(usage())
        writer.wake()
        await eventually(lambda: flaky.attempts == 1)
        await eventually(lambda: not writer.healthy)  # backing off now: 60 s until the next try
        flaky.failing = False
        writer.wake()  # the health monitor saw the store come back
        await eventually(lambda: writer.pending == 0)
        assert writer.healthy and usage_count(flaky) == 1 and flaky.attempts == 2
    finally:
        await writer.stop()


async def test_healthy_follows_the_last_write(flaky: FlakyStore) -> None:
    writer = UsageWriter(flaky, interval=60)
    flaky.failing = True
    writer.add(usage())
    await writer.flush()
    assert (writer.healthy, writer.pending) == (False, 1)
    flaky.failing = False
    await writer.flush()
    assert (writer.healthy, writer.pending) == (True, 0)


def test_writer_rejects_bad_settings(tmp_path: Path) -> None:
    with Store(f"sqlite:///{tmp_path}/x.db") as store:
        for kwargs in ({"interval": 0}, {"max_batch": 0}, {"max_pending": 0}):
            with pytest.raises(ValueError):
                UsageWriter(store, **kwargs)
