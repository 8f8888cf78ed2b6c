"""The Codex route's sign-in (browser and device code) and token refresh against fake issuers."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from modelwire.errors import AuthenticationError
from modelwire.providers.codex import CLIENT_ID, CodexCredentials, FileTokenStore, Tokens
from modelwire.providers.codex_login import (
    DeviceCode,
    device_login,
    login,
    poll_device_grant,
    request_device_code,
)
from modelwire.providers.transport import AiohttpTransport

from .fake_codex import Device, FakeAccount
from .gateway_fixtures import MODELWIRE, free_port


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


# ----------------------------------------------------------------------------------------------
# Device-code sign-in against the scripted account (tests/fake_codex.py)
# ----------------------------------------------------------------------------------------------


class Clock:
    """A monotonic clock that only moves when the poller sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.waits: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


async def test_device_code_sign_in_saves_tokens(account: FakeAccount, tmp_path: Path) -> None:
    path = tmp_path / "codex" / "auth.json"
    shown: list[DeviceCode] = []
    tokens = await device_login(
        store=FileTokenStore(path), issuer=account.issuer, show=shown.append, interval=0.01
    )
    (code,) = shown
    assert code.verification_url == f"{account.issuer}/codex/device" and code.user_code == "WXYZ-1234"
    assert code.interval == 5.0  # the issuer's "5", read from its string
    assert account.polls == 2  # pending once, then granted
    exchange = account.exchanges[-1]
    assert exchange.grant_type == "authorization_code"
    assert exchange.fields["redirect_uri"] == f"{account.issuer}/deviceauth/callback"
    saved = FileTokenStore(path).load()
    assert saved.refresh_token == tokens.refresh_token and saved.account_id == "acct-fake-42"
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("interval", "expected"), [("7", 7.0), ("", 5.0), ("not a number", 5.0)])
async def test_device_code_polls_at_the_issuers_interval(
    account: FakeAccount, transport: AiohttpTransport, interval: str, expected: float
) -> None:
    account.device = Device(pending=3, interval=interval)
    clock = Clock()
    code = await request_device_code(account.issuer, transport)
    grant = await poll_device_grant(account.issuer, code, transport, sleep=clock.sleep, clock=clock)
    assert clock.waits == [expected] * 3 and account.polls == 4
    assert grant.authorization_code == "code-from-device" and grant.code_verifier == "verifier-4"


async def test_device_code_expires_after_15_minutes(
    account: FakeAccount, transport: AiohttpTransport
) -> None:
    account.device = Device(pending=10**6, interval="7")
    clock = Clock()
    code = await request_device_code(account.issuer, transport)
    with pytest.raises(
        AuthenticationError, match="expired: no sign-in was finished within 15 minutes"
    ) as info:
        await poll_device_grant(account.issuer, code, transport, sleep=clock.sleep, clock=clock)
    assert info.value.code == "device_code_expired"
    assert sum(clock.waits) == 900 and max(clock.waits) == 7.0  # the last wait is cut to the deadline
    assert "login --device-code" in info.value.message


@pytest.mark.parametrize(
    ("outcome", "code", "says"),
    [
        ("deny", "device_code_denied", "declined on the verification page"),
        ("expire", "device_code_expired", "the device code expired"),
        ("disabled", "device_code_disabled", "device-code sign-in is not enabled"),
    ],
)
async def test_device_code_refusals_are_said_plainly(
    account: FakeAccount, tmp_path: Path, outcome: str, code: str, says: str
) -> None:
    account.device = Device(outcome=outcome, pending=1)
    with pytest.raises(AuthenticationError, match=says) as info:
        await device_login(
            store=FileTokenStore(tmp_path / "auth.json"),
            issuer=account.issuer,
            show=lambda c: None,
            interval=0,
        )
    assert info.value.code == code
    assert not (tmp_path / "auth.json").exists()


def test_cli_device_code_sign_in(account: FakeAccount, tmp_path: Path) -> None:
    """``modelwire login --device-code``: the link and code on the terminal, the tokens in
    $CODEX_HOME/auth.json (0600), and no token in anything printed."""
    account.device = Device(pending=1, interval="1")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    done = subprocess.run(
        [MODELWIRE, "login", "--device-code", "--issuer", account.issuer],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "CODEX_HOME": str(home), "MODELWIRE_CONFIG": "", "COLUMNS": "200"},
    )
    assert done.returncode == 0, done.stderr
    assert f"{account.issuer}/codex/device" in done.stderr and "WXYZ-1234" in done.stderr
    assert "expires in 15 minutes" in done.stderr and "acct-fake-42" in done.stderr
    saved = json.loads((home / "auth.json").read_text())["tokens"]
    assert (home / "auth.json").stat().st_mode & 0o777 == 0o600
    for secret in (saved["access_token"], saved["refresh_token"], saved["id_token"]):
        assert secret not in done.stdout + done.stderr
