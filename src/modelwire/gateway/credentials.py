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

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from ..providers.codex import CodexCredentials
from ..providers.hosts import PROFILES
from .config import Config
from .database import parse_target

if TYPE_CHECKING:
    from .store import Store

KEY_ENV = "MODELWIRE_CREDENTIALS_KEY"
CODEX = "codex"  # the row of the Codex route's sign-in
SCHEME = b"\x01"  # AES-256-GCM, 12-byte nonce
NONCE_BYTES = 12
LOCK_TIMEOUT = "60s"  # a replica waits this long for another's refresh before failing the request
MAKE_KEY = "python -c 'import base64,secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())'"


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


# ------------------------------------------------------------------------------------------ wiring


def shares_credentials(config: Config) -> bool:
    """Whether this gateway keeps sign-ins in its store: a PostgreSQL store and a backend that
    signs in (without a key of its own)."""
    if parse_target(config.store).dialect != "postgresql":
        return False
    return any(PROFILES[b.type].signs_in and not b.keys() for b in config.backends.values())


def check_credentials_key(config: Config) -> None:
    """Raise :class:`CredentialsKeyError` when the store will hold sign-ins and no usable key is
    set: a start-up error, before anything binds."""
    if shares_credentials(config):
        Cipher.from_env()


def share_credentials(store: Store, credentials: Iterable[CodexCredentials]) -> None:
    """Move the given sign-ins to the store (PostgreSQL); raises :class:`CredentialsKeyError`."""
    signed = list(credentials)
    if not signed:
        return
    from .signin_store import DatabaseTokenStore  # SQLAlchemy's engine: only for a shared sign-in

    shared = DatabaseTokenStore(store.engine, Cipher.from_env())
    for each in signed:
        each.use(shared)
