"""The Codex route's sign-in and token refresh against a fake OAuth issuer."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from modelwire.errors import AuthenticationError
from modelwire.providers.codex import CLIENT_ID, CodexCredentials, FileTokenStore, Tokens
from modelwire.providers.codex_login import login
from modelwire.providers.transport import AiohttpTransport

from .gateway_fixtures import free_port


def jwt(claims: dict[str, object]) -> str:
    payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJub25lIn0.{payload}.sig"


ID_TOKEN = jwt({"https://api.openai.com/auth": {"chatgpt_account_id": "acct-42"}})


@pytest.fixture
async def issuer() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A fake auth.openai.com: the token endpoint, recording what it was sent."""
    seen: list[dict[str, str]] = []

    async def token(request: web.Request) -> web.Response:
        form = (
            dict(await request.post())
            if request.content_type.endswith("urlencoded")
            else await request.json()
        )
        seen.append({k: str(v) for k, v in form.items()})
        if form.get("grant_type") == "refresh_token" and form.get("refresh_token") == "revoked":
            return web.json_response({"error": "refresh_token_reused"}, status=401)
        return web.json_response(
            {
                "access_token": jwt({"exp": time.time() + 3600, "n": len(seen)}),
                "refresh_token": f"rt-{len(seen)}",
                "id_token": ID_TOKEN,
            }
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_browser_sign_in_saves_tokens(issuer: tuple[str, list[dict[str, str]]], tmp_path: Path) -> None:
    url, seen = issuer
    port = free_port()
    shown: list[str] = []
    listening = asyncio.Event()

    def show(link: str) -> None:
        shown.append(link)
        listening.set()

    task = asyncio.create_task(
        login(store=FileTokenStore(tmp_path / "auth.json"), issuer=url, port=port, show=show)
    )
    await asyncio.wait_for(listening.wait(), 10)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(shown[0]).query))
    assert query["client_id"] == CLIENT_ID and query["code_challenge_method"] == "S256"
    assert query["redirect_uri"] == f"http://localhost:{port}/auth/callback"
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"http://127.0.0.1:{port}/auth/callback?code=abc&state=forged") as bad:
            assert bad.status == 400
        async with browser.get(
            f"http://127.0.0.1:{port}/auth/callback?code=abc&state={query['state']}"
        ) as ok:
            assert ok.status == 200
    tokens = await task
    assert tokens.account_id == "acct-42"
    exchange = seen[0]
    assert exchange["grant_type"] == "authorization_code" and exchange["code"] == "abc"
    assert len(exchange["code_verifier"]) >= 43
    saved = json.loads((tmp_path / "auth.json").read_text())
    assert saved["tokens"]["refresh_token"] == "rt-1" and saved["tokens"]["account_id"] == "acct-42"
    assert (tmp_path / "auth.json").stat().st_mode & 0o777 == 0o600


async def test_stale_tokens_are_refreshed_and_written_back(
    issuer: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    url, seen = issuer
    creds = CodexCredentials(tmp_path / "auth.json", issuer=url, transport=AiohttpTransport())
    FileTokenStore(tmp_path / "auth.json").save(
        Tokens(
            access_token=jwt({"exp": time.time() - 10}),
            refresh_token="rt-old",
            id_token=ID_TOKEN,
            account_id="acct-42",
            last_refresh=time.time() - 3600,
        )
    )
    headers = await creds.headers()
    assert seen[-1]["grant_type"] == "refresh_token" and seen[-1]["refresh_token"] == "rt-old"
    assert headers["ChatGPT-Account-ID"] == "acct-42" and headers["Authorization"].startswith("Bearer eyJ")
    assert json.loads((tmp_path / "auth.json").read_text())["tokens"]["refresh_token"] == "rt-1"
    await creds.headers()
    assert len(seen) == 1  # fresh now: no second refresh
    await creds.transport.aclose()


async def test_revoked_login_says_so(issuer: tuple[str, list[dict[str, str]]], tmp_path: Path) -> None:
    url, _ = issuer
    creds = CodexCredentials(tmp_path / "auth.json", issuer=url, transport=AiohttpTransport())
    FileTokenStore(tmp_path / "auth.json").save(
        Tokens(access_token=jwt({"exp": 1}), refresh_token="revoked", last_refresh=0)
    )
    with pytest.raises(AuthenticationError, match="modelwire login"):
        await creds.headers()
    await creds.transport.aclose()


def test_no_login_yet(tmp_path: Path) -> None:
    with pytest.raises(AuthenticationError, match="modelwire login"):
        FileTokenStore(tmp_path / "missing.json").load()
