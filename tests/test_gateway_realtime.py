"""The Realtime API through a real gateway: the official SDK's ``AsyncOpenAI().realtime.connect()``
(and a raw ``websockets`` client where the SDK cannot say it) against the fake's realtime upstream.

Events must pass through both ways unchanged, each ``response.done`` must be one usage row with
the right tokens and cost, every door (bad key, model not allowed, rpm, client secrets) must be shut
before anything reaches the upstream, and either side closing must close the other.
"""

from __future__ import annotations

import base64
import json
import socket as socketlib
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import websockets.sync.client as ws_client
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .fake_realtime import RealtimeReply
from .fake_upstream import FakeUpstream
from .gateway_fixtures import CLIENT_KEY, RunningGateway, base_config, request, start_gateway, usage_rows

pytestmark = pytest.mark.filterwarnings(
    "ignore:connect\\(\\) must be used as a context manager:DeprecationWarning"
)

SECRETS_KEY = "sk-client-secrets-000000"
RPM_KEY = "sk-client-rpm-000000000"
VAD_KEY = "sk-client-rpm-vad-0000000"
BUDGET_KEY = "sk-client-budget-00000000"
CHAT_ONLY_KEY = "sk-client-chat-only-0000"
TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def rt_gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp: Path = tmp_path_factory.mktemp("realtime")
    config = base_config(upstream_server, tmp)
    url = upstream_server.url
    config["backends"].update(
        {
            "rt": {"type": "openai", "base_url": url, "api_key": "sk-up-rt", "max_retries": 0},
            "rt_down": {"type": "openai", "base_url": url, "api_key": "sk-up-down", "max_retries": 0},
            "az": {
                "type": "azure",
                "base_url": upstream_server.root,
                "api_version": "2025-04-01-preview",
                "api_key": "az-up-key",
            },
        }
    )
    config["models"] = [
        {"name": "realtime", "route": "rt/gpt-realtime"},
        {"name": "realtime-failover", "route": ["rt_down/gpt-realtime", "rt/gpt-realtime"]},
        {"name": "realtime-azure", "route": "az/my-realtime-deployment"},
        *config["models"],
    ]
    config["keys"] = [
        *config["keys"],
        {"key": SECRETS_KEY, "name": "secrets", "realtime_secrets": True},
        {"key": VAD_KEY, "name": "vad", "rpm": 2},
        {"key": BUDGET_KEY, "name": "budget", "budget_usd": 0.001},
    ]
    running = start_gateway(config, tmp)
    try:
        yield running
    finally:
        running.stop()
    log = running.log()
    assert "Traceback" not in log and CLIENT_KEY not in log, log


def sdk(gateway: RunningGateway, key: str = CLIENT_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def ws_url(gateway: RunningGateway, model: str = "realtime") -> str:
    return gateway.url.replace("http://", "ws://") + f"/v1/realtime?model={model}"


def raw_socket(gateway: RunningGateway, model: str = "realtime", key: str = CLIENT_KEY) -> Any:
    return ws_client.connect(ws_url(gateway, model), additional_headers={"Authorization": f"Bearer {key}"})


def drop(connection: Any) -> None:
    """The client's TCP connection just goes, with no close frame. A shutdown, not a bare close:
    the client's reader thread blocks in recv on the socket, which keeps a closed descriptor open."""
    connection.socket.shutdown(socketlib.SHUT_RDWR)
    connection.socket.close()


async def until(connection: Any, kind: str) -> list[Any]:
    events = []
    async for event in connection:
        events.append(event)
        if event.type in (kind, "error"):
            return events
    raise AssertionError(f"the socket closed before {kind}")


def raw_until(socket: Any, kind: str) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(socket.recv(timeout=20))
        events.append(event)
        if event["type"] in (kind, "error"):
            return events


def refusal(err: InvalidStatus) -> tuple[int, dict[str, Any]]:
    return err.response.status_code, json.loads(err.response.body or b"{}")


# ------------------------------------------------------------------------------------ sessions


async def test_a_function_call_round_trip_through_the_gateway(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.realtime.script(
        RealtimeReply.call("get_weather", '{"city":"Paris"}'), RealtimeReply.say("It is sunny in Paris.")
    )
    async with sdk(rt_gateway).realtime.connect(model="realtime") as conn:
        created = await conn.recv()
        assert created.type == "session.created"
        await conn.session.update(
            session={"type": "realtime", "output_modalities": ["text"], "tools": [TOOL]}
        )
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]}
        )
        await conn.response.create()
        first = await until(conn, "response.done")
        done = next(e for e in first if e.type == "response.function_call_arguments.done")
        assert (done.name, done.arguments) == ("get_weather", '{"city":"Paris"}')
        deltas = "".join(e.delta for e in first if e.type == "response.function_call_arguments.delta")
        assert deltas == '{"city":"Paris"}'
        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": done.call_id, "output": '{"sky":"clear"}'}
        )
        await conn.response.create()
        second = await until(conn, "response.done")
        text = "".join(e.delta for e in second if e.type == "response.output_text.delta")
        assert text == "It is sunny in Paris."
    socket = upstream.realtime.connections[-1]
    assert socket.query == {"model": "gpt-realtime"}  # the public name routed to the upstream's
    assert socket.headers["authorization"] == "Bearer sk-up-rt"
    assert CLIENT_KEY not in json.dumps(socket.headers)
    kinds = [e["type"] for e in socket.events]
    assert kinds.count("response.create") == 2 and "session.update" in kinds
    assert {"type": "function_call_output", "call_id": done.call_id, "output": '{"sky":"clear"}'} in [
        e.get("item") for e in socket.events
    ]
    for response in (first[-1].response, second[-1].response):
        rows = usage_rows(rt_gateway, response.id)
        assert len(rows) == 1, response.id
        row = rows[0]
        assert (row["public_model"], row["backend"], row["upstream_model"]) == (
            "realtime",
            "rt",
            "gpt-realtime",
        )
        assert (row["input_tokens"], row["output_tokens"]) == (
            response.usage.input_tokens,
            response.usage.output_tokens,
        )
        assert row["dialect"] == "openai_realtime" and row["key_name"] == "all" and row["status"] == 200


def test_audio_and_every_event_pass_through_unchanged(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    chunks = [bytes(range(256)) * 4, b"\x00\xff" * 300, b"\x7f" * 17]
    upstream.realtime.script(RealtimeReply.speak(chunks, "Here is some audio"))
    with raw_socket(rt_gateway) as socket:
        frames = [socket.recv(timeout=20)]
        socket.send(json.dumps({"type": "response.create"}))
        while '"response.done"' not in frames[-1]:
            frames.append(socket.recv(timeout=20))
    sent = upstream.realtime.connections[-1].sent
    assert frames == sent  # the very frames the upstream sent, byte for byte, in order
    audio = [base64.b64decode(json.loads(f)["delta"]) for f in frames if "output_audio.delta" in f]
    assert audio == chunks


def test_usage_is_priced_audio_and_text_apart(rt_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    counts = {
        "input_text": 100,
        "input_audio": 200,
        "cached_text": 50,
        "cached_audio": 100,
        "output_text": 10,
        "output_audio": 400,
    }
    upstream.realtime.script(RealtimeReply.speak([b"\x01\x02"], "hi", **counts))
    with raw_socket(rt_gateway) as socket:
        socket.send(json.dumps({"type": "response.create"}))
        done = raw_until(socket, "response.done")[-1]
    row = usage_rows(rt_gateway, done["response"]["id"])[0]
    # gpt-realtime: text $4 / cached $0.40 / out $16, audio $32 / cached $0.40 / out $64 per 1M
    expected = (50 * 4 + 50 * 0.4 + 10 * 16 + 100 * 32 + 100 * 0.4 + 400 * 64) / 1_000_000
    assert row["cost"] == pytest.approx(expected)
    assert (row["input_tokens"], row["cached_tokens"], row["output_tokens"]) == (300, 150, 410)


# -------------------------------------------------------------------------------------- doors


def test_a_browser_authenticates_with_the_key_subprotocol(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    offered = ["realtime", f"openai-insecure-api-key.{CLIENT_KEY}", "openai-beta.realtime-v1"]
    with ws_client.connect(ws_url(rt_gateway), subprotocols=offered) as socket:  # type: ignore[arg-type]
        assert socket.subprotocol == "realtime"  # never the key
        assert json.loads(socket.recv(timeout=20))["type"] == "session.created"
    headers = upstream.realtime.connections[-1].headers
    assert headers["authorization"] == "Bearer sk-up-rt" and headers["openai-beta"] == "realtime=v1"
    assert CLIENT_KEY not in json.dumps(headers)
    bad = ["realtime", "openai-insecure-api-key.sk-wrong-key-123456"]
    with pytest.raises(InvalidStatus) as refused:
        ws_client.connect(ws_url(rt_gateway), subprotocols=bad)  # type: ignore[arg-type]
    assert refusal(refused.value)[0] == 401


def test_a_wrong_key_is_refused_on_the_handshake(rt_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with pytest.raises(InvalidStatus) as refused:
        raw_socket(rt_gateway, key="sk-not-a-key-0000000")
    status, doc = refusal(refused.value)
    assert status == 401 and doc["error"]["code"] == "invalid_api_key"
    with pytest.raises(InvalidStatus) as missing:
        ws_client.connect(ws_url(rt_gateway))
    assert refusal(missing.value)[0] == 401
    assert upstream.realtime.connections == []  # nothing reached the upstream


def test_a_key_not_allowed_the_model_is_refused(rt_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with pytest.raises(InvalidStatus) as refused:
        raw_socket(rt_gateway, key=CHAT_ONLY_KEY)
    status, doc = refusal(refused.value)
    assert status == 403 and doc["error"]["code"] == "model_not_allowed"
    with pytest.raises(InvalidStatus) as unknown:
        ws_client.connect(
            rt_gateway.url.replace("http", "ws") + "/v1/realtime",
            additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        )
    assert refusal(unknown.value)[0] == 400  # no model at all
    assert upstream.realtime.connections == []


def test_rpm_exceeded_mid_session_is_an_error_event(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    with raw_socket(rt_gateway, key=RPM_KEY) as socket:  # rpm 2: the handshake is one request
        socket.send(json.dumps({"type": "response.create"}))
        assert raw_until(socket, "response.done")[-1]["type"] == "response.done"
        socket.send(json.dumps({"type": "response.create", "event_id": "evt_over"}))
        error = raw_until(socket, "error")[-1]
        assert error["type"] == "error"
        assert error["error"]["type"] == "rate_limit_exceeded" and error["error"]["event_id"] == "evt_over"
        socket.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        assert raw_until(socket, "session.updated")[-1]["type"] == "session.updated"  # still open
    kinds = [e["type"] for e in upstream.realtime.connections[-1].events]
    assert kinds == ["response.create", "session.update"]  # the refused one never went upstream


def test_a_spent_budget_stops_the_next_response_and_the_next_handshake(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.realtime.script(RealtimeReply.speak([b"\x00"], "pricey", output_audio=100_000))  # $6.40
    with raw_socket(rt_gateway, key=BUDGET_KEY) as socket:
        socket.send(json.dumps({"type": "response.create"}))
        done = raw_until(socket, "response.done")[-1]
        assert usage_rows(rt_gateway, done["response"]["id"])[0]["cost"] > 0.001
        deadline = time.monotonic() + 10
        while True:  # the spend reaches the key's counters just after the row is queued
            socket.send(json.dumps({"type": "response.create"}))
            event = raw_until(socket, "response.done")[-1]
            if event["type"] == "error" or time.monotonic() > deadline:
                break
        assert event["type"] == "error" and event["error"]["code"] == "budget_exceeded"
    with pytest.raises(InvalidStatus) as refused:
        raw_socket(rt_gateway, key=BUDGET_KEY)
    status, doc = refusal(refused.value)
    assert status == 429 and doc["error"]["code"] == "budget_exceeded"


def test_realtime_and_responses_sockets_share_the_key_cap(
    upstream_server: FakeUpstream, tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = base_config(upstream_server, tmp_path)
    config["server"] = {**config["server"], "websocket_sockets_per_key": 1}
    config["backends"]["rt"] = {"type": "openai", "base_url": upstream_server.url, "api_key": "sk-up-rt"}
    config["models"] = [{"name": "realtime", "route": "rt/gpt-realtime"}, *config["models"]]
    gateway = start_gateway(config, tmp_path, name="capped")
    try:
        with raw_socket(gateway) as first:
            assert json.loads(first.recv(timeout=20))["type"] == "session.created"
            for url in (ws_url(gateway), gateway.url.replace("http://", "ws://") + "/v1/responses"):
                with pytest.raises(InvalidStatus) as refused:
                    ws_client.connect(url, additional_headers={"Authorization": f"Bearer {CLIENT_KEY}"})
                status, doc = refusal(refused.value)
                assert status == 429 and doc["error"]["code"] == "websocket_connection_limit_reached"
        deadline = time.monotonic() + 10
        while True:  # the place is freed once the gateway has seen the close
            try:
                with raw_socket(gateway) as again:
                    assert json.loads(again.recv(timeout=20))["type"] == "session.created"
                break
            except InvalidStatus:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        gateway.stop()


def test_a_response_the_server_starts_itself_is_limited_too(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """With voice activity detection the server starts responses without a response.create: the
    gateway checks the key when one is created, and cancels it when the key is over its limits."""
    vad = {"type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}}}
    audio = json.dumps(
        {"type": "input_audio_buffer.append", "audio": base64.b64encode(b"\x01" * 64).decode()}
    )
    turn = [audio, json.dumps({"type": "input_audio_buffer.commit"})]
    with raw_socket(rt_gateway, key=VAD_KEY) as socket:  # rpm 2: the handshake is one request
        socket.send(json.dumps({"type": "session.update", "session": vad}))
        for frame in turn:
            socket.send(frame)
        first = raw_until(socket, "response.done")  # the second request: allowed
        assert first[-1]["type"] == "response.done"
        for frame in turn:
            socket.send(frame)
        second = []
        while not second or second[-1]["type"] != "response.done":
            second.append(json.loads(socket.recv(timeout=20)))
    refusals = [e for e in second if e["type"] == "error"]
    assert len(refusals) == 1 and refusals[0]["error"]["type"] == "rate_limit_exceeded"
    cancelled = next(e for e in second if e["type"] == "response.created")["response"]["id"]
    # The cancel goes upstream while the refusal goes to the client: allow it to arrive.
    cancel = {"type": "response.cancel", "response_id": cancelled}
    deadline = time.monotonic() + 5.0
    while cancel not in upstream.realtime.connections[-1].events and time.monotonic() < deadline:
        time.sleep(0.02)
    sent = upstream.realtime.connections[-1].events
    assert cancel in sent
    assert not any(e["type"] == "response.create" for e in sent)  # both started by the server


def test_a_client_that_drops_closes_the_upstream_socket(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    socket = raw_socket(rt_gateway)
    assert json.loads(socket.recv(timeout=20))["type"] == "session.created"
    number = upstream.realtime.connections[-1].number
    drop(socket)
    assert upstream.realtime.wait_ended(number)


def test_a_client_that_leaves_mid_response_is_charged_what_it_used(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    """The client goes while a response is under way: the gateway cancels it upstream and records
    the usage its ``response.done`` (cancelled) reports, rather than a cut with nothing charged."""
    upstream.realtime.script(RealtimeReply.held(input_text=40, output_text=70))
    socket = raw_socket(rt_gateway)
    assert json.loads(socket.recv(timeout=20))["type"] == "session.created"
    socket.send(json.dumps({"type": "response.create"}))
    created = json.loads(socket.recv(timeout=20))
    while created["type"] != "response.created":
        created = json.loads(socket.recv(timeout=20))
    response_id = created["response"]["id"]
    number = upstream.realtime.connections[-1].number
    drop(socket)
    assert upstream.realtime.wait_ended(number)
    sent = upstream.realtime.connections[-1].events
    assert {"type": "response.cancel", "response_id": response_id} in sent
    row = usage_rows(rt_gateway, response_id)[0]
    assert (row["status"], row["error"]) == (200, None)
    assert (row["input_tokens"], row["output_tokens"]) == (40, 70)
    assert row["cost"] > 0


def test_an_upstream_that_drops_closes_the_client_socket(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.realtime.script(RealtimeReply.dropped())
    frames = []
    with raw_socket(rt_gateway) as socket:
        socket.send(json.dumps({"type": "response.create"}))
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(json.loads(socket.recv(timeout=20)))
    created = next(f for f in frames if f["type"] == "response.created")["response"]["id"]
    row = usage_rows(rt_gateway, created)[0]  # cut before its end: recorded, its usage unknown
    assert (row["status"], row["error"], row["output_tokens"]) == (499, "cut", 0)


def test_a_refused_upstream_upgrade_fails_over(rt_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.realtime.refuse_upgrades(503)
    with raw_socket(rt_gateway, model="realtime-failover") as socket:
        assert json.loads(socket.recv(timeout=20))["type"] == "session.created"
    assert [c.headers["authorization"] for c in upstream.realtime.connections] == ["Bearer sk-up-rt"]
    upstream.realtime.refuse_upgrades(503)
    with pytest.raises(InvalidStatus) as refused:  # one backend only: the refusal reaches the client
        raw_socket(rt_gateway, model="realtime")
    assert refusal(refused.value)[0] == 503


async def test_azure_realtime_path(rt_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.realtime.script(RealtimeReply.say("Azure says hi."))
    async with sdk(rt_gateway).realtime.connect(model="realtime-azure") as conn:
        await conn.response.create()
        events = await until(conn, "response.done")
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Azure says hi."
    socket = upstream.realtime.connections[-1]
    assert socket.path == "/openai/realtime"
    assert socket.query == {"api-version": "2025-04-01-preview", "deployment": "my-realtime-deployment"}
    assert socket.headers["api-key"] == "az-up-key" and "authorization" not in socket.headers


async def test_a_transcription_session(rt_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.realtime.script(RealtimeReply.say("the quick brown fox"))
    client = sdk(rt_gateway)
    async with client.realtime.connect(model="realtime", extra_query={"intent": "transcription"}) as conn:
        assert (await conn.recv()).session.type == "transcription"
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00\x01" * 800).decode())
        await conn.input_audio_buffer.commit()
        events = await until(conn, "conversation.item.input_audio_transcription.completed")
    deltas = [e.delta for e in events if e.type == "conversation.item.input_audio_transcription.delta"]
    assert "".join(deltas) == "the quick brown fox" and events[-1].transcript == "the quick brown fox"
    assert upstream.realtime.connections[-1].query == {"model": "gpt-realtime", "intent": "transcription"}


# ----------------------------------------------------------------------------- client secrets


async def test_client_secrets_only_for_keys_allowed_to_mint_them(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    minted = await sdk(rt_gateway, SECRETS_KEY).realtime.client_secrets.create(
        session={"type": "realtime", "model": "realtime"}
    )
    assert minted.value.startswith("ek_") and minted.session.type == "realtime"
    headers, body = upstream.realtime.secrets[-1]
    assert headers["authorization"] == "Bearer sk-up-rt" and SECRETS_KEY not in json.dumps(headers)
    assert body["session"]["model"] == "gpt-realtime"
    with pytest.raises(openai.PermissionDeniedError) as refused:
        await sdk(rt_gateway).realtime.client_secrets.create(
            session={"type": "realtime", "model": "realtime"}
        )
    assert refused.value.code == "client_secrets_not_allowed"
    with pytest.raises(openai.PermissionDeniedError):  # allowed to mint, but not for a model it may not use
        await sdk(rt_gateway, CHAT_ONLY_KEY).realtime.client_secrets.create(
            session={"type": "realtime", "model": "realtime"}
        )
    assert len(upstream.realtime.secrets) == 1


def test_transcription_sessions_are_minted_like_client_secrets(
    rt_gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    body = json.dumps({"input_audio_transcription": {"model": "realtime"}}).encode()
    status, _, answer = request(
        rt_gateway,
        "POST",
        "/v1/realtime/transcription_sessions",
        body,
        {"Authorization": f"Bearer {SECRETS_KEY}"},
    )
    assert status == 200 and json.loads(answer)["client_secret"]["value"].startswith("ek_")
    headers, sent = upstream.realtime.secrets[-1]
    assert headers["authorization"] == "Bearer sk-up-rt"
    assert sent["input_audio_transcription"]["model"] == "gpt-realtime"
    status, _, answer = request(rt_gateway, "POST", "/v1/realtime/transcription_sessions", body)
    assert status == 403 and json.loads(answer)["error"]["code"] == "client_secrets_not_allowed"
    status, _, answer = request(
        rt_gateway, "POST", "/v1/realtime/client_secrets", b"{}", {"Authorization": f"Bearer {SECRETS_KEY}"}
    )
    assert status == 400 and json.loads(answer)["error"]["param"] == "session"
    assert len(upstream.realtime.secrets) == 1


def test_realtime_responses_show_in_the_metrics(rt_gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with raw_socket(rt_gateway) as socket:
        socket.send(json.dumps({"type": "response.create"}))
        raw_until(socket, "response.done")
    with urllib.request.urlopen(rt_gateway.url + "/metrics", timeout=10) as reply:
        text = reply.read().decode()
    assert 'surface="openai_realtime"' in text and "modelwire_websocket" in text
