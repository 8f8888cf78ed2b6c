"""The store's connections, straight on the database drivers (sqlite3, psycopg 3).

What a serving process asks of its store is a dozen fixed statements: the key table and its change
counters, a key's spend, stored responses, video jobs, batched writes. They run here in plain SQL
on pooled driver connections, so a gateway never loads SQLAlchemy (16 MiB resident, a sixth of a
worker). The CLI, the admin API, the dashboard and schema migrations build their queries with
SQLAlchemy, on an engine whose connections come from :meth:`Database.connect` (same settings, the
same in-memory database).

Every driver error leaves as :class:`StoreError`, its ``orig`` the driver's own exception.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit

SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+pysqlite"})
POSTGRES_SCHEMES = frozenset({"postgres", "postgresql", "postgresql+psycopg"})
IDLE_CONNECTIONS = 8  # kept per process; the worker threads that run store calls are fewer
PING_AFTER_IDLE = (
    1.0  # seconds; a connection idle longer is checked before use (the database may have restarted)
)

Statements = list[tuple[str, tuple[Any, ...]]]  # SQL in the driver's parameter style, and its values


class StoreError(Exception):
    """The database failed a statement or a connection; ``orig`` is the driver's exception."""

    def __init__(self, orig: BaseException, *, lost_connection: bool = False) -> None:
        super().__init__(first_line(orig) or type(orig).__name__)
        self.orig = orig
        self.lost_connection = lost_connection  # the connection failed with it, and was dropped


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed store URL: the engine, and where (a file, ``None`` for memory, or a libpq URI)."""

    dialect: str  # "sqlite" or "postgresql"
    where: str | None = field(repr=False)  # may hold a password
    display: str = ""  # the URL with its password hidden, for messages
    query: tuple[tuple[str, str], ...] = field(default=(), repr=False)

    @property
    def in_memory(self) -> bool:
        return self.dialect == "sqlite" and self.where is None


def parse_target(url: str) -> Target:
    """What a store URL names; :class:`ValueError` (never echoing the URL) when it is not one."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or any(c.isspace() for c in url):
        # The text may hold a database password, so it stays out of the message.
        raise ValueError("store URL is not a valid sqlite:/// or postgresql:// URL")
    scheme = scheme.lower()
    if scheme in SQLITE_SCHEMES:
        path = unquote(rest.partition("?")[0].removeprefix("/"))
        where = None if path in ("", ":memory:") else path
        return Target("sqlite", where, f"sqlite:///{path}")
    if scheme in POSTGRES_SCHEMES:
        parts = urlsplit("postgresql://" + rest)
        # Shown as written (postgres://, postgresql+psycopg://), given to libpq as postgresql://.
        shown = _hide_password(urlsplit(url))
        return Target("postgresql", parts.geturl(), shown, tuple(parse_qsl(parts.query)))
    raise ValueError(f"unsupported store URL scheme {scheme!r}: use sqlite:/// or postgresql://")


def _hide_password(parts: SplitResult) -> str:
    if parts.password is None:
        return parts.geturl()
    user, _, _ = parts.netloc.rpartition("@")[0].partition(":")
    return parts._replace(netloc=f"{user}:***@{parts.netloc.rpartition('@')[2]}").geturl()


class Database:
    """Pooled connections to one store, and the two things a serving process does with them:
    read rows, and run statements in one transaction. Thread-safe."""

    def __init__(self, target: Target, *, schema: str | None = None) -> None:
        self.target = target
        self.dialect = target.dialect
        self._errors: tuple[type[Exception], ...]
        if self.dialect == "sqlite":
            if schema is not None:
                raise ValueError("schema= applies to PostgreSQL stores only")
            self.marker, self._errors, self._connect_args = "?", (sqlite3.Error,), {}
            _bind_none_and_bool_directly()
            if target.where is not None:
                Path(target.where).parent.mkdir(parents=True, exist_ok=True)
        else:
            import psycopg  # only a PostgreSQL store pays for the driver

            self.marker, self._errors = "%s", (psycopg.Error,)
            self._connect_args = _postgres_args(dict(target.query), schema)
        self._idle: list[tuple[Any, float]] = []
        self._lock = threading.Lock()
        # One shared connection keeps an in-memory database alive across threads.
        self._shared = self._open() if target.in_memory else None

    # -- connections ------------------------------------------------------------------------------

    def connect(self) -> Any:
        """A new driver connection with the store's settings, in the driver's own transaction
        mode (SQLAlchemy's, as its creator); an in-memory store's one connection."""
        return self._shared if self._shared is not None else self._open(autocommit=False)

    def _open(self, *, autocommit: bool = True) -> Any:
        """Pooled PostgreSQL connections run in autocommit: a read is one statement, without
        BEGIN and ROLLBACK around it; :meth:`transaction` opens one explicitly."""
        try:
            if self.dialect == "sqlite":
                return _sqlite_connection(self.target.where)
            import psycopg

            conn = psycopg.connect(self.target.where or "", autocommit=autocommit, **self._connect_args)
            _json_as_text(conn)
            return conn
        except self._errors as exc:
            raise StoreError(exc) from None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._shared is not None:
            with self._lock:
                yield from self._using(self._shared, keep=lambda _conn: None)
            return
        yield from self._using(self._checkout(), keep=self._checkin)

    def _using(self, conn: Any, keep: Any) -> Iterator[Any]:
        try:
            yield conn
        except self._errors as exc:
            raise StoreError(exc, lost_connection=self._drop_if_broken(conn, keep)) from None
        except BaseException:
            self._drop_if_broken(conn, keep)
            raise
        keep(conn)

    def _checkout(self) -> Any:
        with self._lock:
            conn, since = self._idle.pop() if self._idle else (None, 0.0)
        if conn is None:
            return self._open()
        if self.dialect == "postgresql" and time.monotonic() - since > PING_AFTER_IDLE and not _alive(conn):
            conn.close()
            return self._open()
        return conn

    def _checkin(self, conn: Any) -> None:
        with self._lock:
            if len(self._idle) < IDLE_CONNECTIONS:
                self._idle.append((conn, time.monotonic()))
                return
        conn.close()

    def _drop_if_broken(self, conn: Any, keep: Any) -> bool:
        """After a failed statement: roll back, and keep the connection only if that worked.
        Whether it was dropped; then the idle ones go too, as a restarted database dropped them
        all (each would fail its next statement)."""
        try:
            if self.dialect == "postgresql" and (conn.closed or conn.broken):
                raise ConnectionError
            conn.rollback()
        except Exception:
            if conn is not self._shared:
                with contextlib.suppress(Exception):
                    conn.close()
                self._close_idle()
            return True
        keep(conn)
        return False

    # -- statements -------------------------------------------------------------------------------

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of one query, outside any transaction. A connection the database dropped
        (a restart) fails the read once: it is made again on a new connection."""
        try:
            return self._rows(sql, params)
        except StoreError as exc:
            if not exc.lost_connection:
                raise
        return self._rows(sql, params)

    def _rows(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._connection() as conn:
            cursor = conn.execute(sql, params)
            try:
                return list(cursor.fetchall())
            finally:
                cursor.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Statements that commit together at the block's end, or not at all."""
        with self._connection() as conn:
            cursor = conn.cursor()
            try:
                if self.dialect == "postgresql":
                    with conn.transaction():
                        yield Transaction(cursor)
                else:
                    yield Transaction(cursor)
                    conn.commit()
            finally:
                cursor.close()

    def run(self, statements: Statements) -> None:
        """``statements`` in one transaction. The drivers run them and the commit in C with the GIL
        released, so the event loop keeps running through a write made from a worker thread."""
        with self.transaction() as tx:
            for sql, params in statements:
                tx.execute(sql, params)

    def close(self) -> None:
        self._close_idle()
        if self._shared is not None:
            with contextlib.suppress(Exception):
                self._shared.close()

    def _close_idle(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _since in idle:
            with contextlib.suppress(Exception):
                conn.close()


class Transaction:
    """A cursor inside :meth:`Database.transaction`: each statement answers its changed row count."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cursor.execute(sql, params)
        return int(self._cursor.rowcount)


# ------------------------------------------------------------------------------------------ SQLite


def _sqlite_connection(path: str | None) -> sqlite3.Connection:
    conn = sqlite3.connect(path or ":memory:", check_same_thread=False)
    # WAL lets the CLI read while the gateway writes; NORMAL sync is durable enough under WAL. The
    # gateway mostly appends: a small page cache per pooled connection keeps its memory flat
    # instead of growing by megabytes as the usage table does.
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-256"):
        conn.execute(f"PRAGMA {pragma}").close()
    return conn


def _bind_none_and_bool_directly() -> None:
    """sqlite3 binds None, and bool (an int subclass), only after looking for an adapter: two
    attribute lookups that raise and drop an AttributeError each, ~0.6 µs per value, and a usage
    record holds several. Adapters giving the value sqlite3 would bind anyway skip that search.
    They apply to every sqlite3 connection in the process, with the same stored values."""
    sqlite3.register_adapter(type(None), set[None]().discard)  # a C callable that returns None
    sqlite3.register_adapter(bool, int)


# -------------------------------------------------------------------------------------- PostgreSQL


def _postgres_args(query: dict[str, str], schema: str | None) -> dict[str, Any]:
    # A database that stops answering (a partition, not a refusal) is noticed in seconds, not after
    # the operating system's TCP timeout; a URL's own connect_timeout wins.
    args: dict[str, Any] = {} if "connect_timeout" in query else {"connect_timeout": 5}
    if schema is not None:
        # search_path set at connection start (libpq ``options``) holds for every pooled
        # connection without a per-checkout statement, and keeps raw SQL in the schema too.
        args["options"] = f"{query.get('options', '')} -csearch_path={schema}".strip()
    return args


def _json_as_text(conn: Any) -> None:
    """JSON columns read as their text on both engines: the store decodes them itself (orjson)."""
    from psycopg.types.string import TextLoader

    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, TextLoader)


def _alive(conn: Any) -> bool:
    if conn.closed or conn.broken:
        return False
    try:
        conn.execute("SELECT 1").close()
    except Exception:
        return False
    return True


def first_line(cause: BaseException) -> str:
    """The first line of an error's text: a driver's goes on to quote the statement."""
    text = str(cause).strip()
    return text.splitlines()[0] if text else ""


__all__ = ["Database", "Statements", "StoreError", "Target", "Transaction", "first_line", "parse_target"]
