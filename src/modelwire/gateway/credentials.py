"""Sign-in credentials a gateway's replicas share through its PostgreSQL store, encrypted at rest.

Why: replicas behind a load balancer each need the Codex route's OAuth tokens, and its refresh
tokens are single-use, so one copy per replica would have each replica's refresh log the others
out. With a PostgreSQL store the tokens live in ``mw_credentials`` instead: one row, read by every
replica, refreshed under that row's lock (``SELECT … FOR UPDATE``), so exactly one replica spends
the refresh token and the others, once the lock is theirs, find the winner's new tokens and adopt
them (:meth:`modelwire.providers.codex.CodexCredentials._rotate`). A SQLite store is one machine's:
its gateway keeps the tokens in the Codex CLI's ``auth.json`` (mode 0600).

Sealing: AES-256-GCM under the 32-byte key in ``MODELWIRE_CREDENTIALS_KEY`` (base64), a fresh
96-bit nonce per write, the row's name as associated data (a sealed row cannot pose as another).
Stored as ``0x01 || nonce || ciphertext+tag``; the leading byte names the scheme.

Fail closed: a PostgreSQL store, a signed-in backend and no usable key is a start-up error, never
plaintext tokens in the database; a key that cannot open the row says so rather than sign in anew.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select, text, update
from sqlalchemy.exc import SQLAlchemyError

from ..errors import AuthenticationError, ServiceUnavailableError
from ..providers.codex import CodexCredentials, Held, Tokens
from ..providers.hosts import PROFILES
from .config import Config
from .store import credentials_table, error_cause, parse_store_url

KEY_ENV = "MODELWIRE_CREDENTIALS_KEY"
CODEX = "codex"  # the row of the Codex route's sign-in
SCHEME = b"\x01"  # AES-256-GCM, 12-byte nonce
NONCE_BYTES = 12
LOCK_TIMEOUT = "60s"  # a replica waits this long for another's refresh before failing the request
MAKE_KEY = "python -c 'import base64,secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())'"
_UPSERT = text(
    f"INSERT INTO {credentials_table.name} (name, version, secret, updated_at) "
    "VALUES (:name, 1, :secret, :now) ON CONFLICT (name) DO UPDATE SET "
    f"version = {credentials_table.name}.version + 1, secret = excluded.secret, "
    "updated_at = excluded.updated_at"
)


class CredentialsKeyError(Exception):
    """No usable ``MODELWIRE_CREDENTIALS_KEY``, or one that cannot open what is stored.
    The message never holds the key."""


class Cipher:
    """Seals and opens small secrets with one AES-256-GCM key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise CredentialsKeyError(
                f"{KEY_ENV} must be 32 random bytes in base64; make one with: {MAKE_KEY}"
            )
        # Imported here: only replicas sharing a sign-in seal anything, and cryptography's bindings
        # would otherwise stay resident (~8 MiB) in every gateway.
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Cipher(<key hidden>)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Cipher:
        raw = (os.environ if env is None else env).get(KEY_ENV, "").strip()
        if not raw:
            raise CredentialsKeyError(
                f"{KEY_ENV} is not set: replicas keep the Codex sign-in in the PostgreSQL store, "
                f"encrypted with that key, and never in plaintext. Make one with: {MAKE_KEY}"
            )
        try:  # standard or URL-safe alphabet, padded or not
            key = base64.urlsafe_b64decode(raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4))
        except (binascii.Error, ValueError):
            key = b""
        return cls(key)

    def seal(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return SCHEME + nonce + self._aead.encrypt(nonce, plaintext, context)

    def open(self, sealed: bytes, context: bytes) -> bytes:
        if sealed[:1] != SCHEME or len(sealed) <= 1 + NONCE_BYTES:
            raise CredentialsKeyError("the stored credentials are not in a form this modelwire knows")
        from cryptography.exceptions import InvalidTag  # loaded with AESGCM by __init__

        nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, context)
        except InvalidTag:
            raise CredentialsKeyError(
                f"the stored credentials do not open with this {KEY_ENV}: set the key they were "
                "sealed with (every replica needs the same one), or sign in again with "
                "`modelwire login --config FILE`"
            ) from None


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


# ------------------------------------------------------------------------------------------ wiring


def shares_credentials(config: Config) -> bool:
    """Whether this gateway keeps sign-ins in its store: a PostgreSQL store and a backend that
    signs in (without a key of its own)."""
    if parse_store_url(config.store).get_backend_name() != "postgresql":
        return False
    return any(PROFILES[b.type].signs_in and not b.keys() for b in config.backends.values())


def check_credentials_key(config: Config) -> None:
    """Raise :class:`CredentialsKeyError` when the store will hold sign-ins and no usable key is
    set: a start-up error, before anything binds."""
    if shares_credentials(config):
        Cipher.from_env()


def share_credentials(engine: Engine, credentials: Iterable[CodexCredentials]) -> None:
    """Move the given sign-ins to the store (PostgreSQL); raises :class:`CredentialsKeyError`."""
    signed = list(credentials)
    if not signed:
        return
    shared = DatabaseTokenStore(engine, Cipher.from_env())
    for each in signed:
        each.use(shared)
