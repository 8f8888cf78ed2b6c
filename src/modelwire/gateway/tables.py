"""The store's tables and the queries the CLI, admin API and dashboard build, in SQLAlchemy Core.

Imported when first needed: a serving gateway runs its few statements in plain SQL
(:mod:`.database`) and never loads SQLAlchemy. Migrations compare against :data:`metadata`.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    case,
    cast,
    create_engine,
    false,
    func,
    literal_column,
    select,
    update,
)
from sqlalchemy.pool import QueuePool, StaticPool
from sqlalchemy.sql.elements import ColumnElement

from .database import Database
from .store import GROUP_COLUMNS, NO_GROUP, TIME_BUCKETS, json_text

metadata = MetaData()

keys_table = Table(
    "mw_keys",
    metadata,
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
    Column("admin", Boolean, nullable=False, default=False, server_default=false()),
)
# Names are unique among live keys only, so a revoked key's name can be reused; a partial unique
# index makes that atomic across replicas instead of a check-then-insert race. Migration 0001 makes
# it partial on PostgreSQL too; spelling postgresql_where here would load SQLAlchemy's PostgreSQL
# dialect (2.3 MiB resident) into every process that loads these tables, SQLite ones included, for
# a predicate that no query reads and that schema comparison does not check.
Index(
    "mw_keys_live_name",
    keys_table.c.name,
    unique=True,
    sqlite_where=keys_table.c.revoked == false(),
)

usage_table = Table(
    "mw_usage",
    metadata,
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
    Column("error", String(64)),
    Column("hops", Integer, nullable=False, default=0, server_default="0"),
)
# Every summary reads a time window; spent_usd(key, since) reads one key's window; the admin
# request log finds a request by its id.
Index("mw_usage_time", usage_table.c.time)
Index("mw_usage_key_time", usage_table.c.key_name, usage_table.c.time)
Index("mw_usage_request_id", usage_table.c.request_id)

responses_table = Table(
    "mw_responses",
    metadata,
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

# Which stored response holds each output item, for ``item_reference`` inputs (a client that
# resends a stored answer by its item id alone).
response_items_table = Table(
    "mw_response_items",
    metadata,
    Column("item_id", String(200), primary_key=True),
    Column("response_id", String(200), nullable=False),
)
Index("mw_response_items_response", response_items_table.c.response_id)

# Named change counters. ``keys`` moves in the transaction of every key change, ``responses`` in
# that of every deleted stored response; gateways poll them (one read of a two-row table) and reload
# their in-memory key table, or forget the responses they remember, when one moved.
state_table = Table(
    "mw_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False),
)


# Sign-in credentials (the Codex route's OAuth tokens) that replicas share, sealed with a key from
# the environment (:mod:`.credentials`): ``secret`` is never plaintext. ``version`` moves with
# every write; a refresh holds the row's lock, so replicas spend a single-use refresh token once.
credentials_table = Table(
    "mw_credentials",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("secret", LargeBinary, nullable=False),
    Column("updated_at", Double, nullable=False),
)


# Which backend holds each video job the gateway created, and which client key (and upstream key)
# created it: polls and downloads reach the job from any replica, and only its own key sees it.
videos_table = Table(
    "mw_videos",
    metadata,
    Column("id", String(200), primary_key=True),
    Column("key_name", String(200)),
    Column("backend", String(200), nullable=False),
    Column("upstream_key", Integer, nullable=False),
    Column("model", String(300), nullable=False),
    Column("created_at", Double, nullable=False),
)
Index("mw_videos_key_time", videos_table.c.key_name, videos_table.c.created_at)

# Dashboard sign-ins, shared by replicas: the cookie holds a random session id, the table only its
# SHA-256, the admin key's SHA-256 (a revoked key ends its sessions) and the session's CSRF token.
sessions_table = Table(
    "mw_sessions",
    metadata,
    Column("id_hash", String(64), primary_key=True),
    Column("key_hash", String(64), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)


def bump(counter: str) -> Any:
    """The statement that moves a change counter, run in the transaction of the change itself."""
    return update(state_table).where(state_table.c.name == counter).values(version=state_table.c.version + 1)


def engine_for(db: Database) -> Engine:
    """A SQLAlchemy engine on ``db``'s connections: the same settings, and for an in-memory store
    the same database."""
    memory = db.target.in_memory
    return create_engine(
        "sqlite://" if db.dialect == "sqlite" else "postgresql+psycopg://",
        creator=db.connect,
        poolclass=StaticPool if memory else QueuePool,
        pool_pre_ping=db.dialect == "postgresql",  # a long-lived gateway outlives database restarts
        json_serializer=json_text,
        json_deserializer=orjson.loads,
    )


def window(since: float | None, until: float | None, only: dict[str, str | None]) -> ColumnElement[bool]:
    """The usage records from ``since`` up to (not including) ``until``, of one key, model or
    backend per ``only`` (a key of ``(none)`` means requests made without one)."""
    c = usage_table.c
    clauses: list[ColumnElement[bool]] = [c.time >= (since or 0.0)]
    if until is not None:
        clauses.append(c.time < until)
    for name, value in only.items():
        if name not in GROUP_COLUMNS:
            raise ValueError(f"cannot filter usage by {name!r}")
        if value is None:
            continue
        column = c[GROUP_COLUMNS[name]]
        clauses.append(column.is_(None) if value == NO_GROUP else column == value)
    return and_(*clauses)


def summary_query(group: ColumnElement[Any], window: ColumnElement[bool]) -> Any:
    c = usage_table.c

    def total(column: ColumnElement[Any]) -> Any:
        return func.coalesce(func.sum(column), 0)

    return (
        select(
            group,
            func.count(),
            total(case((c.status >= 400, 1), else_=0)),
            total(c.input_tokens),
            total(c.cached_tokens),
            total(c.output_tokens),
            total(c.reasoning_tokens),
            func.coalesce(func.sum(c.cost), 0.0),
        )
        .where(window)
        .group_by(group)
    )


def bucket(by: str, dialect: str) -> ColumnElement[int]:
    """The index of a record's UTC day or hour, the same integer on both engines.

    PostgreSQL's CAST rounds to nearest and SQLite's truncates, so PostgreSQL floors first;
    timestamps are positive, where truncation is flooring. The width is inlined, not bound, so
    the SELECT and GROUP BY expressions are textually identical (PostgreSQL requires it).
    """
    width = literal_column(str(TIME_BUCKETS[by][0]), Integer)
    quotient = usage_table.c.time / width
    if dialect == "postgresql":
        return cast(func.floor(quotient), BigInteger)
    return cast(quotient, Integer)
