"""The Codex route's tokens in use: refreshed before they expire, renewed once on a 401, a failed
refresh said plainly, and refreshes serialised across processes sharing one ``auth.json``.

The issuer and the Codex backend are the scripted account of tests/fake_codex.py, whose refresh
tokens are single-use like the real ones: a second refresh with the same token is refused.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

import modelwire as mw
from modelwire.providers.codex import REFRESH_MARGIN, CodexCredentials, FileTokenStore, Tokens
from modelwire.providers.transport import AiohttpTransport

from .fake_codex import ACCOUNT, FakeAccount


def signed_in(account: FakeAccount, path: Path, **grant: float) -> dict[str, str]:
    """Write an ``auth.json`` holding a fresh grant; returns its tokens."""
    doc = account.auth_json(**grant)
    path.write_text(json.dumps(doc))
    return dict(doc["tokens"])


def client(account: FakeAccount, path: Path, transport: AiohttpTransport) -> mw.OpenAI:
    credentials = CodexCredentials(path, issuer=account.issuer, transport=transport)
    return mw.OpenAI(
        host="codex", base_url=account.codex_url, credentials=credentials, transport=transport, max_retries=0
    )


async def test_a_token_about_to_expire_is_refreshed_before_use(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    path = tmp_path / "auth.json"
    old = signed_in(account, path, ttl=REFRESH_MARGIN - 60)  # still valid, but not for long
    reply = await client(account, path, transport).complete(model="gpt-5.5", messages="hi")
    assert reply.text == "codex says hi to gpt-5.5"
    (refresh,) = account.refreshes()
    assert refresh.fields["refresh_token"] == old["refresh_token"]
    (call,) = account.responses()
    assert call.bearer != old["access_token"] and call.account == ACCOUNT
    saved = json.loads(path.read_text())["tokens"]
    assert saved["access_token"] == call.bearer and saved["refresh_token"] != old["refresh_token"]


async def test_a_fresh_token_is_used_as_it_is(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    path = tmp_path / "auth.json"
    tokens = signed_in(account, path)
    driver = client(account, path, transport)
    for _ in range(2):
        await driver.complete(model="gpt-5.5", messages="hi")
    assert account.refreshes() == []
    assert [c.bearer for c in account.responses()] == [tokens["access_token"]] * 2


async def test_a_401_refreshes_once_and_resends(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    path = tmp_path / "auth.json"
    tokens = signed_in(account, path)
    account.revoke(tokens["access_token"])  # revoked early, though its expiry is an hour away
    events = [e async for e in client(account, path, transport).stream(model="gpt-5.5", messages="hi")]
    assert isinstance(events[-1], mw.Finish)
    first, second = account.responses()
    assert first.bearer == tokens["access_token"] and second.bearer != first.bearer
    assert len(account.refreshes()) == 1
    assert json.loads(path.read_text())["tokens"]["access_token"] == second.bearer


async def test_a_second_401_is_the_answer(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    path = tmp_path / "auth.json"
    signed_in(account, path)
    account.refuse_all = True
    with pytest.raises(mw.AuthenticationError):
        await client(account, path, transport).complete(model="gpt-5.5", messages="hi")
    assert len(account.responses()) == 2 and len(account.refreshes()) == 1  # one renewal, no loop


async def test_a_failed_refresh_says_to_sign_in_again(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    path = tmp_path / "auth.json"
    tokens = signed_in(account, path, ttl=-10)
    # Another machine already spent this refresh token (single-use).
    other = CodexCredentials(tmp_path / "elsewhere.json", issuer=account.issuer, transport=transport)
    await other.refresh(FileTokenStore(path).load())
    with pytest.raises(mw.AuthenticationError, match=r"sign in again with `modelwire login`") as info:
        await client(account, path, transport).complete(model="gpt-5.5", messages="hi")
    assert info.value.code == "codex_login_required" and "refresh_token_reused" in info.value.message
    assert not any(secret in str(info.value) for secret in tokens.values())
    assert account.responses() == []  # nothing went upstream with a dead token
    assert json.loads(path.read_text())["tokens"] == tokens  # the file is left as it was


async def test_processes_sharing_a_file_refresh_once(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    """Two credential holders (two processes, each with its own lock) on one auth.json, both
    finding the token stale at once: the file lock lets one refresh; the other adopts its tokens
    rather than spend the single-use refresh token again."""
    path = tmp_path / "auth.json"
    signed_in(account, path, ttl=-10)
    account.refresh_delay = 0.3
    holders = [CodexCredentials(path, issuer=account.issuer, transport=transport) for _ in range(3)]
    headers = await asyncio.gather(*(h.headers() for h in holders))
    assert len(account.refreshes()) == 1
    assert len({h["Authorization"] for h in headers}) == 1
    assert headers[0]["Authorization"] == f"Bearer {json.loads(path.read_text())['tokens']['access_token']}"


async def test_a_401_after_another_process_refreshed_adopts_its_tokens(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    path = tmp_path / "auth.json"
    tokens = signed_in(account, path)
    ours = CodexCredentials(path, issuer=account.issuer, transport=transport)
    await ours.headers()  # cached
    theirs = CodexCredentials(path, issuer=account.issuer, transport=transport)
    fresh = await theirs.renew(tokens["access_token"])  # e.g. after its own 401
    account.revoke(tokens["access_token"])
    renewed = await ours.renew(tokens["access_token"])
    assert renewed["Authorization"] == fresh["Authorization"]
    assert len(account.refreshes()) == 1


def test_tokens_keep_their_secrets_out_of_repr() -> None:
    tokens = Tokens(
        access_token="eyJ-secret-access", refresh_token="rt-secret", id_token="eyJ-id", account_id="a"
    )
    assert "secret" not in repr(tokens) and "eyJ" not in repr(tokens) and "account_id='a'" in repr(tokens)


def test_the_file_is_private_and_keeps_other_keys(tmp_path: Path) -> None:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps({"OPENAI_API_KEY": "sk-kept", "auth_mode": "apikey"}))
    path.chmod(0o644)
    FileTokenStore(path).save(Tokens(access_token="a", refresh_token="r", last_refresh=time.time()))
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["OPENAI_API_KEY"] == "sk-kept" and doc["auth_mode"] == "chatgpt"
    assert doc["tokens"]["refresh_token"] == "r"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auth.json"]  # no temporary left behind
