"""The Codex subscription route's credentials: ChatGPT-plan OAuth tokens instead of an API key.

By default tokens live where the Codex CLI keeps them, ``$CODEX_HOME/auth.json`` (``~/.codex``
by default, mode 0600), so a machine already signed in with ``codex login`` (or
``modelwire login``) works as is. A gateway whose replicas share a PostgreSQL store keeps them
there instead, encrypted (:mod:`modelwire.gateway.credentials`); both are a :class:`TokenStore`.

The access token is refreshed a few minutes before it expires (or when it is more than eight days
old, as the Codex CLI does), and once more when the upstream answers 401 to it. Refresh tokens are
single-use, so a refresh runs under the store's exclusive lock and first re-reads the tokens: a
process that finds them changed since it looked adopts them instead of spending a refresh token
another process already spent.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..errors import AuthenticationError
from .transport import Transport, default_transport

ISSUER = "https://auth.openai.com"
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
REFRESH_AGE = 8 * 24 * 3600
# Refresh this long before the access token's expiry, so a request never leaves with a token that
# lapses on the way (or during a long stream's first seconds).
REFRESH_MARGIN = 300
ORIGINATOR = "codex_cli_rs"
REFRESH_URL_ENV = "CODEX_REFRESH_TOKEN_URL_OVERRIDE"  # the Codex CLI's own override, honoured alike
LOCK_WAIT = 60.0  # seconds one process waits for another's refresh before giving up
SIGN_IN_AGAIN = "sign in again with `modelwire login` (or `modelwire login --device-code` without a browser)"
_ERROR_CODE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def codex_home() -> Path:
    return Path(os.environ.get("CODEX_HOME") or Path.home() / ".codex")


def jwt_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (we only read our own token's expiry and account)."""
    try:
        payload = token.split(".")[1]
        return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    except (IndexError, ValueError):
        return {}


def account_id(id_token: str) -> str | None:
    auth = jwt_claims(id_token).get("https://api.openai.com/auth") or {}
    value = auth.get("chatgpt_account_id") if isinstance(auth, dict) else None
    return str(value) if value else None


@dataclass(slots=True)
class Tokens:
    """One sign-in's tokens. The secrets stay out of ``repr``, so a logged object or a traceback
    cannot leak them."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    id_token: str = field(default="", repr=False)
    account_id: str | None = None
    last_refresh: float = 0.0

    def stale(self, now: float) -> bool:
        expiry = jwt_claims(self.access_token).get("exp")
        return (
            isinstance(expiry, int | float) and expiry - REFRESH_MARGIN < now
        ) or now - self.last_refresh > REFRESH_AGE

    def document(self) -> dict[str, Any]:
        """The tokens as the Codex CLI's ``auth.json`` holds them (``tokens`` and ``last_refresh``)."""
        return {
            "tokens": {
                "id_token": self.id_token,
                "access_token": self.access_token,
                "refresh_token": self.refresh_token,
                "account_id": self.account_id,
            },
            "last_refresh": datetime.fromtimestamp(self.last_refresh, UTC).isoformat().replace("+00:00", "Z"),
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Tokens | None:
        """The tokens of an ``auth.json``-shaped document; None when it holds no ChatGPT sign-in."""
        raw = doc.get("tokens") or {}
        if not isinstance(raw, dict) or not raw.get("access_token") or not raw.get("refresh_token"):
            return None
        id_token = raw.get("id_token") or ""
        return cls(
            access_token=raw["access_token"],
            refresh_token=raw["refresh_token"],
            id_token=id_token,
            account_id=raw.get("account_id") or account_id(id_token),
            last_refresh=_timestamp(doc.get("last_refresh")),
        )

    @classmethod
    def granted(cls, doc: dict[str, Any], previous: Tokens | None = None) -> Tokens:
        """The tokens an OAuth token endpoint answered; what it left out is kept from ``previous``."""
        if not isinstance(doc.get("access_token"), str):
            raise AuthenticationError("the sign-in server answered without an access token", status=401)
        id_token = doc.get("id_token") or (previous.id_token if previous else "")
        refresh = doc.get("refresh_token") or (previous.refresh_token if previous else "")
        return cls(
            access_token=doc["access_token"],
            refresh_token=refresh,
            id_token=id_token,
            account_id=account_id(id_token) or (previous.account_id if previous else None),
            last_refresh=time.time(),
        )


# ------------------------------------------------------------------------------------------ stores


class Held(Protocol):
    """The tokens as a store holds them while its exclusive lock is held."""

    tokens: Tokens

    async def replace(self, tokens: Tokens) -> None: ...


class TokenStore(Protocol):
    """Where a sign-in's tokens are kept: read, written, and locked for a refresh."""

    where: str  # named in messages: a file path, or the gateway's store

    async def read(self) -> Tokens: ...
    async def write(self, tokens: Tokens) -> None: ...
    def locked(self) -> AbstractAsyncContextManager[Held]: ...


class FileTokenStore:
    """The Codex CLI's ``auth.json``: written atomically with mode 0600 from its first byte, other
    keys of the file (an API key, the auth mode) kept; refreshes serialised across processes with
    an advisory lock on ``auth.json.lock`` (POSIX; elsewhere within one process only)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or codex_home() / "auth.json"
        self.where = str(self.path)

    def load(self) -> Tokens:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise AuthenticationError(
                f"no Codex sign-in found at {self.path}; run `modelwire login` (or `codex login`) first"
            ) from exc
        tokens = Tokens.from_document(doc) if isinstance(doc, dict) else None
        if tokens is None:
            raise AuthenticationError(f"{self.path} holds no ChatGPT tokens; run `modelwire login`")
        return tokens

    def save(self, tokens: Tokens) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            doc = {}
        doc = {**(doc if isinstance(doc, dict) else {}), "auth_mode": "chatgpt", **tokens.document()}
        # mkstemp creates the file 0600, so the tokens are never readable by others, not even
        # between a write and a chmod; a unique name keeps two writers from sharing one.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                out.write(json.dumps(doc, indent=2))
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    async def read(self) -> Tokens:
        return self.load()

    async def write(self, tokens: Tokens) -> None:
        self.save(tokens)

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncIterator[Held]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            await _flock(fd)
            yield _FileHeld(self, self.load())
        finally:
            os.close(fd)  # closing the descriptor releases the lock


@dataclass(slots=True)
class _FileHeld:
    store: FileTokenStore
    tokens: Tokens

    async def replace(self, tokens: Tokens) -> None:
        self.store.save(tokens)
        self.tokens = tokens


async def _flock(fd: int) -> None:
    """An exclusive advisory lock, polled without blocking so a cancelled waiter leaves no thread
    behind holding the lock."""
    if sys.platform == "win32":
        return
    import fcntl

    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AuthenticationError(
                    "another process has held the Codex sign-in lock for a minute; try again"
                ) from None
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------- credentials


class CodexCredentials:
    """Request headers for the Codex backend from a :class:`TokenStore`, refreshing as needed."""

    def __init__(
        self,
        path: Path | None = None,
        *,
        issuer: str = ISSUER,
        transport: Transport | None = None,
        store: TokenStore | None = None,
    ) -> None:
        self.store: TokenStore = store or FileTokenStore(path)
        self.refresh_url = os.environ.get(REFRESH_URL_ENV) or f"{issuer.rstrip('/')}/oauth/token"
        self.transport = transport or default_transport()
        self.session_id = str(uuid.uuid4())
        self._lock = asyncio.Lock()
        self._tokens: Tokens | None = None

    def use(self, store: TokenStore) -> None:
        """Keep the tokens in ``store`` from now on (a gateway moving them to its shared store)."""
        self.store, self._tokens = store, None

    async def headers(self) -> dict[str, str]:
        """Request headers, the token refreshed first when it is about to expire."""
        async with self._lock:
            tokens = self._tokens or await self.store.read()
            if tokens.stale(time.time()):
                tokens = await self._rotate(tokens)
            self._tokens = tokens
        return self._headers(tokens)

    async def renew(self, rejected: str) -> dict[str, str]:
        """Headers after the upstream answered 401 to the access token ``rejected``: refreshed once,
        unless someone (this process or another) already replaced that token."""
        async with self._lock:
            tokens = self._tokens or await self.store.read()
            if tokens.access_token == rejected:
                tokens = await self._rotate(tokens)
            self._tokens = tokens
        return self._headers(tokens)

    async def _rotate(self, seen: Tokens) -> Tokens:
        """Fresh tokens: the ones another process stored since we read ``seen``, else a refresh."""
        async with self.store.locked() as held:
            if held.tokens.access_token != seen.access_token:
                return held.tokens
            fresh = await self.refresh(held.tokens)
            await held.replace(fresh)
            return fresh

    def _headers(self, tokens: Tokens) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {tokens.access_token}",
            "originator": ORIGINATOR,
            "OpenAI-Beta": "responses=experimental",
            "session_id": self.session_id,
        }
        if tokens.account_id:
            headers["ChatGPT-Account-ID"] = tokens.account_id
        return headers

    async def refresh(self, tokens: Tokens) -> Tokens:
        """The refresh grant (JSON body, as the Codex CLI sends it); nothing is stored here."""
        body = orjson.dumps(
            {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        )
        reply = await self.transport.send(
            "POST", self.refresh_url, {"Content-Type": "application/json"}, body, read_timeout=30
        )
        payload = await reply.read()
        if reply.status != 200:
            raise AuthenticationError(
                f"the ChatGPT sign-in of the Codex route expired or was revoked "
                f"({refusal(reply.status, payload)}); {SIGN_IN_AGAIN}",
                status=401,
                code="codex_login_required",
            )
        return Tokens.granted(json_object(payload), tokens)


def error_code(payload: bytes) -> str | None:
    """An OAuth error body's code (``error``, or ``error.code``) when it is a plain identifier;
    never free text, which could echo what was sent."""
    error = json_object(payload).get("error")
    code = error.get("code") if isinstance(error, dict) else error
    return code.lower() if isinstance(code, str) and _ERROR_CODE.fullmatch(code) else None


def refusal(status: int, payload: bytes) -> str:
    """An OAuth server's refusal in a few words: its error code and the HTTP status."""
    code = error_code(payload)
    return f"{code}, HTTP {status}" if code else f"HTTP {status}"


def json_object(payload: bytes) -> dict[str, Any]:
    """A JSON object body, or an empty one for anything else."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _timestamp(value: Any) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0
