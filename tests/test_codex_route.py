"""Using the Codex route: ``openai-codex/`` refs, its context cap, and its model listing, in the
library and through a real gateway process; the upstream is the scripted account of
tests/fake_codex.py (issuer and Codex backend)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import modelwire as mw
from modelwire.gateway.config import ConfigError, parse_config
from modelwire.gateway.routing import Router
from modelwire.gateway.upstream import Backend
from modelwire.providers.catalog import Catalog
from modelwire.providers.codex import REFRESH_URL_ENV, CodexCredentials
from modelwire.providers.transport import AiohttpTransport

from .fake_codex import FakeAccount
from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, request, start_gateway

LONG = "lorem ipsum dolor sit amet " * 1500  # about 7,500 tokens


@pytest.fixture
def signed_in(account: FakeAccount, tmp_path: Path) -> Path:
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(account.auth_json()))
    return path


def access_token(path: Path) -> str:
    return str(json.loads(path.read_text())["tokens"]["access_token"])


def codex_client(account: FakeAccount, path: Path, transport: AiohttpTransport, **settings: Any) -> mw.OpenAI:
    credentials = CodexCredentials(path, issuer=account.issuer, transport=transport)
    return mw.OpenAI(
        host="codex", base_url=account.codex_url, credentials=credentials, transport=transport, **settings
    )


# ----------------------------------------------------------------------------------------------
# openai-codex/ refs
# ----------------------------------------------------------------------------------------------


async def test_a_codex_ref_takes_the_codex_route_from_any_client(
    account: FakeAccount, signed_in: Path, upstream: FakeUpstream, transport: AiohttpTransport
) -> None:
    credentials = CodexCredentials(signed_in, issuer=account.issuer, transport=transport)
    client = mw.OpenAI(
        api_key="sk-native",
        base_url=upstream.url,
        transport=transport,
        credentials=credentials,
        codex_base_url=account.codex_url,
    )
    reply = await client.complete(model="openai-codex/gpt-5.5", messages="hi")
    assert reply.text == "codex says hi to gpt-5.5"
    (call,) = account.responses()
    assert call.body["model"] == "gpt-5.5" and call.bearer == access_token(signed_in)
    assert upstream.requests == []  # the native host never saw it
    upstream.script(Reply.text("native"))
    request_ = mw.Request(model="gpt-4.1", messages=[mw.user("hi")])
    assert (await client.complete(request_)).text == "native"
    assert upstream.last.headers["authorization"] == "Bearer sk-native"
    events = [e async for e in client.stream(request_, model="openai-codex/gpt-5.4")]
    assert isinstance(events[-1], mw.Finish) and account.responses()[-1].body["model"] == "gpt-5.4"


async def test_a_codex_ref_on_a_codex_client_names_the_model(
    account: FakeAccount, signed_in: Path, transport: AiohttpTransport
) -> None:
    client = codex_client(account, signed_in, transport)
    await client.complete(model="openai-codex/gpt-5.4-mini", messages="hi")
    assert account.responses()[-1].body["model"] == "gpt-5.4-mini"


def test_a_signed_in_route_takes_no_api_key_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-for-the-api")
    monkeypatch.setenv("CODEX_HOME", str(tmp_path))
    client = mw.OpenAI(host="codex")
    assert client.api_key is None and client.credentials is not None


def gateway_config(**backends: dict[str, Any]) -> dict[str, Any]:
    return {"backends": backends, "keys": [{"key": CLIENT_KEY, "name": "all"}]}


def test_gateway_codex_refs_go_to_the_codex_backend() -> None:
    config = parse_config(
        {
            **gateway_config(api={"type": "openai", "api_key": "sk-x"}, sub={"type": "codex"}),
            "models": [{"name": "mine", "route": ["openai-codex/gpt-5.5", "api/gpt-5.5"]}],
        }
    )
    router = Router(config)
    assert [t.ref for t in router.resolve("openai-codex/gpt-5.4").targets] == ["sub/gpt-5.4"]
    assert [t.ref for t in router.resolve("mine").targets] == ["sub/gpt-5.5", "api/gpt-5.5"]
    assert router.is_direct("openai-codex/gpt-5.4")


def test_a_backend_named_openai_codex_wins() -> None:
    config = parse_config(gateway_config(sub={"type": "codex"}, **{"openai-codex": {"type": "codex"}}))
    assert [t.ref for t in Router(config).resolve("openai-codex/gpt-5.5").targets] == ["openai-codex/gpt-5.5"]


def test_codex_refs_without_a_codex_backend_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"models\[0\]\.route\[0\]: openai-codex/… refs need a backend"):
        parse_config(
            {
                **gateway_config(api={"type": "openai", "api_key": "sk-x"}),
                "models": [{"name": "x", "route": "openai-codex/gpt-5.5"}],
            }
        )
    router = Router(parse_config(gateway_config(api={"type": "openai", "api_key": "sk-x"})))
    with pytest.raises(mw.NotFoundError, match="none is configured"):
        router.resolve("openai-codex/gpt-5.5")  # not handed to the default backend as a model name


# ----------------------------------------------------------------------------------------------
# The context cap
# ----------------------------------------------------------------------------------------------


def test_the_codex_route_caps_gpt_5_5_at_272k(tmp_path: Path) -> None:
    catalog = Catalog()
    assert catalog.profile("gpt-5.5").context_window == 1_050_000
    codex = mw.OpenAI(host="codex", credentials=CodexCredentials(tmp_path / "auth.json"), catalog=catalog)
    assert codex.planner.window("gpt-5.5") == 272_000
    assert codex.planner.window("gpt-4.1") == 272_000 and catalog.profile("gpt-4.1").context_window > 272_000
    assert mw.OpenAI(api_key="sk", catalog=catalog).planner.window("gpt-5.5") == 1_050_000
    lifted = mw.OpenAI(host="codex", credentials=CodexCredentials(tmp_path / "a"), context_cap=400_000)
    assert lifted.planner.window("gpt-5.5") == 400_000
    backend = Backend(
        "sub",
        parse_config(gateway_config(sub={"type": "codex"})).backends["sub"],
        catalog,
        AiohttpTransport(),
    )
    assert backend.context_window("gpt-5.5") == 272_000


async def test_a_request_over_the_cap_is_refused_before_it_is_sent(
    account: FakeAccount, signed_in: Path, transport: AiohttpTransport
) -> None:
    client = codex_client(account, signed_in, transport, context_cap=4096)
    with pytest.raises(
        mw.ContextLengthError, match="maximum context length on this route is 4096 tokens"
    ) as info:
        await client.complete(model="gpt-5.5", messages=LONG)
    assert info.value.code == "context_length_exceeded" and info.value.status == 400
    assert "the model itself takes 1050000" in info.value.message
    assert account.responses() == []
    near = "lorem ipsum dolor sit amet " * 200  # over the cap in bytes, under it in tokens: counted
    assert len(near) > 4096
    assert (await client.complete(model="gpt-5.5", messages=near)).text.startswith("codex says hi")


# ----------------------------------------------------------------------------------------------
# The model listing
# ----------------------------------------------------------------------------------------------


async def test_the_listing_adds_the_models_the_catalog_omits(
    account: FakeAccount, signed_in: Path, transport: AiohttpTransport
) -> None:
    account.catalog = ["gpt-5.4", "gpt-5.4-mini"]
    client = codex_client(account, signed_in, transport)
    assert await client.list_models() == ["gpt-5.4", "gpt-5.4-mini", "gpt-5.5"]
    (call,) = account.calls
    assert call.path.endswith("/models") and call.bearer
    account.catalog = ["gpt-5.5", "gpt-5.4"]
    assert await client.list_models() == ["gpt-5.5", "gpt-5.4"]  # listed once, in the catalog's order
    assert set(client.catalog.models()) == {"gpt-5.4", "gpt-5.4-mini", "gpt-5.5"}  # the catalog learnt them


async def test_the_listing_needs_a_sign_in(
    account: FakeAccount, tmp_path: Path, transport: AiohttpTransport
) -> None:
    with pytest.raises(mw.AuthenticationError, match="modelwire login"):
        await codex_client(account, tmp_path / "missing.json", transport).list_models()
    account.refuse_all = True  # signed in on our side, refused by the backend: nothing is served
    path = tmp_path / "auth.json"
    path.write_text(json.dumps(account.auth_json()))
    with pytest.raises(mw.AuthenticationError):
        await codex_client(account, path, transport).list_models()


# ----------------------------------------------------------------------------------------------
# Through a gateway process
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def codex_gateway(account: FakeAccount, tmp_path: Path) -> Iterator[tuple[RunningGateway, Path]]:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "auth.json").write_text(json.dumps(account.auth_json()))
    config = {
        "store": f"sqlite:///{tmp_path}/state.db",
        "backends": {"sub": {"type": "codex", "base_url": account.codex_url, "context_cap": 4096}},
        "keys": [{"key": CLIENT_KEY, "name": "all"}],
        "usage": {"flush_seconds": 0.1},
    }
    env = {"CODEX_HOME": str(home), REFRESH_URL_ENV: f"{account.issuer}/oauth/token"}
    running = start_gateway(config, tmp_path, env=env)
    try:
        yield running, home / "auth.json"
    finally:
        running.stop()


def chat(gateway: RunningGateway, model: str, text: str = "hi") -> tuple[int, dict[str, Any]]:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
    status, _, payload = request(
        gateway, "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    return status, json.loads(payload)


def test_the_gateway_serves_the_codex_route(
    account: FakeAccount, codex_gateway: tuple[RunningGateway, Path]
) -> None:
    gateway, auth = codex_gateway
    account.catalog = ["gpt-5.4"]
    status, _, payload = request(gateway, "GET", "/v1/models")
    assert status == 200
    assert [m["id"] for m in json.loads(payload)["data"]] == ["gpt-5.4", "gpt-5.5"]

    status, answer = chat(gateway, "gpt-5.5")  # omitted by the catalog, served all the same
    assert status == 200 and answer["choices"][0]["message"]["content"] == "codex says hi to gpt-5.5"
    status, answer = chat(gateway, "openai-codex/gpt-5.4")
    assert status == 200 and answer["choices"][0]["message"]["content"] == "codex says hi to gpt-5.4"

    sent = len(account.responses())
    status, answer = chat(gateway, "gpt-5.5", LONG)
    assert status == 400 and answer["error"]["code"] == "context_length_exceeded"
    assert "4096 tokens" in answer["error"]["message"] and len(account.responses()) == sent
    body = {"model": "gpt-5.5", "max_tokens": 64, "messages": [{"role": "user", "content": LONG}]}
    headers = {"Content-Type": "application/json", "anthropic-version": "2023-06-01"}
    status, _, payload = request(gateway, "POST", "/v1/messages", json.dumps(body).encode(), headers)
    error = json.loads(payload)["error"]
    assert status == 400 and error["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 4096 maximum", error["message"]), error
    assert len(account.responses()) == sent

    first = json.loads(auth.read_text())["tokens"]
    account.revoke(first["access_token"])
    status, answer = chat(gateway, "gpt-5.5")
    assert status == 200 and len(account.refreshes()) == 1
    assert json.loads(auth.read_text())["tokens"]["access_token"] == account.responses()[-1].bearer
    assert auth.stat().st_mode & 0o777 == 0o600
    log = gateway.log()
    for secret in (*first.values(), account.responses()[-1].bearer):
        assert secret not in log
