"""Signing in to the Codex route with a ChatGPT plan: the Codex CLI's browser flow (PKCE, with a
redirect to a listener on localhost), its tokens written to a :class:`~.codex.TokenStore`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from ..errors import AuthenticationError
from .codex import CLIENT_ID, ISSUER, ORIGINATOR, Tokens, TokenStore, json_object, refusal
from .transport import AiohttpTransport, Transport

REDIRECT_PATH = "/auth/callback"
SCOPES = "openid profile email offline_access"


# ------------------------------------------------------------------------------------------ shared


async def exchange_code(
    issuer: str, code: str, verifier: str, redirect_uri: str, transport: Transport
) -> Tokens:
    """An authorization code for tokens (the form-encoded grant both flows end with)."""
    body = urlencode(
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": CLIENT_ID,
            "code_verifier": verifier,
        }
    ).encode()
    reply = await transport.send(
        "POST",
        f"{issuer.rstrip('/')}/oauth/token",
        {"Content-Type": "application/x-www-form-urlencoded"},
        body,
        read_timeout=30,
    )
    payload = await reply.read()
    if reply.status != 200:
        raise AuthenticationError(f"the sign-in was refused ({refusal(reply.status, payload)})", status=401)
    tokens = Tokens.granted(json_object(payload))
    if not tokens.refresh_token:
        raise AuthenticationError("the sign-in server granted no refresh token", status=401)
    return tokens


# ----------------------------------------------------------------------------------------- browser


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


async def login(
    *,
    store: TokenStore,
    issuer: str = ISSUER,
    port: int = 1455,
    wait_seconds: float = 300,
    show: Callable[[str], Any] = print,
) -> Tokens:
    """The browser sign-in the Codex CLI uses; the tokens are written to ``store``."""
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
    await store.write(tokens)
    return tokens
