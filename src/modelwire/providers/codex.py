"""The Codex subscription route: ChatGPT-plan OAuth tokens instead of an API key.

Tokens live where the Codex CLI keeps them, ``$CODEX_HOME/auth.json`` (``~/.codex`` by default),
so a machine already logged in with ``codex login`` (or ``modelwire login``) works as is. The
access token is refreshed when it has expired or is more than eight days old, and the rotated
tokens are written back, because refresh tokens are single-use.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson

from ..errors import AuthenticationError
from .transport import AiohttpTransport, Transport, default_transport

ISSUER = "https://auth.openai.com"
CLIENT_ID = "app_EMoamEEZ73f0CkXaXp7hrann"
REFRESH_AGE = 8 * 24 * 3600
ORIGINATOR = "codex_cli_rs"


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
    access_token: str
    refresh_token: str
    id_token: str = ""
    account_id: str | None = None
    last_refresh: float = 0.0

    def stale(self, now: float) -> bool:
        expiry = jwt_claims(self.access_token).get("exp")
        return (
            isinstance(expiry, int | float) and expiry - 60 < now
        ) or now - self.last_refresh > REFRESH_AGE


class CodexCredentials:
    """Reads, refreshes and writes back the Codex CLI's ``auth.json``."""

    def __init__(
        self, path: Path | None = None, *, issuer: str = ISSUER, transport: Transport | None = None
    ) -> None:
        self.path = path or codex_home() / "auth.json"
        self.issuer = issuer.rstrip("/")
        self.transport = transport or default_transport()
        self.session_id = str(uuid.uuid4())
        self._lock = asyncio.Lock()
        self._tokens: Tokens | None = None

    def load(self) -> Tokens:
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError) as exc:
            raise AuthenticationError(
                f"no Codex login found at {self.path}; run `modelwire login` (or `codex login`) first"
            ) from exc
        raw = doc.get("tokens") or {}
        if not raw.get("access_token") or not raw.get("refresh_token"):
            raise AuthenticationError(f"{self.path} holds no ChatGPT tokens; run `modelwire login`")
        return Tokens(
            access_token=raw["access_token"],
            refresh_token=raw["refresh_token"],
            id_token=raw.get("id_token") or "",
            account_id=raw.get("account_id") or account_id(raw.get("id_token") or ""),
            last_refresh=_timestamp(doc.get("last_refresh")),
        )

    def save(self, tokens: Tokens) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            doc = json.loads(self.path.read_text())
        except (OSError, ValueError):
            doc = {}
        doc["auth_mode"] = "chatgpt"
        doc["tokens"] = {
            "id_token": tokens.id_token,
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "account_id": tokens.account_id,
        }
        doc["last_refresh"] = (
            datetime.fromtimestamp(tokens.last_refresh, UTC).isoformat().replace("+00:00", "Z")
        )
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2))
        tmp.chmod(0o600)
        tmp.replace(self.path)

    async def headers(self) -> dict[str, str]:
        """Request headers for the Codex backend, refreshing the token first when it is stale."""
        async with self._lock:
            tokens = self._tokens or self.load()
            if tokens.stale(time.time()):
                tokens = await self.refresh(tokens)
            self._tokens = tokens
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
        body = orjson.dumps(
            {"client_id": CLIENT_ID, "grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
        )
        reply = await self.transport.send(
            "POST", f"{self.issuer}/oauth/token", {"Content-Type": "application/json"}, body, read_timeout=30
        )
        payload = await reply.read()
        if reply.status != 200:
            raise AuthenticationError(
                "the ChatGPT login expired or was revoked; run `modelwire login` again", status=401
            )
        doc = orjson.loads(payload)
        fresh = Tokens(
            access_token=doc["access_token"],
            refresh_token=doc.get("refresh_token") or tokens.refresh_token,
            id_token=doc.get("id_token") or tokens.id_token,
            last_refresh=time.time(),
        )
        fresh.account_id = account_id(fresh.id_token) or tokens.account_id
        self.save(fresh)
        return fresh


def _timestamp(value: Any) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


# -------------------------------------------------------------------------------------------- login

REDIRECT_PATH = "/auth/callback"
SCOPES = "openid profile email offline_access"


def pkce() -> tuple[str, str]:
    """A PKCE code verifier and its S256 challenge."""
    verifier = base64.urlsafe_b64encode(os.urandom(48)).rstrip(b"=").decode()
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def authorize_url(issuer: str, redirect_uri: str, challenge: str, state: str) -> str:
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": redirect_uri,
        "scope": SCOPES,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "id_token_add_organizations": "true",
        "codex_cli_simplified_flow": "true",
        "state": state,
        "originator": ORIGINATOR,
    }
    return f"{issuer.rstrip('/')}/oauth/authorize?{urlencode(params)}"


async def wait_for_code(port: int, state: str, wait_seconds: float, ready: Callable[[], None]) -> str:
    """Serve the redirect on localhost (calling ``ready`` once listening) and return the
    authorization code it brings."""
    from aiohttp import web

    arrived: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback(request: web.Request) -> web.Response:
        if request.query.get("state") != state or not request.query.get("code"):
            return web.Response(status=400, text="This sign-in link is not the one modelwire started.")
        if not arrived.done():
            arrived.set_result(request.query["code"])
        return web.Response(text="Signed in to modelwire. You can close this tab.")

    app = web.Application()
    app.router.add_get(REDIRECT_PATH, callback)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    ready()
    try:
        return await asyncio.wait_for(arrived, wait_seconds)
    finally:
        await runner.cleanup()


async def exchange_code(
    issuer: str, code: str, verifier: str, redirect_uri: str, transport: Transport | None = None
) -> Tokens:
    body = urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": CLIENT_ID,
            "code_verifier": verifier,
        }
    ).encode()
    transport = transport or default_transport()
    reply = await transport.send(
        "POST",
        f"{issuer.rstrip('/')}/oauth/token",
        {"Content-Type": "application/x-www-form-urlencoded"},
        body,
        read_timeout=30,
    )
    payload = await reply.read()
    if reply.status != 200:
        raise AuthenticationError(f"the sign-in was refused (HTTP {reply.status})", status=401)
    doc = orjson.loads(payload)
    tokens = Tokens(
        access_token=doc["access_token"],
        refresh_token=doc["refresh_token"],
        id_token=doc.get("id_token") or "",
        last_refresh=time.time(),
    )
    tokens.account_id = account_id(tokens.id_token)
    return tokens


async def login(
    *,
    issuer: str = ISSUER,
    port: int = 1455,
    path: Path | None = None,
    wait_seconds: float = 300,
    show: Any = print,
) -> Tokens:
    """The browser sign-in the Codex CLI uses; the tokens are saved where both tools read them."""
    verifier, challenge = pkce()
    state = secrets.token_urlsafe(24)
    redirect_uri = f"http://localhost:{port}{REDIRECT_PATH}"
    url = authorize_url(issuer, redirect_uri, challenge, state)
    code = await wait_for_code(port, state, wait_seconds, lambda: show(url))
    transport = AiohttpTransport()
    try:
        tokens = await exchange_code(issuer, code, verifier, redirect_uri, transport)
    finally:
        await transport.aclose()
    CodexCredentials(path).save(tokens)
    return tokens
