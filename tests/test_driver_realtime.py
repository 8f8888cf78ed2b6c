"""The library's ``client.realtime.connect()`` against the fake's realtime upstream directly, and
the realtime wire helpers (the browser key subprotocol, usage and its price)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from modelwire import OpenAI
from modelwire.errors import (
    AuthenticationError,
    InvalidRequestError,
    RateLimitError,
    TimeoutError,
    UpstreamUnavailableError,
)
from modelwire.providers.catalog import Catalog
from modelwire.providers.realtime import key_from_subprotocols, realtime_usage

from .fake_realtime import RealtimeReply
from .fake_upstream import FakeUpstream

TOOL = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
Clients = Callable[..., OpenAI]


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Makes the test's clients and closes each after it: an unclosed client keeps its session."""
    made: list[OpenAI] = []

    def make(**kwargs: Any) -> OpenAI:
        made.append(OpenAI(**kwargs))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


async def until(conn: Any, kind: str) -> list[dict[str, Any]]:
    events = []
    async for event in conn:
        events.append(event)
        if event["type"] in (kind, "error"):
            return events
    raise AssertionError(f"closed before {kind}")


async def test_a_session_with_a_function_call(upstream: FakeUpstream, clients: Clients) -> None:
    upstream.realtime.script(RealtimeReply.call("lookup", '{"q":"x"}'), RealtimeReply.say("Found it."))
    client = clients(api_key="sk-lib-realtime", base_url=upstream.url)
    async with client.realtime.connect(model="gpt-realtime") as conn:
        assert (await conn.recv())["type"] == "session.created"
        await conn.update_session(output_modalities=["text"], tools=[TOOL])
        assert (await conn.recv())["type"] == "session.updated"
        await conn.send({"type": "response.create"})
        call = next(e for e in await until(conn, "response.done") if e["type"].endswith("arguments.done"))
        await conn.send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "42"},
            }
        )
        await conn.send({"type": "response.create"})
        events = await until(conn, "response.done")
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Found it."
    assert events[-1]["response"]["usage"]["output_tokens"] > 0
    seen = upstream.realtime.connections[-1]
    assert seen.path == "/v1/realtime" and seen.query == {"model": "gpt-realtime"}
    assert seen.headers["authorization"] == "Bearer sk-lib-realtime"
    assert seen.ended is not None or upstream.realtime.wait_ended(seen.number)  # closed on exit


async def test_azure_deployments_by_host(upstream: FakeUpstream, clients: Clients) -> None:
    client = clients(host="azure", base_url=upstream.root, api_version="2025-04-01-preview", api_key="az-lib")
    async with client.realtime.connect(model="voice-deployment", transcription=True) as conn:
        assert (await conn.recv())["session"]["type"] == "transcription"
    seen = upstream.realtime.connections[-1]
    assert seen.path == "/openai/realtime" and seen.headers["api-key"] == "az-lib"
    assert seen.query == {
        "api-version": "2025-04-01-preview",
        "deployment": "voice-deployment",
        "intent": "transcription",
    }


@pytest.mark.parametrize(("status", "kind"), [(429, RateLimitError), (503, UpstreamUnavailableError)])
async def test_a_refused_handshake_raises_by_status(
    upstream: FakeUpstream, status: int, kind: type[Exception], clients: Clients
) -> None:
    upstream.realtime.refuse_upgrades(status)
    client = clients(api_key="sk-lib", base_url=upstream.url)
    with pytest.raises(kind) as refused:
        async with client.realtime.connect(model="gpt-realtime"):
            pass
    assert refused.value.status == status  # type: ignore[attr-defined]


async def test_a_bad_key_is_an_authentication_error(upstream: FakeUpstream, clients: Clients) -> None:
    client = clients(api_key="", base_url=upstream.url)
    with pytest.raises(AuthenticationError):
        async with client.realtime.connect(model="gpt-realtime"):
            pass


async def test_the_handshake_is_bounded(clients: Clients) -> None:
    with socket.socket() as silent:  # accepts the connection, never answers the upgrade
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = clients(api_key="sk-lib", base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1")
        client.realtime.connect_timeout = 0.5
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async with client.realtime.connect(model="gpt-realtime"):
                pass
        assert time.monotonic() - started < 5


async def test_iteration_ends_when_the_server_drops(upstream: FakeUpstream, clients: Clients) -> None:
    upstream.realtime.script(RealtimeReply.dropped())
    async with clients(api_key="sk-lib", base_url=upstream.url).realtime.connect(
        model="gpt-realtime"
    ) as conn:
        await conn.send({"type": "response.create"})
        kinds = [e["type"] async for e in conn]
    assert kinds == ["session.created", "response.created"]


def test_hosts_without_a_realtime_api_say_so() -> None:
    client = OpenAI(api_key="sk-ant", host="anthropic", base_url="http://127.0.0.1:9")
    with pytest.raises(InvalidRequestError):
        client.realtime.connect(model="claude")


def test_the_browser_key_subprotocol() -> None:
    assert key_from_subprotocols(["realtime", "openai-insecure-api-key.sk-abc"]) == "sk-abc"
    assert key_from_subprotocols(["realtime", "openai-insecure-api-key."]) is None
    assert key_from_subprotocols(["realtime"]) is None


def test_realtime_usage_and_its_price() -> None:
    price = Catalog().profile("gpt-realtime-mini").price
    doc = {
        "input_tokens": 1000,
        "output_tokens": 500,
        "input_token_details": {
            "text_tokens": 400,
            "audio_tokens": 600,
            "cached_tokens": 300,
            "cached_tokens_details": {"text_tokens": 100, "audio_tokens": 200},
        },
        "output_token_details": {"text_tokens": 100, "audio_tokens": 400},
    }
    usage, cost = realtime_usage(doc, price)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens) == (1000, 300, 500)
    # gpt-realtime-mini: text $0.60 / cached $0.06 / out $2.40, audio $10 / cached $0.30 / out $20
    expected = (300 * 0.6 + 100 * 0.06 + 100 * 2.4 + 400 * 10 + 200 * 0.3 + 400 * 20) / 1_000_000
    assert cost == pytest.approx(expected) and usage.cost == cost
    _, text_cost = realtime_usage({"input_tokens": 10, "output_tokens": 5}, price)
    assert text_cost == pytest.approx((10 * 0.6 + 5 * 2.4) / 1_000_000)
    assert realtime_usage("garbage", price) == (realtime_usage(None, None)[0], None)


def test_each_realtime_model_has_audio_prices() -> None:
    catalog = Catalog()
    for model in (
        "gpt-realtime",
        "gpt-realtime-mini",
        "gpt-4o-realtime-preview",
        "gpt-4o-mini-realtime-preview",
    ):
        price = catalog.profile(model).price
        assert price is not None and price.audio is not None, model
        assert price.audio.input > price.input and price.audio.output > price.output, model


async def test_send_on_a_closed_connection_is_a_modelwire_error(
    upstream: FakeUpstream, clients: Clients
) -> None:
    conn = clients(api_key="sk-lib", base_url=upstream.url).realtime.connect(model="gpt-realtime")
    async with conn:
        await conn.recv()
    await asyncio.sleep(0)
    with pytest.raises(UpstreamUnavailableError):
        await conn.send({"type": "response.create"})
