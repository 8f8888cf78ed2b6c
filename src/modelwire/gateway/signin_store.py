"""The sealed sign-in row in a PostgreSQL store (see :mod:`.credentials`): read, written, and
locked while one replica refreshes it. Loaded only by a gateway that shares a sign-in."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from ..errors import AuthenticationError, ServiceUnavailableError
from ..providers.codex import Held, Tokens
from .credentials import CODEX, LOCK_TIMEOUT, Cipher
from .store import error_cause
from .tables import credentials_table

_UPSERT = text(
    f"INSERT INTO {credentials_table.name} (name, version, secret, updated_at) "
    "VALUES (:name, 1, :secret, :now) ON CONFLICT (name) DO UPDATE SET "
    f"version = {credentials_table.name}.version + 1, secret = excluded.secret, "
    "updated_at = excluded.updated_at"
)


class DatabaseTokenStore:
    """A sign-in's tokens in one sealed row of ``mw_credentials`` (PostgreSQL)."""

    where = "the gateway's store"

    def __init__(self, engine: Engine, cipher: Cipher, name: str = CODEX) -> None:
        self.engine, self.cipher, self.name = engine, cipher, name
        self._context = f"mw_credentials:{name}".encode()

    async def read(self) -> Tokens:
        return await asyncio.to_thread(self._read)

    async def write(self, tokens: Tokens) -> None:
        await asyncio.to_thread(self._write, tokens)

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[Held]:
        """The row, locked until the tokens are replaced or the block ends (then rolled back).

        The lock spans the refresh's HTTP call: other replicas wait for it, in worker threads, so
        no event loop blocks; a crashed holder's connection drops and frees it.
        """
        held = await asyncio.to_thread(self._lock)
        try:
            yield held
        finally:
            await asyncio.to_thread(held.conn.close)  # rolls back a transaction not committed

    def _read(self) -> Tokens:
        with _store_errors(), self.engine.connect() as conn:
            row = conn.execute(self._select()).first()
        if row is None:
            raise _no_sign_in()
        return self._open(row.secret)

    def _write(self, tokens: Tokens) -> None:
        with _store_errors(), self.engine.begin() as conn:
            conn.execute(_UPSERT, {"name": self.name, "secret": self._seal(tokens), "now": time.time()})

    def _lock(self) -> _RowHeld:
        with _store_errors():
            conn = self.engine.connect()
            try:
                conn.begin()
                conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
                row = conn.execute(self._select().with_for_update()).first()
                if row is None:
                    raise _no_sign_in()
                return _RowHeld(self, conn, self._open(row.secret), row.version)
            except BaseException:
                conn.close()
                raise

    def _select(self) -> Any:
        table = credentials_table
        return select(table.c.version, table.c.secret).where(table.c.name == self.name)

    def _seal(self, tokens: Tokens) -> bytes:
        return self.cipher.seal(orjson.dumps(tokens.document()), self._context)

    def _open(self, sealed: bytes) -> Tokens:
        tokens = Tokens.from_document(orjson.loads(self.cipher.open(bytes(sealed), self._context)))
        if tokens is None:
            raise _no_sign_in()
        return tokens


@dataclass(slots=True)
class _RowHeld:
    store: DatabaseTokenStore
    conn: Connection
    tokens: Tokens
    version: int

    async def replace(self, tokens: Tokens) -> None:
        await asyncio.to_thread(self._replace, tokens)
        self.tokens = tokens

    def _replace(self, tokens: Tokens) -> None:
        table = credentials_table
        with _store_errors():
            # Compare-and-swap on the version read under the lock: a write that slipped past it
            # (a sign-in, which takes no lock) wins, and this refresh is not stored over it.
            done = self.conn.execute(
                update(table)
                .where(table.c.name == self.store.name, table.c.version == self.version)
                .values(version=self.version + 1, secret=self.store._seal(tokens), updated_at=time.time())
            )
            if done.rowcount != 1:
                raise AuthenticationError(
                    "the Codex sign-in changed while it was being refreshed; try again", status=401
                )
            self.conn.commit()
        self.version += 1


@contextlib.contextmanager
def _store_errors() -> Any:
    """A database failure as the gateway's own unavailability (its cause's first line only)."""
    try:
        yield
    except SQLAlchemyError as exc:
        raise ServiceUnavailableError(
            f"the gateway's store cannot serve the Codex sign-in now: {error_cause(exc)}",
            code="credentials_store_unavailable",
        ) from None


def _no_sign_in() -> AuthenticationError:
    return AuthenticationError(
        "no Codex sign-in in the gateway's store yet: run `modelwire login --config FILE` (or "
        "`modelwire login --device-code --config FILE`) with this gateway's config",
        status=401,
        code="codex_login_required",
    )
