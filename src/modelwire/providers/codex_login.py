"""Signing in to the Codex route with a ChatGPT plan: the browser flow and the device-code flow.

Browser (``modelwire login``): the Codex CLI's PKCE flow with a redirect to a listener on
localhost.

Device code (``modelwire login --device-code``), for machines without a browser: modelwire asks
the issuer for a one-time user code, the user opens the verification link on any device, signs in
and enters the code, and modelwire polls until the issuer hands over an authorization code (with
the PKCE verifier it made for it), then exchanges that like the browser flow's. The wire, as the
Codex CLI speaks it:

* ``POST {issuer}/api/accounts/deviceauth/usercode`` ``{client_id}`` → ``{device_auth_id,
  user_code (or usercode), interval}`` (``interval``: seconds, as a string); 404 means the issuer
  (or the account's workspace) has device-code sign-in turned off.
* The user opens ``{issuer}/codex/device``.
* ``POST {issuer}/api/accounts/deviceauth/token`` ``{device_auth_id, user_code}``: 403 or 404
  while the user has not finished; 200 ``{authorization_code, code_challenge, code_verifier}``.
* ``POST {issuer}/oauth/token`` (form) with ``redirect_uri={issuer}/deviceauth/callback``.

The Codex CLI gives up after 15 minutes, and so do we. Any other answer to a poll ends it; an
``error`` naming an expiry or a refusal is said as such (RFC 8628's ``expired_token`` and
``access_denied`` are the names we know), the rest by status.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import orjson

from ..errors import AuthenticationError
from .codex import CLIENT_ID, ISSUER, ORIGINATOR, Tokens, TokenStore, error_code, json_object, refusal
from .transport import AiohttpTransport, Transport

REDIRECT_PATH = "/auth/callback"
SCOPES = "openid profile email offline_access"
DEVICE_INTERVAL = 5.0  # seconds between polls when the issuer names no interval
DEVICE_WAIT = 15 * 60.0  # how long a device code is waited on
_JSON = {"Content-Type": "application/json"}
_EXPIRED = ("expired_token", "expired", "device_code_expired", "token_expired")
_DENIED = ("access_denied", "authorization_declined", "denied", "declined")


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


# ------------------------------------------------------------------------------------- device code


@dataclass(frozen=True, slots=True)
class DeviceCode:
    """What the user is shown (``verification_url``, ``user_code``) and what polling needs."""

    verification_url: str
    user_code: str
    device_auth_id: str
    interval: float  # seconds between polls, as the issuer asked


@dataclass(frozen=True, slots=True)
class DeviceGrant:
    authorization_code: str
    code_verifier: str


Sleep = Callable[[float], Awaitable[None]]


async def request_device_code(issuer: str, transport: Transport) -> DeviceCode:
    base = issuer.rstrip("/")
    reply = await transport.send(
        "POST",
        f"{base}/api/accounts/deviceauth/usercode",
        _JSON,
        orjson.dumps({"client_id": CLIENT_ID}),
        read_timeout=30,
    )
    payload = await reply.read()
    if reply.status == 404:
        raise AuthenticationError(
            "device-code sign-in is not enabled here: turn it on in ChatGPT's security settings (a "
            "workspace admin may have to), or sign in with `modelwire login` in a browser",
            status=401,
            code="device_code_disabled",
        )
    if reply.status != 200:
        raise AuthenticationError(f"could not start a device-code sign-in ({refusal(reply.status, payload)})")
    doc = json_object(payload)
    user_code = doc.get("user_code") or doc.get("usercode")
    device_auth_id = doc.get("device_auth_id")
    if not isinstance(user_code, str) or not isinstance(device_auth_id, str):
        raise AuthenticationError("the sign-in server answered a device-code request without a code")
    return DeviceCode(f"{base}/codex/device", user_code, device_auth_id, _interval(doc.get("interval")))


def _interval(value: Any) -> float:
    """The issuer's polling interval (the Codex issuer sends seconds as a string); 5 s without one."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return DEVICE_INTERVAL
    return seconds if 0 < seconds <= 60 else DEVICE_INTERVAL


async def poll_device_grant(
    issuer: str,
    code: DeviceCode,
    transport: Transport,
    *,
    interval: float | None = None,
    wait_seconds: float = DEVICE_WAIT,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> DeviceGrant:
    """Poll until the user finishes signing in; ``interval`` overrides the issuer's (tests)."""
    url = f"{issuer.rstrip('/')}/api/accounts/deviceauth/token"
    body = orjson.dumps({"device_auth_id": code.device_auth_id, "user_code": code.user_code})
    every = interval if interval is not None else code.interval
    deadline = clock() + wait_seconds
    while True:
        reply = await transport.send("POST", url, _JSON, body, read_timeout=30)
        payload = await reply.read()
        if reply.status == 200:
            return _grant(payload)
        reason = error_code(payload)
        if reply.status not in (403, 404) or reason in _EXPIRED + _DENIED:
            raise _poll_failure(reply.status, payload, reason)
        left = deadline - clock()
        if left <= 0:
            raise _expired()
        await sleep(min(every, left))


def _poll_failure(status: int, payload: bytes, reason: str | None) -> AuthenticationError:
    if reason in _EXPIRED or status == 410:
        return _expired()
    if reason in _DENIED:
        return AuthenticationError(
            "the sign-in was declined on the verification page; run `modelwire login --device-code` "
            "again to retry (with the same ChatGPT account that has the plan)",
            status=401,
            code="device_code_denied",
        )
    return AuthenticationError(f"the device-code sign-in failed ({refusal(status, payload)})", status=401)


def _expired() -> AuthenticationError:
    return AuthenticationError(
        f"the device code expired: no sign-in was finished within {DEVICE_WAIT / 60:g} minutes; run "
        "`modelwire login --device-code` again for a new code",
        status=401,
        code="device_code_expired",
    )


def _grant(payload: bytes) -> DeviceGrant:
    doc = json_object(payload)
    code, verifier = doc.get("authorization_code"), doc.get("code_verifier")
    if not isinstance(code, str) or not isinstance(verifier, str):
        raise AuthenticationError("the sign-in server finished the device-code sign-in without a code")
    return DeviceGrant(code, verifier)


async def device_login(
    *,
    store: TokenStore,
    issuer: str = ISSUER,
    show: Callable[[DeviceCode], Any],
    interval: float | None = None,
    wait_seconds: float = DEVICE_WAIT,
) -> Tokens:
    """The device-code sign-in: ``show`` tells the user the link and code, then we wait; the
    tokens are written to ``store``."""
    transport = AiohttpTransport()
    try:
        code = await request_device_code(issuer, transport)
        show(code)
        grant = await poll_device_grant(issuer, code, transport, interval=interval, wait_seconds=wait_seconds)
        redirect_uri = f"{issuer.rstrip('/')}/deviceauth/callback"
        tokens = await exchange_code(
            issuer, grant.authorization_code, grant.code_verifier, redirect_uri, transport
        )
    finally:
        await transport.aclose()
    await store.write(tokens)
    return tokens
