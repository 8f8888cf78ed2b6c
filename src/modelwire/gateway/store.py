"""The gateway's persistent state: client keys, usage records and stored Responses-API responses.

One code path serves both the embedded default (SQLite, zero set-up) and the scale-out store
(PostgreSQL shared by several replicas), so the same tests prove both: what a serving gateway runs
is plain SQL both engines read alike, on the drivers (:mod:`.database`); key management, reports
and dashboard sessions are SQLAlchemy Core queries (:mod:`.tables`), loaded when first used. The
store is synchronous on purpose: the gateway calls it from a worker thread and the CLI calls it
directly, and neither wants an event loop inside the database layer. Nothing on the request path
waits on a write: :class:`UsageWriter` queues usage records and writes them in batches.

The schema is versioned (:mod:`modelwire.gateway.migrations`): opening a store creates it at the
newest revision, upgrades an older one, and refuses one a newer modelwire made (:class:`SchemaError`).

Client key secrets never reach the database, a log line or an exception: the store keeps only a
SHA-256 hash (the secrets are 256-bit random, so a salt or slow hash would add nothing) and an
8-character display prefix, and the hash is computed before any SQL sees the value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import operator
import re
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from functools import cached_property
from itertools import chain
from typing import TYPE_CHECKING, Any

import orjson

from . import migrations
from .database import Database, Statements, Target, first_line, parse_target
from .migrations import SchemaError, Upgrade

if TYPE_CHECKING:
    from sqlalchemy import Engine

log = logging.getLogger("modelwire.store")

KEY_PREFIX = "mw-"
DISPLAY_PREFIX_LEN = 8
NO_GROUP = "(none)"
GROUP_COLUMNS = {"key": "key_name", "model": "public_model", "backend": "backend"}
# Time groupings: bucket width in seconds and the UTC label of a bucket's start.
TIME_BUCKETS = {"day": (86400, "%Y-%m-%d"), "hour": (3600, "%Y-%m-%d %H:00")}
GROUPINGS = (*GROUP_COLUMNS, *TIME_BUCKETS)
KEYS_COUNTER = "keys"
RESPONSES_COUNTER = "responses"
KEY_CHANGES = frozenset({"models", "rpm", "tpm", "budget_usd", "expires_at"})
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A client key as the gateway sees it; holds no secret, so it is safe to log or render."""

    id: str
    name: str
    prefix: str
    models: tuple[str, ...]
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    created_at: float
    expires_at: float | None
    revoked: bool
    source: str = "store"
    admin: bool = False  # an operator's key: the admin API and dashboard only, never the proxy

    def expired(self, now: float | None = None) -> bool:
        """Whether the key is past its expiry; the store returns expired keys and lets callers decide."""
        return self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at


@dataclass(slots=True, kw_only=True)
class UsageRecord:
    """One request's accounting, written off the request path by :class:`UsageWriter`."""

    time: float
    key_name: str | None
    public_model: str
    backend: str | None
    upstream_model: str | None
    dialect: str
    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    status: int = 200
    request_id: str = ""
    stream: bool = False
    error: str | None = None  # why it did not succeed: shutdown, client_closed, an upstream code
    hops: int = 0  # upstream attempts made (retries and failovers included); 0: none was made


USAGE_FIELDS = tuple(f.name for f in fields(UsageRecord))
# A usage record's column values, in USAGE_FIELDS order: what a usage statement binds.
usage_values: Callable[[UsageRecord], tuple[Any, ...]] = operator.attrgetter(*USAGE_FIELDS)
_STATEMENT_ROWS = (64, 16, 4, 1)  # largest first
QUIET_STATEMENT_ROWS = 16  # the largest usage statement while a gateway serves one request at a time


@dataclass(slots=True, kw_only=True)
class UsageRow:
    """One line of ``modelwire usage``: a group's totals over a time window."""

    group: str
    requests: int
    errors: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost: float
    p50_ms: float | None
    p95_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(slots=True, kw_only=True)
class StoredResponse:
    """A Responses-API response kept so stateless upstreams can honour ``previous_response_id``."""

    id: str
    key_name: str | None
    model: str
    created_at: float
    previous_response_id: str | None
    input_items: list[dict[str, Any]]
    output_items: list[dict[str, Any]]
    response: dict[str, Any]
    instructions: str | None = None

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every item of the conversation up to and including this response's output."""
        return [*self.input_items, *self.output_items]

    def output_items_by_id(self) -> dict[str, dict[str, Any]]:
        """The output items that have an id (what an ``item_reference`` can name), by id."""
        return {i: item for item in self.output_items if isinstance(i := item.get("id"), str) and i}


RESPONSE_FIELDS = tuple(f.name for f in fields(StoredResponse))
_PACKED_OVERHEAD = 512  # what a packed response's object, ids and names weigh beside its JSON, about


@dataclass(slots=True, kw_only=True)
class PackedResponse:
    """A stored response as its row is written: the JSON columns already encoded.

    What a replica keeps in memory and what the store writes, so a response is encoded once. Three
    strings weigh less than the dicts they encode (half, for a short exchange), are never visited by
    the collector, and, once past 512 bytes, live outside Python's small-object heap, whose arenas
    a cache of scattered dicts held after a burst. :meth:`unpack` gives a fresh copy, which a
    caller may change freely.
    """

    id: str
    key_name: str | None
    model: str
    created_at: float
    previous_response_id: str | None
    input_items: str
    output_items: str
    response: str
    instructions: str | None
    item_ids: tuple[str, ...]  # its output items that have an id (what an item_reference names)

    @classmethod
    def pack(cls, response: StoredResponse) -> PackedResponse:
        return cls(
            id=response.id,
            key_name=response.key_name,
            model=response.model,
            created_at=response.created_at,
            previous_response_id=response.previous_response_id,
            input_items=json_text(response.input_items),
            output_items=json_text(response.output_items),
            response=json_text(response.response),
            instructions=response.instructions,
            item_ids=tuple(response.output_items_by_id()),
        )

    def unpack(self) -> StoredResponse:
        return StoredResponse(
            id=self.id,
            key_name=self.key_name,
            model=self.model,
            created_at=self.created_at,
            previous_response_id=self.previous_response_id,
            input_items=orjson.loads(self.input_items),
            output_items=orjson.loads(self.output_items),
            response=orjson.loads(self.response),
            instructions=self.instructions,
        )

    @property
    def size(self) -> int:
        """Bytes held, near enough: the encoded columns and a fixed allowance for the rest."""
        return _PACKED_OVERHEAD + len(self.input_items) + len(self.output_items) + len(self.response)


# SQLite (3.24+) and PostgreSQL spell an upsert alike.
_RESPONSE_UPSERT = " ON CONFLICT (id) DO UPDATE SET " + ", ".join(
    f"{name} = excluded.{name}" for name in RESPONSE_FIELDS if name != "id"
)

_ITEM_UPSERT = " ON CONFLICT (item_id) DO NOTHING"  # an item id is minted once: the first holder stays


# A packed response's column values, its JSON columns encoded as the engines' JSON type does.
_response_row_values = operator.attrgetter(*RESPONSE_FIELDS)


class _Secret(str):
    """A key secret that masks itself in ``repr`` so a logged tuple or traceback cannot leak it.

    ``str()`` and formatting still give the full value, which the CLI shows exactly once.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"'{self[:DISPLAY_PREFIX_LEN]}…'"


# ----------------------------------------------------------------------------------------------
# Opening
# ----------------------------------------------------------------------------------------------

_READ_VERSIONS = "SELECT name, version FROM mw_state"
_BUMP = "UPDATE mw_state SET version = version + 1 WHERE name = {marker}"
_KEY_COLUMNS = "id, name, prefix, models, rpm, tpm, budget_usd, created_at, expires_at, revoked, admin"
_KEY_FIELDS = tuple(_KEY_COLUMNS.split(", "))


def json_text(value: Any) -> str:
    """orjson is several times faster than json for response bodies; both engines want ``str``."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _check_schema(schema: str | None) -> str | None:
    """Lower-case plain identifiers only, so the name needs no quoting in either DDL or ``options``."""
    if schema is not None and not SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema must match {SCHEMA_NAME.pattern}, got {schema!r}")
    return schema


def open_engine(url: str, *, schema: str | None = None) -> Engine:
    """A SQLAlchemy engine on the store at ``url``, without touching its schema."""
    from .tables import engine_for

    return engine_for(Database(parse_target(url), schema=schema))


def schema_revision(url: str) -> tuple[str | None, bool]:
    """(the store's schema revision or None, whether it predates versioning), changing nothing."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return migrations.read_state(conn)
    finally:
        engine.dispose()


def upgrade_schema(url: str, *, schema: str | None = None) -> Upgrade:
    """Create or upgrade the store at ``url`` to this code's head (what opening a Store does)."""
    engine = open_engine(url, schema=schema)
    try:
        return migrations.upgrade(engine, url=parse_target(url).display, schema=schema)
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------------------------
# Store
# ----------------------------------------------------------------------------------------------


class Store:
    """Keys, usage and stored responses over SQLite or PostgreSQL; thread-safe (pooled connections).

    ``schema`` (PostgreSQL only) puts every table in that schema, created on open, via
    ``search_path``; tests use it to isolate parallel runs in one database.

    Opening brings the schema to this code's head (see :mod:`modelwire.gateway.migrations`) and
    raises :class:`SchemaError` for a store a newer modelwire upgraded.

    What a serving gateway calls (key table and counters, spend, stored responses, batched writes)
    is plain SQL on :attr:`db`; key management, usage reports and dashboard sessions build their
    queries with SQLAlchemy (:mod:`.tables`), loaded by the first of them to run.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self.target: Target = parse_target(url)
        self.schema = schema
        self.db = Database(self.target, schema=_check_schema(schema))
        self.dialect = self.db.dialect
        marker = self.db.marker
        self._bump = _BUMP.format(marker=marker)
        self._usage_rows = _RowWriter("mw_usage", USAGE_FIELDS, marker)
        self._response_rows = _RowWriter("mw_responses", RESPONSE_FIELDS, marker, _RESPONSE_UPSERT)
        self._item_rows = _RowWriter("mw_response_items", ("item_id", "response_id"), marker, _ITEM_UPSERT)
        self._sql = _Queries(marker)
        try:
            self._ensure_schema()
        except BaseException:
            self.close()
            raise

    def _ensure_schema(self) -> None:
        """At head: one read. Otherwise the upgrade, which loads SQLAlchemy and Alembic."""
        revision = migrations.fast_revision(self.db)
        if revision == migrations.HEAD:
            return
        if revision is not None and revision not in migrations.REVISIONS:
            raise migrations.newer_error(revision, self.target.display)
        migrations.upgrade(self.engine, url=self.target.display, schema=self.schema)

    @cached_property
    def engine(self) -> Engine:
        """SQLAlchemy's engine on this store's connections, made when first used."""
        from .tables import engine_for

        return engine_for(self.db)

    def __repr__(self) -> str:
        return f"Store({self.target.display!r}, schema={self.schema!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if "engine" in self.__dict__:
            self.engine.dispose()
        self.db.close()

    # -- client keys ---------------------------------------------------------------------------

    def create_key(
        self,
        *,
        name: str,
        models: list[str] | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        budget_usd: float | None = None,
        expires_at: float | None = None,
        admin: bool = False,
    ) -> tuple[str, KeyRecord]:
        """A new key: the secret (returned once, never stored) and its record. An ``admin`` key
        opens the admin API and dashboard and nothing else.

        A name already held by a live (unrevoked) key raises :class:`ValueError`.
        """
        from sqlalchemy import insert
        from sqlalchemy.exc import IntegrityError

        from .tables import keys_table

        _validate_key_fields(name, models, rpm, tpm, budget_usd)
        secret = _Secret(KEY_PREFIX + secrets.token_urlsafe(32))
        record = KeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            prefix=secret[:DISPLAY_PREFIX_LEN],
            models=tuple(models if models is not None else ["*"]),
            rpm=rpm,
            tpm=tpm,
            budget_usd=budget_usd,
            created_at=time.time(),
            expires_at=expires_at,
            revoked=False,
            admin=admin,
        )
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(keys_table).values(**_key_row(record), key_hash=hash_secret(secret)))
                conn.exec_driver_sql(self._bump, (KEYS_COUNTER,))
        except IntegrityError:
            raise ValueError(f"a live key named {name!r} already exists") from None
        return secret, record

    def find_key(self, secret: str) -> KeyRecord | None:
        """The key with this secret, revoked or expired included: the caller decides what to refuse."""
        rows = self.db.rows(self._sql.key_by_hash, (hash_secret(secret),))
        return _key_record(rows[0]) if rows else None

    def list_keys(self, *, include_revoked: bool = False) -> list[KeyRecord]:
        sql = self._sql.all_keys if include_revoked else self._sql.unrevoked_keys
        return [_key_record(row) for row in self.db.rows(sql)]

    def revoke_key(self, name_or_id: str) -> bool:
        """Revoke the live key with this id, else the live key with this name; False if none."""
        with self.db.transaction() as tx:
            for column in ("id", "name"):
                if tx.execute(self._sql.revoke[column], (True, time.time(), name_or_id)):
                    tx.execute(self._bump, (KEYS_COUNTER,))
                    return True
        return False

    def update_key(self, name_or_id: str, changes: dict[str, Any]) -> KeyRecord | None:
        """Change a live key's models, limits or expiry (a value of None lifts a limit); the
        changed record, or None when no live key has this id or name. Every replica reloads it
        within a second (the key counter moves in the same transaction)."""
        from sqlalchemy import false, select, update

        from .tables import keys_table

        unknown = set(changes) - KEY_CHANGES
        if unknown:
            raise ValueError(f"a key's {', '.join(sorted(unknown))} cannot be changed")
        live = keys_table.c.revoked == false()
        with self.engine.begin() as conn:
            for column in (keys_table.c.id, keys_table.c.name):
                row = conn.execute(select(keys_table).where(column == name_or_id, live)).mappings().first()
                if row is not None:
                    break
            else:
                return None
            record = _key_record_of({**row, **changes})
            _validate_key_fields(
                record.name, changes.get("models"), record.rpm, record.tpm, record.budget_usd
            )
            conn.execute(update(keys_table).where(keys_table.c.id == record.id).values(**changes))
            conn.exec_driver_sql(self._bump, (KEYS_COUNTER,))
        return record

    def versions(self) -> dict[str, int]:
        """Every change counter: ``keys`` (a key created, revoked or changed) and ``responses``
        (a stored response deleted).

        Gateways poll this four times a second, so it is one constant statement over a two-row
        table, outside a transaction. Read it *before* :meth:`live_keys`: a change committed in
        between then shows up as a newer counter on the next poll instead of being missed.
        """
        return {str(name): int(version) for name, version in self.db.rows(_READ_VERSIONS)}

    def keys_version(self) -> int:
        """The key table's change counter (see :meth:`versions`)."""
        return self.versions()[KEYS_COUNTER]

    def live_keys(self) -> list[tuple[str, KeyRecord]]:
        """Every unrevoked key with its SHA-256 hash, expired ones included (callers decide), so a
        gateway can hold the whole key table in memory and look keys up by hash without a read."""
        return [(row[-1], _key_record(row)) for row in self.db.rows(self._sql.live_keys)]

    # -- usage ---------------------------------------------------------------------------------

    def write_usage(self, records: Sequence[UsageRecord]) -> None:
        """All records in one transaction: a batch lands whole or not at all."""
        if records:
            self.run_statements(self.usage_statements(list(map(usage_values, records))))

    def usage_statements(
        self, rows: Sequence[tuple[Any, ...]], largest: int = _STATEMENT_ROWS[0]
    ) -> Statements:
        """The multi-row INSERTs that write ``rows`` (records' :func:`usage_values`), for
        :meth:`run_statements`, none of more than ``largest`` rows.

        Their parameters are chained in C, so building them on the event loop costs microseconds;
        sqlite3's executemany (which gives up and retakes the GIL for every row) cost more than the
        write.
        """
        return self._usage_rows.statements(rows, largest)

    def run_statements(self, statements: Statements) -> None:
        """``statements`` in one transaction, meant for a worker thread: the driver runs them and
        the commit in C with the GIL released, so the event loop keeps running through the write
        and its fsync (a write on the loop stalled it for milliseconds, the gateway's p99 at one
        connection)."""
        self.db.run(statements)

    def usage_summary(
        self, *, since: float, by: str = "model", until: float | None = None, **only: str | None
    ) -> list[UsageRow]:
        """Totals per key, model or backend since ``since``, costliest first (then busiest); or per
        UTC day or hour (``2026-12-01``, ``2026-12-01 13:00``), oldest first. ``until`` ends the
        window; ``only`` keeps the records of one ``key``, ``model`` or ``backend`` (None: all).

        Errors are records with status >= 400. p50/p95 latency use the nearest-rank method (the
        smallest observed latency with at least p% of the group at or below it), computed in Python
        so both engines agree exactly.
        """
        from sqlalchemy import select

        from .tables import bucket, summary_query, usage_table, window

        if by not in GROUPINGS:
            raise ValueError(f"by must be one of {', '.join(GROUPINGS)}, got {by!r}")
        group = bucket(by, self.dialect) if by in TIME_BUCKETS else usage_table.c[GROUP_COLUMNS[by]]
        where = window(since, until, only)
        with self.engine.connect() as conn:
            totals = conn.execute(summary_query(group, where)).all()
            latencies = _latencies_by_group(
                conn.execute(select(group, usage_table.c.latency_ms).where(where))
            )
        if by in TIME_BUCKETS:
            totals = sorted(totals, key=operator.itemgetter(0))
        rows = [_usage_row(t, latencies.get(t[0], []), _group_label(t[0], by)) for t in totals]
        if by not in TIME_BUCKETS:
            rows.sort(key=lambda row: (-row.cost, -row.requests, row.group))
        return rows

    def requests(
        self,
        *,
        limit: int = 100,
        before: int | None = None,
        since: float | None = None,
        until: float | None = None,
        status: str | None = None,
        request_id: str | None = None,
        **only: str | None,
    ) -> list[dict[str, Any]]:
        """The request log: usage records newest first, each with its row ``id`` (pass the last one
        as ``before`` for the next page). ``status`` is ``ok``, ``error`` or one HTTP status;
        ``only`` keeps one ``key``, ``model`` or ``backend``."""
        from sqlalchemy import select

        from .tables import usage_table, window

        c = usage_table.c
        stmt = select(usage_table).where(window(since, until, only)).order_by(c.id.desc()).limit(limit)
        if before is not None:
            stmt = stmt.where(c.id < before)
        if request_id:
            stmt = stmt.where(c.request_id == request_id)
        if status == "ok":
            stmt = stmt.where(c.status < 400)
        elif status == "error":
            stmt = stmt.where(c.status >= 400)
        elif status:
            stmt = stmt.where(c.status == int(status))
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(stmt).mappings()]

    def spent_usd(self, key_name: str, *, since: float | None = None) -> float:
        """What a key has cost, all time or since ``since``; unpriced requests count as zero."""
        if since is None:
            return float(self.db.rows(self._sql.spent, (key_name,))[0][0])
        return float(self.db.rows(self._sql.spent_since, (key_name, since))[0][0])

    def spent_by_key(self, since: float | None = None) -> dict[str, float]:
        """Every key's spend, all time or since ``since``, in one query (for a spent column);
        keys without priced usage are absent, requests without a key are not counted."""
        from sqlalchemy import func, select

        from .tables import usage_table

        key, cost = usage_table.c.key_name, usage_table.c.cost
        stmt = select(key, func.coalesce(func.sum(cost), 0.0)).where(key.is_not(None)).group_by(key)
        if since is not None:
            stmt = stmt.where(usage_table.c.time >= since)
        with self.engine.connect() as conn:
            return {name: float(total) for name, total in conn.execute(stmt)}

    # -- dashboard sessions --------------------------------------------------------------------

    def create_session(self, key_hash: str, *, ttl: float) -> tuple[str, str]:
        """A new session for the admin key with this hash: (session id, CSRF token). Sessions past
        their expiry are cleared on the way."""
        from sqlalchemy import insert

        from .tables import sessions_table

        session_id, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), time.time()
        row = {
            "id_hash": hash_secret(session_id),
            "key_hash": key_hash,
            "csrf": csrf,
            "created_at": now,
            "expires_at": now + ttl,
        }
        with self.engine.begin() as conn:
            conn.execute(sessions_table.delete().where(sessions_table.c.expires_at < now))
            conn.execute(insert(sessions_table).values(**row))
        return session_id, csrf

    def session(self, session_id: str) -> tuple[str, str] | None:
        """(admin key hash, CSRF token) of a live session, or None."""
        from sqlalchemy import select

        from .tables import sessions_table

        c = sessions_table.c
        stmt = select(c.key_hash, c.csrf).where(
            c.id_hash == hash_secret(session_id), c.expires_at > time.time()
        )
        with self.engine.connect() as conn:
            row = conn.execute(stmt).first()
        return (str(row[0]), str(row[1])) if row is not None else None

    def end_session(self, session_id: str) -> None:
        from .tables import sessions_table

        with self.engine.begin() as conn:
            conn.execute(sessions_table.delete().where(sessions_table.c.id_hash == hash_secret(session_id)))

    # -- stored responses ----------------------------------------------------------------------

    def put_response(self, response: StoredResponse) -> None:
        """Insert or replace by id (a continued or cancelled response is stored again)."""
        self.put_responses([response])

    def put_responses(self, responses: list[StoredResponse]) -> None:
        """Insert or replace many in one transaction (the gateway writes them in batches)."""
        if responses:
            self.run_statements(self.response_statements([PackedResponse.pack(r) for r in responses]))

    def response_statements(self, responses: list[PackedResponse]) -> Statements:
        """The upserts that write ``responses``, for :meth:`run_statements` (see
        :meth:`usage_statements`: the gateway awaits this write before a stored response's last
        event reaches its client, so it must cost little)."""
        unique = list({r.id: r for r in responses}.values())  # one statement may not upsert an id twice
        items = {item_id: r.id for r in unique for item_id in r.item_ids}
        rows = list(map(_response_row_values, unique))
        return [*self._response_rows.statements(rows), *self._item_rows.statements(list(items.items()))]

    def get_response(self, id: str) -> StoredResponse | None:
        return _stored_response(self.db.rows(self._sql.response, (id,)))

    def get_response_holding(self, item_id: str) -> StoredResponse | None:
        """The stored response one of whose output items has the id ``item_id``."""
        return _stored_response(self.db.rows(self._sql.response_holding, (item_id,)))

    def delete_response(self, id: str) -> bool:
        """Delete a stored response; other replicas forget their copy when the counter moves."""
        with self.db.transaction() as tx:
            deleted = tx.execute(self._sql.delete_response, (id,))
            tx.execute(self._sql.delete_items, (id,))
            if deleted:
                tx.execute(self._bump, (RESPONSES_COUNTER,))
        return bool(deleted)


class _Queries:
    """The SQL of what a serving gateway reads and changes, in its driver's parameter style."""

    def __init__(self, m: str) -> None:
        keys = f"SELECT {_KEY_COLUMNS} FROM mw_keys"
        self.key_by_hash = f"{keys} WHERE key_hash = {m}"
        self.all_keys = f"{keys} ORDER BY created_at, name"
        self.unrevoked_keys = f"{keys} WHERE NOT revoked ORDER BY created_at, name"
        self.live_keys = f"SELECT {_KEY_COLUMNS}, key_hash FROM mw_keys WHERE NOT revoked"
        self.revoke = {
            column: f"UPDATE mw_keys SET revoked = {m}, revoked_at = {m} WHERE {column} = {m} AND NOT revoked"
            for column in ("id", "name")
        }
        self.spent = f"SELECT COALESCE(SUM(cost), 0.0) FROM mw_usage WHERE key_name = {m}"
        self.spent_since = f"{self.spent} AND time >= {m}"
        responses = f"SELECT {', '.join(RESPONSE_FIELDS)} FROM mw_responses WHERE id = "
        self.response = responses + m
        self.response_holding = f"{responses}(SELECT response_id FROM mw_response_items WHERE item_id = {m})"
        self.delete_response = f"DELETE FROM mw_responses WHERE id = {m}"
        self.delete_items = f"DELETE FROM mw_response_items WHERE response_id = {m}"


def _stored_response(rows: list[tuple[Any, ...]]) -> StoredResponse | None:
    if not rows:
        return None
    id, key_name, model, created_at, previous, input_items, output_items, response, instructions = rows[0]
    return StoredResponse(
        id=id,
        key_name=key_name,
        model=model,
        created_at=created_at,
        previous_response_id=previous,
        input_items=orjson.loads(input_items),
        output_items=orjson.loads(output_items),
        response=orjson.loads(response),
        instructions=instructions,
    )


class _RowWriter:
    """Rows of one table as multi-row INSERT statements, straight to the driver.

    Statements come in a few fixed sizes (64, 16, 4 and 1 rows): the driver keeps up to 128
    prepared statements per connection, and one per batch size, each holding its compiled program
    (hundreds of kB for hundreds of rows), grew the gateway by ~45 MiB over 200k requests. The
    driver binds a statement's values holding the GIL, which the event loop then waits for: 64
    usage rows hold it ~0.16 ms, 256 held it ~0.65 ms, the gateway's p99 at one connection (1.16
    ms against 0.83). Smaller statements cost more CPU under load, each one a wait for the GIL.
    SQLite takes at most 32,766 bound parameters per statement; the largest size stays under it.
    """

    def __init__(self, table: str, columns: Sequence[str], marker: str, suffix: str = "") -> None:
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
        row = f"({', '.join([marker] * len(columns))})"
        sizes = [n for n in _STATEMENT_ROWS if n * len(columns) <= 30_000] or [1]
        self._sql = {n: head + ", ".join([row] * n) + suffix for n in sizes}

    def statements(self, rows: Sequence[Sequence[Any]], largest: int = _STATEMENT_ROWS[0]) -> Statements:
        """``rows``, each its columns' values in order, in statements of up to ``largest`` rows."""
        out, at = [], 0
        for size, sql in self._sql.items():
            while size <= largest and len(rows) - at >= size:
                out.append((sql, tuple(chain.from_iterable(rows[at : at + size]))))
                at += size
        return out


def hash_secret(secret: str) -> str:
    """The stored form of a key secret: SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _validate_key_fields(
    name: str, models: list[str] | None, rpm: int | None, tpm: int | None, budget_usd: float | None
) -> None:
    """Reject nonsense before it is stored, where it would silently lock a key out or in."""
    if not name or not name.strip():
        raise ValueError("key name must not be empty")
    given: object = models  # typed as a list, but the CLI and config hand us whatever was parsed
    if given is not None and (
        not isinstance(given, list) or not all(isinstance(m, str) and m for m in given)
    ):
        raise ValueError("models must be a list of non-empty glob patterns")
    for label, limit in (("rpm", rpm), ("tpm", tpm)):
        if limit is not None and limit < 1:
            raise ValueError(f"{label} must be at least 1")
    if budget_usd is not None and budget_usd < 0:
        raise ValueError("budget_usd must not be negative")


def _key_row(record: KeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "models": list(record.models),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget_usd": record.budget_usd,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked": record.revoked,
        "admin": record.admin,
    }


def _key_record(row: Sequence[Any]) -> KeyRecord:
    """A key from a row of ``_KEY_COLUMNS``, its ``models`` still JSON text."""
    return _key_record_of({**dict(zip(_KEY_FIELDS, row, strict=False)), "models": orjson.loads(row[3])})


def _key_record_of(row: Any) -> KeyRecord:
    """A key from a mapping of its columns."""
    return KeyRecord(
        id=row["id"],
        name=row["name"],
        prefix=row["prefix"],
        models=tuple(row["models"]),
        rpm=row["rpm"],
        tpm=row["tpm"],
        budget_usd=row["budget_usd"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked=bool(row["revoked"]),
        admin=bool(row["admin"]),
    )


def _latencies_by_group(rows: Iterable[Any]) -> dict[Any, list[float]]:
    grouped: dict[Any, list[float]] = {}
    for group, latency in rows:
        grouped.setdefault(group, []).append(float(latency))
    for values in grouped.values():
        values.sort()
    return grouped


def _group_label(group: Any, by: str) -> str:
    """A grouping value as shown: a bucket index as its UTC start, a missing key as ``(none)``."""
    if by in TIME_BUCKETS:
        width, layout = TIME_BUCKETS[by]
        return datetime.fromtimestamp(int(group) * width, UTC).strftime(layout)
    return NO_GROUP if group is None else str(group)


def _usage_row(total: Any, latencies: list[float], label: str) -> UsageRow:
    _, requests, errors, input_tokens, cached, output, reasoning, cost = total
    return UsageRow(
        group=label,
        requests=int(requests),
        errors=int(errors),
        input_tokens=int(input_tokens),
        cached_tokens=int(cached),
        output_tokens=int(output),
        reasoning_tokens=int(reasoning),
        cost=float(cost),
        p50_ms=percentile(latencies, 50),
        p95_ms=percentile(latencies, 95),
    )


def percentile(sorted_values: Sequence[float], pct: int) -> float | None:
    """Nearest-rank percentile of ascending values: always an observed value, None when empty.

    The rank is computed in integers so 95% of 20 is exactly the 19th value, not a float artefact.
    """
    if not sorted_values:
        return None
    rank = max(1, -(-pct * len(sorted_values) // 100))
    return sorted_values[rank - 1]


# ----------------------------------------------------------------------------------------------
# UsageWriter
# ----------------------------------------------------------------------------------------------


class UsageWriter:
    """Batches usage records off the request path: add() never blocks or awaits; a background task
    flushes every `interval` seconds or when `max_batch` records are waiting, running the store write in a
    worker thread (asyncio.to_thread). stop() flushes everything left (a clean shutdown loses nothing); a
    crash loses at most one interval. A failed write is logged (never raised into request handling) and its
    batch kept for the next attempt, bounded (drop oldest beyond 100k records, counting drops).

    After a failed write the writer backs off (doubling the interval, up to ``max_backoff``) and a full
    batch no longer wakes it early, so a database outage is not hammered by a retry per request.
    ``add`` must be called on the event loop's thread (it may set an asyncio event).

    ``quiet`` tells when the gateway serves one request at a time: the writer then binds statements
    of :data:`QUIET_STATEMENT_ROWS` rows, each holding the GIL a quarter as long, which that request
    would wait out (p99 at one connection 0.80 -> 0.50 ms). Busy, it binds fewer, larger ones: each
    statement waits for the GIL the busy loop holds, and small ones cost more CPU at 32 connections
    and fell behind.
    """

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 1.0,
        max_batch: int = 500,
        max_pending: int = 100_000,
        max_backoff: float = 30.0,
        quiet: Callable[[], bool] = lambda: False,
    ) -> None:
        if interval <= 0 or max_batch < 1 or max_pending < 1:
            raise ValueError("interval must be positive; max_batch and max_pending at least 1")
        self.store = store
        self.interval = interval
        self.max_batch = max_batch
        self.max_pending = max_pending
        self.max_backoff = max(max_backoff, interval)
        self._quiet = quiet
        self.dropped = 0
        self._queue: deque[tuple[Any, ...]] = deque()  # each record's usage_values
        self._in_flight = 0
        self._healthy = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def pending(self) -> int:
        """Records not yet written, including a batch being written right now."""
        return len(self._queue) + self._in_flight

    @property
    def healthy(self) -> bool:
        """False from a failed write until a write succeeds (for health reporting)."""
        return self._healthy

    def wake(self) -> None:
        """Write what is buffered now instead of after the backoff.

        The gateway calls it when its health monitor sees the store reachable again, so a backlog
        built up during an outage does not wait out a 30 s backoff. Call it on the event loop's
        thread, like :meth:`add`.
        """
        self._wake.set()

    def add(self, record: UsageRecord) -> None:
        # Its values are taken now, one C call per request: taken at the flush, 500 records' at
        # once held the event loop for ~0.4 ms.
        self._queue.append(usage_values(record))
        self._bound()
        if self._healthy and len(self._queue) >= self.max_batch:
            self._wake.set()

    async def start(self) -> None:
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="modelwire-usage-writer")

    async def flush(self) -> None:
        """Write everything queued now, in batches; a failure is logged and its records kept."""
        await self._flush_all()

    async def stop(self) -> None:
        """Stop the background task, letting an in-flight write finish, then flush what is left."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        if not await self._flush_all(until_empty=True) and self.pending:
            log.error("usage writer stopped with %d records unwritten (store unavailable)", self.pending)

    async def _run(self) -> None:
        delay = self.interval
        while True:
            await self._sleep(delay)
            if self._stopping:
                return
            ok = await self._flush_all()
            delay = self.interval if ok else min(delay * 2, self.max_backoff)

    async def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds, or less if a full batch or stop() wakes us."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        self._wake.clear()

    async def _flush_all(self, *, until_empty: bool = False) -> bool:
        """Write the records queued when the flush began; with ``until_empty``, also those queued
        while it writes. Chasing the queue made a busy gateway write a few records at a time, one
        transaction (and thread hop) after another: ~100 a second at 1,600 requests a second."""
        async with self._lock:
            left = sys.maxsize if until_empty else len(self._queue)
            while self._queue and left > 0:
                size = min(self.max_batch, left)
                if not await self._write_batch(size):
                    return False
                left -= size
            return True

    async def _write_batch(self, size: int) -> bool:
        batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
        self._in_flight = len(batch)
        try:
            largest = QUIET_STATEMENT_ROWS if self._quiet() else _STATEMENT_ROWS[0]
            statements = self.store.usage_statements(batch, largest)
            await asyncio.to_thread(self.store.run_statements, statements)
        except Exception as exc:
            self._in_flight = 0  # the batch is back in the queue; count it once
            self._keep(batch)
            self._healthy = False
            log.warning(
                "usage write of %d records failed, kept for retry (%d pending): %s",
                len(batch),
                self.pending,
                describe_error(exc),
            )
            return False
        finally:
            self._in_flight = 0
        self._healthy = True
        return True

    def _keep(self, batch: list[tuple[Any, ...]]) -> None:
        """Put a failed batch back at the front, oldest first, within the bound."""
        self._queue.extendleft(reversed(batch))
        self._bound()

    def _bound(self) -> None:
        while len(self._queue) > self.max_pending:
            self._queue.popleft()
            self.dropped += 1


def error_cause(exc: BaseException) -> str:
    """The first line of what went wrong: SQLAlchemy's own text goes on to repeat the statement and
    its parameters, which have no place in a log line or an error message."""
    cause = getattr(exc, "orig", None) or exc
    return first_line(cause) or type(cause).__name__


def describe_error(exc: BaseException) -> str:
    """:func:`error_cause` named by its kind, for the log: ``OperationalError: connection refused``."""
    cause = getattr(exc, "orig", None) or exc
    line = first_line(cause)
    return f"{type(cause).__name__}: {line}" if line else type(cause).__name__


__all__ = [
    "KeyRecord",
    "PackedResponse",
    "SchemaError",
    "Statements",
    "Store",
    "StoredResponse",
    "Upgrade",
    "UsageRecord",
    "UsageRow",
    "UsageWriter",
    "describe_error",
    "error_cause",
    "hash_secret",
    "open_engine",
    "percentile",
    "schema_revision",
    "upgrade_schema",
    "usage_values",
]
