"""Client keys: where a request's key is found, whom it belongs to, what it may use.

Keys come from the config (plaintext there, by the operator's choice) and from the store (hashed;
created with ``modelwire keys create``). The whole key table lives in memory, indexed by the
secret's SHA-256, so a lookup is one hash and one dict read, and an unknown key costs no database
read either. :meth:`KeyBook.sync` reloads the store's keys whenever the store's key counter moves
(the gateway calls it every SYNC_SECONDS), so a key created, changed or revoked on any replica takes
effect on every replica within a second; expiry is checked on each request.

Whether the gateway runs without auth ("open") is decided here and only here, from the keys
actually loaded: only when it listens on loopback and no key was ever configured or created. Once a
key exists, revoking it never opens the gateway again (someone chose auth), and a gateway listening
beyond loopback never opens at all: with no key in force it refuses everyone.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from .limits import Policy
from .store import hash_secret

if TYPE_CHECKING:
    from .config import KeyConfig
    from .store import KeyRecord, Store

SYNC_SECONDS = 0.25
"""How often the key counter is read: a change reaches every replica within about this long."""


@dataclass(slots=True)
class ClientKey:
    name: str
    patterns: tuple[str, ...]
    policy: Policy
    expires_at: float | None = None
    # May mint Realtime client secrets. Config keys only: keys in the store have no such column yet.
    realtime_secrets: bool = False
    _allowed: dict[str, bool] = field(default_factory=dict)

    def allows(self, *models: str) -> bool:
        """Whether any of ``models`` (a public name, a backend/model ref) matches a pattern."""
        for model in models:
            verdict = self._allowed.get(model)
            if verdict is None:
                verdict = any(fnmatch.fnmatchcase(model, p) for p in self.patterns)
                if len(self._allowed) < 4096:
                    self._allowed[model] = verdict
            if verdict:
                return True
        return False

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def from_config(entry: KeyConfig) -> ClientKey:
    policy = Policy(name=entry.name, rpm=entry.rpm, tpm=entry.tpm, budget_usd=entry.budget_usd)
    return ClientKey(
        name=entry.name, patterns=tuple(entry.models), policy=policy, realtime_secrets=entry.realtime_secrets
    )


def from_record(record: KeyRecord) -> ClientKey:
    policy = Policy(name=record.name, rpm=record.rpm, tpm=record.tpm, budget_usd=record.budget_usd)
    return ClientKey(name=record.name, patterns=record.models, policy=policy, expires_at=record.expires_at)


def extract_key(headers: dict[bytes, bytes], query: bytes) -> str | None:
    """The client key from ``Authorization: Bearer``, ``x-api-key``, ``api-key``, ``x-goog-api-key``
    or ``?key=``."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip().decode("latin-1")
    for name in (b"x-api-key", b"api-key", b"x-goog-api-key"):
        value = headers.get(name)
        if value:
            return value.decode("latin-1")
    if b"key=" in query:
        for field_name, field_value in parse_qsl(query.decode("latin-1")):
            if field_name == "key" and field_value:
                return field_value
    return None


class KeyBook:
    """Every client key the gateway accepts, held in memory and kept in step with the store."""

    def __init__(self, config_keys: Iterable[KeyConfig], store: Store | None, *, loopback: bool) -> None:
        entries = list(config_keys)
        self._config = {hash_secret(k.key): from_config(k) for k in entries if not k.admin}
        # Admin keys live apart: the proxy never looks in here, the admin API never looks elsewhere.
        self._config_admin = {hash_secret(k.key): from_config(k) for k in entries if k.admin}
        self._store = store
        self._stored: dict[str, ClientKey] = {}
        self._stored_admin: dict[str, ClientKey] = {}
        self._version: int | None = None
        self._ever_stored = False  # a key was created in the store, even if since revoked
        self.loopback = loopback

    @property
    def has_keys(self) -> bool:
        """Whether auth is on: a key (an admin key too) was configured or created, whether or not
        any is still live."""
        return bool(
            self._config or self._stored or self._config_admin or self._stored_admin or self._ever_stored
        )

    @property
    def has_admin(self) -> bool:
        """Whether any admin key is in force; without one the admin API and dashboard stay shut."""
        return bool(self._config_admin or self._stored_admin)

    @property
    def open(self) -> bool:
        """No auth at all: only on loopback, and only if no key was ever configured or created."""
        return self.loopback and not self.has_keys

    def in_force(self) -> list[ClientKey]:
        return [*self._config.values(), *self._stored.values()]

    def lookup(self, secret: str) -> ClientKey | None:
        digest = hash_secret(secret)
        return self._config.get(digest) or self._stored.get(digest)

    def lookup_admin(self, digest: str) -> ClientKey | None:
        """The admin key whose secret has this SHA-256 (sessions keep the digest, never the key)."""
        return self._config_admin.get(digest) or self._stored_admin.get(digest)

    def outdated(self, version: int) -> bool:
        """Whether the store's key counter moved since the keys were loaded."""
        return version != self._version

    def sync(self, version: int | None = None) -> bool:
        """Reload the store's keys if they changed since the last call; whether they did.

        ``version`` is the store's key counter when the caller has just read it. Blocking (a
        database read): run it in a worker thread. Raises what the store raises; the keys already
        loaded stay in force meanwhile.
        """
        if self._store is None:
            return False
        if version is None:
            version = self._store.keys_version()
        if version == self._version:
            return False
        live = self._store.live_keys()
        self._stored = {digest: from_record(r) for digest, r in live if not r.admin}
        self._stored_admin = {digest: from_record(r) for digest, r in live if r.admin}
        if not self._ever_stored:
            self._ever_stored = bool(self._stored) or bool(self._store.list_keys(include_revoked=True))
        self._version = version
        return True
