"""Client keys: where a request's key is found, whom it belongs to, what it may use.

Keys come from the config (plaintext there, by the operator's choice) and from the store (hashed;
created with ``modelwire keys create``). Lookups are cached briefly so the hot path is a dict
lookup; a revoked store key stops working within the cache TTL.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from .limits import Policy

if TYPE_CHECKING:
    from .config import KeyConfig
    from .store import KeyRecord, Store

CACHE_SECONDS = 30.0


@dataclass(slots=True)
class ClientKey:
    name: str
    patterns: tuple[str, ...]
    policy: Policy
    expires_at: float | None = None
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
    return ClientKey(name=entry.name, patterns=tuple(entry.models), policy=policy)


def from_record(record: KeyRecord) -> ClientKey:
    policy = Policy(name=record.name, rpm=record.rpm, tpm=record.tpm, budget_usd=record.budget_usd)
    return ClientKey(name=record.name, patterns=record.models, policy=policy, expires_at=record.expires_at)


def extract_key(headers: dict[bytes, bytes], query: bytes) -> str | None:
    """The client key from ``Authorization: Bearer``, ``x-api-key``, ``x-goog-api-key`` or ``?key=``."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip().decode("latin-1")
    for name in (b"x-api-key", b"x-goog-api-key"):
        value = headers.get(name)
        if value:
            return value.decode("latin-1")
    if b"key=" in query:
        for field_name, field_value in parse_qsl(query.decode("latin-1")):
            if field_name == "key" and field_value:
                return field_value
    return None


class KeyBook:
    """Every client key the gateway accepts. ``open`` when none exist at all (loopback only)."""

    def __init__(self, config_keys: Iterable[KeyConfig], store: Store | None) -> None:
        self._config = {k.key: from_config(k) for k in config_keys if k.key}
        self._store = store
        self._cache: dict[str, tuple[float, ClientKey | None]] = {}
        self._store_has_keys = False
        self._checked = 0.0

    @property
    def open(self) -> bool:
        return not self._config and not self._store_has_keys

    async def refresh(self) -> None:
        """Re-learn whether the store holds any live keys (it may gain some while we run)."""
        if self._store is not None:
            keys = await asyncio.to_thread(self._store.list_keys)
            self._store_has_keys = bool(keys)
        self._checked = time.monotonic()

    async def lookup(self, secret: str) -> ClientKey | None:
        key = self._config.get(secret)
        if key is not None:
            return key
        now = time.monotonic()
        cached = self._cache.get(secret)
        if cached is not None and cached[0] > now:
            return cached[1]
        found = None
        if self._store is not None:
            record = await asyncio.to_thread(self._store.find_key, secret)
            if record is not None and not record.revoked:
                found = from_record(record)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[secret] = (now + CACHE_SECONDS, found)
        return found

    def needs_refresh(self) -> bool:
        return time.monotonic() - self._checked > CACHE_SECONDS
