"""Codex sign-ins shared by gateway replicas through a real PostgreSQL store, sealed at rest.

Each test works in a schema of its own in the shared PostgreSQL (tests/services.py). The issuer
is the scripted account of tests/fake_codex.py, whose refresh tokens are single-use: replicas that
did not serialise their refreshes would have one of them refused with ``refresh_token_reused``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

import modelwire as mw
from modelwire.gateway.app import Gateway
from modelwire.gateway.config import parse_config
from modelwire.gateway.credentials import KEY_ENV, Cipher, CredentialsKeyError
from modelwire.gateway.signin_store import DatabaseTokenStore
from modelwire.gateway.store import Store, open_engine
from modelwire.gateway.tables import credentials_table
from modelwire.providers.codex import REFRESH_URL_ENV, CodexCredentials, FileTokenStore, Tokens
from modelwire.providers.transport import AiohttpTransport

from .fake_codex import FakeAccount
from .fake_upstream import FakeUpstream
from .gateway_fixtures import (
    CLIENT_KEY,
    MODELWIRE,
    RunningGateway,
    loaded_by_a_serving_gateway,
    request,
    start_gateway,
)
from .services import SHARED_POSTGRES_URL, drop_schema, new_schema_name, postgres_schema

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.urlsafe_b64encode(bytes(range(1, 33))).decode()


@pytest.fixture
def schema() -> Iterator[str]:
    name = new_schema_name()
    yield name
    drop_schema(name)


def tokens_of(grant: dict[str, str]) -> Tokens:
    tokens = Tokens.from_document({"tokens": grant})
    assert tokens is not None
    return tokens


def stored_secret(engine: Engine) -> tuple[int, bytes]:
    with engine.connect() as conn:
        row = conn.execute(select(credentials_table.c.version, credentials_table.c.secret)).one()
    return int(row.version), bytes(row.secret)


# ----------------------------------------------------------------------------------------------
# Sealing
# ----------------------------------------------------------------------------------------------


def test_sealed_secrets_open_only_with_their_key_and_name() -> None:
    cipher = Cipher.from_env({KEY_ENV: KEY})
    sealed = cipher.seal(b'{"refresh_token": "rt-secret"}', b"mw_credentials:codex")
    assert b"rt-secret" not in sealed and sealed[:1] == b"\x01"
    assert cipher.seal(b"same", b"ctx") != cipher.seal(b"same", b"ctx")  # a fresh nonce each time
    assert cipher.open(sealed, b"mw_credentials:codex") == b'{"refresh_token": "rt-secret"}'
    with pytest.raises(CredentialsKeyError, match="do not open with this MODELWIRE_CREDENTIALS_KEY"):
        cipher.open(sealed, b"mw_credentials:other")  # a row cannot pose as another
    other = Cipher.from_env({KEY_ENV: OTHER_KEY})
    with pytest.raises(CredentialsKeyError, match="sealed with") as info:
        other.open(sealed, b"mw_credentials:codex")
    assert OTHER_KEY not in str(info.value) and repr(other) == "Cipher(<key hidden>)"


def test_a_gateway_that_seals_nothing_does_not_load_cryptography(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """Its bindings would stay resident (~8 MiB) in every gateway; only a shared sign-in needs them."""
    assert loaded_by_a_serving_gateway(upstream, tmp_path, {"cryptography"}) == "200 []"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "MODELWIRE_CREDENTIALS_KEY is not set"),
        ("", "MODELWIRE_CREDENTIALS_KEY is not set"),
        ("not base64 at all!", "must be 32 random bytes"),
        (base64.b64encode(b"short").decode(), "must be 32 random bytes"),
    ],
)
def test_a_missing_or_malformed_key_is_refused(value: str | None, says: str) -> None:
    env = {} if value is None else {KEY_ENV: value}
    with pytest.raises(CredentialsKeyError, match=says) as info:
        Cipher.from_env(env)
    assert value is None or not value or value not in str(info.value)


def test_keys_in_either_base64_alphabet_open_the_same_seal() -> None:
    raw = bytes([251] * 32)  # encodes with '+' and '/' in the standard alphabet
    standard, urlsafe = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert "/" in standard and "_" in urlsafe
    sealed = Cipher.from_env({KEY_ENV: standard}).seal(b"x", b"c")
    assert Cipher.from_env({KEY_ENV: urlsafe.rstrip("=")}).open(sealed, b"c") == b"x"


# ----------------------------------------------------------------------------------------------
# The store's row
# ----------------------------------------------------------------------------------------------


async def test_tokens_round_trip_sealed_in_postgres(account: FakeAccount, schema: str) -> None:
    with Store(SHARED_POSTGRES_URL, schema=schema) as store:
        shared = DatabaseTokenStore(store.engine, Cipher.from_env({KEY_ENV: KEY}))
        with pytest.raises(mw.AuthenticationError, match="modelwire login --config"):
            await shared.read()
        grant = account.mint()
        await shared.write(tokens_of(grant))
        await shared.write(tokens_of(grant))  # a second sign-in replaces the row
        read = await shared.read()
        assert (read.access_token, read.refresh_token, read.account_id) == (
            grant["access_token"],
            grant["refresh_token"],
            "acct-fake-42",
        )
        version, secret = stored_secret(store.engine)
        assert version == 2
        assert not any(value.encode() in secret for value in grant.values())
        wrong = DatabaseTokenStore(store.engine, Cipher.from_env({KEY_ENV: OTHER_KEY}))
        with pytest.raises(CredentialsKeyError):
            await wrong.read()


async def test_replicas_refresh_once_and_the_losers_adopt_the_winners_tokens(
    account: FakeAccount, schema: str, transport: AiohttpTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three replicas (each its own engine, pool and lock) find the token stale at once: the row
    lock lets one spend the single-use refresh token; the others wait, re-read and adopt."""
    monkeypatch.setenv(REFRESH_URL_ENV, f"{account.issuer}/oauth/token")
    account.refresh_delay = 0.5
    stores = [Store(SHARED_POSTGRES_URL, schema=schema) for _ in range(3)]
    try:
        cipher = Cipher.from_env({KEY_ENV: KEY})
        await DatabaseTokenStore(stores[0].engine, cipher).write(tokens_of(account.mint(ttl=-10)))
        replicas = [
            CodexCredentials(store=DatabaseTokenStore(s.engine, cipher), transport=transport) for s in stores
        ]
        headers = await asyncio.gather(*(r.headers() for r in replicas))
        assert len(account.refreshes()) == 1
        assert len({h["Authorization"] for h in headers}) == 1
        version, _ = stored_secret(stores[0].engine)
        assert version == 2  # the sign-in, then the one refresh
        after = await DatabaseTokenStore(stores[1].engine, cipher).read()
        assert headers[0]["Authorization"] == f"Bearer {after.access_token}"
    finally:
        for s in stores:
            s.close()


# ----------------------------------------------------------------------------------------------
# Where a gateway keeps the sign-in
# ----------------------------------------------------------------------------------------------


def codex_config(store: str, account: FakeAccount) -> dict[str, Any]:
    return {
        "store": store,
        "backends": {"codex": {"type": "codex", "base_url": account.codex_url}},
        "keys": [{"key": CLIENT_KEY, "name": "all"}],
        "usage": {"flush_seconds": 0.1},
    }


async def test_a_sqlite_gateway_keeps_the_sign_in_in_its_file(
    account: FakeAccount, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)  # a single machine needs no key
    monkeypatch.setenv("CODEX_HOME", str(tmp_path))
    gateway = Gateway(parse_config(codex_config(f"sqlite:///{tmp_path}/state.db", account)))
    await gateway.startup()
    try:
        credentials = gateway.backends["codex"].credentials
        assert credentials is not None and isinstance(credentials.store, FileTokenStore)
        assert credentials.store.path == tmp_path / "auth.json"
    finally:
        await gateway.shutdown()


async def test_a_postgres_gateway_keeps_the_sign_in_sealed_in_its_store(
    account: FakeAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    with postgres_schema() as url:
        gateway = Gateway(parse_config(codex_config(url, account)))
        await gateway.startup()
        try:
            credentials = gateway.backends["codex"].credentials
            assert credentials is not None and isinstance(credentials.store, DatabaseTokenStore)
        finally:
            await gateway.shutdown()
        monkeypatch.delenv(KEY_ENV)
        closed = Gateway(parse_config(codex_config(url, account)))
        with pytest.raises(CredentialsKeyError, match="never in plaintext"):
            await closed.startup()  # fail closed, whichever way the gateway is started
        await closed.shutdown()


def test_serve_refuses_a_shared_store_without_a_key(account: FakeAccount, tmp_path: Path) -> None:
    with postgres_schema() as url:
        path = tmp_path / "gateway.yaml"
        path.write_text(json.dumps(codex_config(url, account)))
        env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
        done = subprocess.run(
            [MODELWIRE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=60, env=env
        )
    assert done.returncode != 0
    assert "MODELWIRE_CREDENTIALS_KEY is not set" in done.stderr and "never in plaintext" in done.stderr


def test_replicas_share_one_sign_in(account: FakeAccount, tmp_path: Path) -> None:
    """``modelwire login --device-code --config`` puts the sign-in in the PostgreSQL store; two
    gateway processes on that store, both finding the token stale, refresh it once between them
    and both answer; no replica writes a token file."""
    account.refresh_delay = 0.5
    home = tmp_path / "codex-home"
    home.mkdir()
    env = {KEY_ENV: KEY, "CODEX_HOME": str(home), REFRESH_URL_ENV: f"{account.issuer}/oauth/token"}
    with postgres_schema() as url:
        config = codex_config(url, account)
        path = tmp_path / "login.yaml"
        path.write_text(json.dumps(config))
        signed = subprocess.run(
            [MODELWIRE, "login", "--device-code", "--issuer", account.issuer, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert signed.returncode == 0, signed.stderr
        assert "the gateway's store" in signed.stderr and not (home / "auth.json").exists()
        engine = open_engine(url)
        try:
            asyncio.run(
                DatabaseTokenStore(engine, Cipher.from_env({KEY_ENV: KEY})).write(
                    tokens_of(account.mint(ttl=-10))
                )
            )
            replicas: list[RunningGateway] = []
            try:
                replicas += [start_gateway(config, tmp_path, env=env, name=f"replica{i}") for i in range(2)]
                answers = asyncio.run(_ask_both(replicas))
            finally:
                for replica in replicas:
                    replica.stop()
            assert [status for status, _ in answers] == [200, 200], answers
            assert all(b"codex says hi to gpt-5.5" in body for _, body in answers)
            assert len(account.refreshes()) == 1
            assert len({c.bearer for c in account.responses()}) == 1
            version, secret = stored_secret(engine)
            assert version == 3  # the device-code sign-in, the stale tokens written, the one refresh
            assert not any(c.bearer.encode() in secret for c in account.responses())
        finally:
            engine.dispose()
    assert not (home / "auth.json").exists()
    for replica in replicas:
        assert "rt-" not in replica.log() and "eyJ" not in replica.log()


async def _ask_both(replicas: list[RunningGateway]) -> list[tuple[int, bytes]]:
    body = json.dumps({"model": "gpt-5.5", "messages": [{"role": "user", "content": "hi"}]}).encode()
    headers = {"Content-Type": "application/json"}
    calls = [asyncio.to_thread(request, r, "POST", "/v1/chat/completions", body, headers) for r in replicas]
    return [(status, payload) for status, _, payload in await asyncio.gather(*calls)]
