"""Bad input is a feature: every way a client, an upstream or an operator can get it wrong, end to end.

A real ``modelwire serve`` process on loopback against the scripted fake upstream. Each case checks the
answer a client sees (the right status, the OpenAI error shape validated against the official spec, a
message that names the field or problem, an ``x-request-id``), that no traceback reaches the body or the
gateway's log for a client's mistake, and that the gateway still serves a normal request afterwards.
"""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import orjson
import psycopg
import pytest
import yaml
from sqlalchemy import select

from modelwire.gateway.config import load_config
from modelwire.gateway.store import Store
from modelwire.gateway.tables import usage_table

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import (
    CLIENT_KEY,
    MODELWIRE,
    RunningGateway,
    base_config,
    free_port,
    sse_events,
    start_gateway,
)
from .services import SHARED_POSTGRES_URL as PG_URL
from .spec import assert_openai

CHAT_ONLY_KEY = "sk-client-chat-only-0000"
USER = [{"role": "user", "content": "q"}]
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
KEEPALIVE = b": keep-alive\n\n"

Reply_ = tuple[int, dict[str, str], bytes]


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The module's gateway: ``base_config`` plus two backends that never retry (for garbage upstreams)."""
    tmp = tmp_path_factory.mktemp("robustness")
    config = base_config(upstream_server, tmp)
    config["backends"]["brittle"] = {
        "type": "openai-compatible",
        "api": "chat",
        "base_url": upstream_server.url,
        "api_key": "sk-up-brittle",
        "max_retries": 0,
    }
    config["backends"]["brittle_resp"] = {
        "type": "openai",
        "api": "responses",
        "base_url": upstream_server.url,
        "api_key": "sk-up-brittle-resp",
        "max_retries": 0,
    }
    config["models"] = [
        {"name": "brittle-chat", "route": "brittle/gpt-4.1"},
        {"name": "brittle-resp", "route": "brittle_resp/gpt-4.1"},
        *config["models"],
    ]
    running = start_gateway(config, tmp)
    try:
        yield running
    finally:
        running.stop()


def send(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | list[Any] | None = None,
    headers: dict[str, str] | None = None,
    *,
    key: str | None = CLIENT_KEY,
) -> Reply_:
    """A raw request; ``key=None`` sends no credentials at all."""
    data = orjson.dumps(body) if isinstance(body, dict | list) else body
    sent = {"Content-Type": "application/json"} if data is not None else {}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    sent.update(headers or {})
    req = urllib.request.Request(gateway.url + path, data=data, method=method, headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def assert_error(reply: Reply_, status: int, *needles: str, param: str | None = None) -> dict[str, Any]:
    """An OpenAI-shaped error with this status whose message holds every needle (case-insensitive)."""
    code, headers, body = reply
    assert code == status, body[:600]
    assert headers.get("x-request-id"), headers
    assert b"Traceback" not in body and b'File "' not in body, body
    doc = orjson.loads(body)
    assert_openai("ErrorResponse", doc)
    error: dict[str, Any] = doc["error"]
    message = error["message"].lower()
    for needle in needles:
        assert needle.lower() in message, error
    if param is not None:
        assert error["param"] == param or param in error["message"], error
    return error


def log_mark(gateway: RunningGateway) -> int:
    return len(gateway.log())


def assert_no_traceback_since(gateway: RunningGateway, mark: int) -> None:
    new = gateway.log()[mark:]
    assert "Traceback" not in new, new[-3000:]


def assert_still_serves(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("still here"))
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        completion = sdk.chat.completions.create(model="chat-model", messages=USER)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "still here"


def open_stream(
    gateway: RunningGateway, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = gateway.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    sent = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json", **(headers or {})}
    conn.request("POST", path, body=orjson.dumps(body), headers=sent)
    return conn, conn.getresponse()


def read_to_end(response: http.client.HTTPResponse, already: bytes = b"") -> bytes:
    data = already
    while chunk := response.read1(65536):
        data += chunk
    return data


def usage_rows(store_url: str, request_id: str) -> list[dict[str, Any]]:
    with Store(store_url) as store, store.engine.connect() as conn:
        stmt = select(usage_table).where(usage_table.c.request_id == request_id)
        return [dict(row) for row in conn.execute(stmt).mappings()]


def wait_for_usage(store_url: str, request_id: str, timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    rows = usage_rows(store_url, request_id)
    while not rows and time.monotonic() < deadline:
        time.sleep(0.05)
        rows = usage_rows(store_url, request_id)
    return rows


def minimal_backends() -> dict[str, Any]:
    return {"a": {"type": "openai-compatible", "base_url": "http://127.0.0.1:9/v1", "api_key": "sk-up-a"}}


# ----------------------------------------------------------------------------------------------
# Malformed bodies
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"model": "chat-model", "messages": [', "json"),
        (b"", "empty"),
        (b'[{"model": "chat-model"}]', "object"),
    ],
    ids=["malformed", "empty", "array"],
)
def test_body_that_is_not_a_json_object(
    upstream: FakeUpstream, gateway: RunningGateway, path: str, raw: bytes, needle: str
) -> None:
    mark = log_mark(gateway)
    error = assert_error(send(gateway, "POST", path, raw), 400, needle)
    assert error["type"] == "invalid_request_error"
    assert upstream.requests == []
    assert_no_traceback_since(gateway, mark)
    assert_still_serves(gateway, upstream)


TRANSLATED_TYPE_ERRORS = [
    (CHAT, "resp-model", "messages", "hi"),
    (CHAT, "resp-model", "temperature", "hot"),
    (CHAT, "resp-model", "max_tokens", "x"),
    (CHAT, "resp-model", "stream", "yes"),
    (CHAT, "chat-model", "stream", "yes"),
    (RESPONSES, "chat-model", "input", 5),
    (RESPONSES, "chat-model", "temperature", "hot"),
    (RESPONSES, "chat-model", "max_output_tokens", "x"),
    (RESPONSES, "resp-model", "stream", "yes"),
]


def _typed_body(path: str, model: str, field: str, value: Any) -> dict[str, Any]:
    body: dict[str, Any] = (
        {"model": model, "messages": USER} if path == CHAT else {"model": model, "input": "q"}
    )
    body[field] = value
    return body


PASSTHROUGH_TYPE_ERRORS = [
    (CHAT, "chat-model", "messages", "hi"),
    (CHAT, "chat-model", "temperature", "hot"),
    (CHAT, "chat-model", "max_tokens", "x"),
    (RESPONSES, "resp-model", "input", 5),
    (RESPONSES, "resp-model", "temperature", "hot"),
    (RESPONSES, "resp-model", "max_output_tokens", "x"),
]
TYPE_ERRORS = TRANSLATED_TYPE_ERRORS + PASSTHROUGH_TYPE_ERRORS


@pytest.mark.parametrize(
    ("path", "model", "field", "value"),
    TYPE_ERRORS,
    ids=[f"{p.rsplit('/', 1)[-1]}-{m}-{f}" for p, m, f, _ in TYPE_ERRORS],
)
def test_wrong_types_are_refused_naming_the_field(
    upstream: FakeUpstream, gateway: RunningGateway, path: str, model: str, field: str, value: Any
) -> None:
    """A 400 in the OpenAI shape with ``param`` = field, and nothing sent upstream, on translated routes
    (which decode the body) and on passthrough routes alike: the fast path does not decode the body, but
    forwarding a spec-invalid one is not an option (the ``upstream`` fixture fails any request the real
    API would reject, and the fake, unlike the real API, answers it 200)."""
    mark = log_mark(gateway)
    error = assert_error(send(gateway, "POST", path, _typed_body(path, model, field, value)), 400, field)
    assert error["param"] == field
    assert upstream.requests == []
    assert_no_traceback_since(gateway, mark)
    assert_still_serves(gateway, upstream)


@pytest.mark.parametrize("path", [CHAT, RESPONSES])
@pytest.mark.parametrize("model", [None, 5, "", ["chat-model"]], ids=["missing", "int", "empty", "list"])
def test_model_missing_or_not_a_string(
    upstream: FakeUpstream, gateway: RunningGateway, path: str, model: Any
) -> None:
    body: dict[str, Any] = {"messages": USER} if path == CHAT else {"input": "q"}
    if model is not None:
        body["model"] = model
    mark = log_mark(gateway)
    error = assert_error(send(gateway, "POST", path, body), 400, "model", param="model")
    assert error["param"] == "model"
    assert upstream.requests == []
    assert_no_traceback_since(gateway, mark)


@pytest.mark.parametrize("path", [CHAT, RESPONSES, "/v1/embeddings"])
def test_unknown_model_is_404_listing_the_available_ones(
    upstream: FakeUpstream, gateway: RunningGateway, path: str
) -> None:
    body = {"model": "no-such-model", "messages": USER, "input": "q"}
    if path == CHAT:
        body.pop("input")
    else:
        body.pop("messages")
    error = assert_error(send(gateway, "POST", path, body), 404, "no-such-model", "chat-model", "resp-model")
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert upstream.requests == []
    assert_still_serves(gateway, upstream)


def test_unknown_url_is_404_in_openai_shape(gateway: RunningGateway) -> None:
    assert_error(send(gateway, "GET", "/v1/no/such/thing"), 404, "/v1/no/such/thing")
    assert_error(send(gateway, "DELETE", "/v1/chat/completions"), 404)


def test_unsupported_parameter_on_a_translated_route(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    body = {"model": "resp-model", "messages": USER, "n": 3}
    error = assert_error(send(gateway, "POST", CHAT, body), 400, "n")
    assert error["param"] == "n"
    assert upstream.requests == []
    with (
        openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk,
        pytest.raises(openai.BadRequestError) as caught,
    ):
        sdk.chat.completions.create(model="resp-model", messages=USER, n=3)  # type: ignore[arg-type]
    assert caught.value.param == "n"
    assert_still_serves(gateway, upstream)


# ----------------------------------------------------------------------------------------------
# Body size
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("small")
    config = base_config(upstream_server, tmp)
    config["server"] = {**config["server"], "max_body_bytes": 2048}
    running = start_gateway(config, tmp)
    try:
        yield running
    finally:
        running.stop()


def test_body_over_the_limit_is_413(upstream: FakeUpstream, small_gateway: RunningGateway) -> None:
    body = {"model": "chat-model", "messages": [{"role": "user", "content": "x" * 10_240}]}
    mark = log_mark(small_gateway)
    error = assert_error(send(small_gateway, "POST", CHAT, body), 413, "larger")
    assert error["code"] == "request_too_large"
    assert upstream.requests == []
    assert_no_traceback_since(small_gateway, mark)
    assert_still_serves(small_gateway, upstream)


def test_body_limit_message_states_the_limit(small_gateway: RunningGateway) -> None:
    """2048 bytes is not "0 MiB": the message should give the limit in a unit that does not round it away."""
    body = {"model": "chat-model", "messages": [{"role": "user", "content": "x" * 10_240}]}
    error = assert_error(send(small_gateway, "POST", CHAT, body), 413)
    assert any(limit in error["message"] for limit in ("2048", "2 KiB", "2.0 KiB", "2 kB")), error


def test_declared_length_over_the_limit_is_refused_before_reading(
    upstream: FakeUpstream, small_gateway: RunningGateway
) -> None:
    host, port = small_gateway.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", CHAT)
        conn.putheader("Authorization", f"Bearer {CLIENT_KEY}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(10**9))
        conn.endheaders()
        conn.send(b'{"model": "chat-model"}')  # a gigabyte promised, a few bytes sent
        started = time.monotonic()
        response = conn.getresponse()
        status, headers, body = response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()
    assert time.monotonic() - started < 5  # judged by the declared length, not by waiting for the body
    assert_error((status, {k.lower(): v for k, v in headers.items()}, body), 413, "larger")
    assert upstream.requests == []
    assert_still_serves(small_gateway, upstream)


# ----------------------------------------------------------------------------------------------
# Client keys
# ----------------------------------------------------------------------------------------------


def test_missing_key_is_401(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    mark = log_mark(gateway)
    error = assert_error(
        send(gateway, "POST", CHAT, {"model": "chat-model", "messages": USER}, key=None), 401, "key"
    )
    assert error["code"] == "missing_api_key"
    assert upstream.requests == []
    assert_error(send(gateway, "GET", "/v1/models", key=None), 401)
    assert_no_traceback_since(gateway, mark)
    assert_still_serves(gateway, upstream)


def test_missing_key_message_shows_how_to_send_it(gateway: RunningGateway) -> None:
    """The hint "send it as 'Authorization: Bearer <key>'" must survive the secret redactor intact."""
    error = assert_error(send(gateway, "GET", "/v1/models", key=None), 401, "authorization: bearer")
    assert "[REDACTED]" not in error["message"], error


def test_bad_key_is_401(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    mark = log_mark(gateway)
    body = {"model": "chat-model", "messages": USER}
    error = assert_error(send(gateway, "POST", CHAT, body, key="sk-client-wrong-999999"), 401, "invalid")
    assert error["code"] == "invalid_api_key"
    with (
        openai.OpenAI(base_url=gateway.v1, api_key="sk-client-wrong-888888", max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError),
    ):
        sdk.chat.completions.create(model="chat-model", messages=USER)  # type: ignore[arg-type]
    assert upstream.requests == []
    assert "sk-client-wrong-" not in gateway.log()[mark:]
    assert_no_traceback_since(gateway, mark)
    assert_still_serves(gateway, upstream)  # a good key also clears the address's failure count


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({"Authorization": f"Bearer {CLIENT_KEY}"}, ""),
        ({"x-api-key": CLIENT_KEY}, ""),
        ({"x-goog-api-key": CLIENT_KEY}, ""),
        ({}, f"?key={CLIENT_KEY}"),
    ],
    ids=["bearer", "x-api-key", "x-goog-api-key", "query"],
)
def test_key_locations(
    upstream: FakeUpstream, gateway: RunningGateway, headers: dict[str, str], query: str
) -> None:
    upstream.script(Reply.text("authenticated"))
    status, _, body = send(
        gateway, "POST", CHAT + query, {"model": "chat-model", "messages": USER}, headers, key=None
    )
    assert status == 200, body
    assert orjson.loads(body)["choices"][0]["message"]["content"] == "authenticated"
    assert CLIENT_KEY not in json.dumps(upstream.last.headers)  # the client's key never goes upstream
    assert "key" not in upstream.last.query


def test_model_not_allowed_is_403(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    for path, body in (
        (CHAT, {"model": "resp-model", "messages": USER}),
        (RESPONSES, {"model": "resp-model", "input": "q"}),
        (CHAT, {"model": "oai/gpt-4.1", "messages": USER}),
    ):
        error = assert_error(send(gateway, "POST", path, body, key=CHAT_ONLY_KEY), 403, str(body["model"]))
        assert error["code"] == "model_not_allowed" and error["param"] == "model"
    assert upstream.requests == []
    upstream.script(Reply.text("allowed"))
    status, _, _ = send(gateway, "POST", CHAT, {"model": "chat-model", "messages": USER}, key=CHAT_ONLY_KEY)
    assert status == 200


def test_bad_keys_lock_the_address_out(upstream: FakeUpstream, tmp_path: Path) -> None:
    running = start_gateway(base_config(upstream, tmp_path), tmp_path, name="lockout")
    try:
        body = {"model": "chat-model", "messages": USER}
        for n in range(5):
            assert_error(send(running, "POST", CHAT, body, key=f"sk-client-guess-{n:08d}"), 401)
        locked = send(running, "POST", CHAT, body)  # even the right key is refused now
        error = assert_error(locked, 429, "try again")
        assert error["code"] == "locked_out"
        assert 25 <= int(locked[1]["retry-after"]) <= 31, locked[1]
        with (
            openai.OpenAI(base_url=running.v1, api_key=CLIENT_KEY, max_retries=0) as sdk,
            pytest.raises(openai.RateLimitError),
        ):
            sdk.chat.completions.create(model="chat-model", messages=USER)  # type: ignore[arg-type]
        assert upstream.requests == []
        assert send(running, "GET", "/healthz", key=None)[0] == 200
        log = running.log()
        assert "sk-client-guess-" not in log and "Traceback" not in log
    finally:
        running.stop()


# ----------------------------------------------------------------------------------------------
# Upstream garbage
# ----------------------------------------------------------------------------------------------

GARBAGE = [
    ("brittle-chat", lambda: Reply.html(502), "html"),  # passthrough, max_retries 0
    ("brittle-resp", lambda: Reply.html(502), "html"),  # translated to Responses, max_retries 0
    ("chat-model", lambda: Reply.truncated(), "cut off"),
    ("resp-model", lambda: Reply.truncated(), "cut off"),
    ("chat-model", lambda: Reply.garbage(), "not json"),
    ("resp-model", lambda: Reply.garbage(), "not json"),
]


@pytest.mark.parametrize(
    ("model", "make", "needle"),
    GARBAGE,
    ids=[
        "html-passthrough",
        "html-translated",
        "truncated-passthrough",
        "truncated-translated",
        "garbage-passthrough",
        "garbage-translated",
    ],
)
def test_upstream_garbage_is_502(
    upstream: FakeUpstream, gateway: RunningGateway, model: str, make: Any, needle: str
) -> None:
    upstream.script(make())
    error = assert_error(
        send(gateway, "POST", CHAT, {"model": model, "messages": USER}), 502, "upstream", needle
    )
    assert "<html" not in error["message"].lower()
    assert "sk-up-" not in error["message"]
    assert len(upstream.requests) == 1  # nothing retried: the backend allows no retries, or garbage is final
    assert_still_serves(gateway, upstream)


# ----------------------------------------------------------------------------------------------
# Mid-stream failures
# ----------------------------------------------------------------------------------------------

BREAKS = {
    "stream_error": lambda after: Reply.stream_error("one two three four five", after=after),
    "truncated": lambda after: Reply.truncated("one two three four five", after=after),
}
# Frames until the first word has gone out, by the route's upstream dialect: a failure before it
# is not mid-stream (the gateway may still fail over), after it the stream must end in an error.
FIRST_WORD = {"chat-model": 2, "resp-model": 5}  # Chat: role, "one "; Responses: 4 opening events, "one "


@pytest.mark.parametrize("model", ["chat-model", "resp-model"], ids=["passthrough", "translated"])
@pytest.mark.parametrize("kind", list(BREAKS))
def test_chat_stream_failure_is_an_error_chunk(
    upstream: FakeUpstream, gateway: RunningGateway, model: str, kind: str
) -> None:
    body = {"model": model, "messages": USER, "stream": True}
    upstream.script(BREAKS[kind](FIRST_WORD[model]))
    status, _, raw = send(gateway, "POST", CHAT, body)
    assert status == 200  # the stream had started: the failure is said inside it
    data = [d for _, d in sse_events(raw) if d != "[DONE]"]
    *chunks, last = [json.loads(d) for d in data]
    assert isinstance(last.get("error"), dict) and last["error"].get("message"), last
    assert_openai("ErrorResponse", last)
    for chunk in chunks:
        assert_openai("CreateChatCompletionStreamResponse", chunk)
    finishes = [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c.get("finish_reason")]
    assert finishes == [], finishes  # never a fake "stop" on a broken answer
    # One completion: every chunk forwarded carries the upstream's one id, and the error adds none.
    # (A burst cut by a reset may arrive with no chunk at all: the reset can drop what was in flight.)
    assert len({chunk["id"] for chunk in chunks}) <= 1, [chunk["id"] for chunk in chunks]

    upstream.script(BREAKS[kind](FIRST_WORD[model]))
    seen: list[str] = []
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        stream = sdk.chat.completions.create(model=model, messages=USER, stream=True)  # type: ignore[arg-type]
        with pytest.raises(openai.APIError):
            for chunk in stream:
                assert not (chunk.choices and chunk.choices[0].finish_reason == "stop")
                seen += [chunk.choices[0].delta.content or ""] if chunk.choices else []
    assert "".join(seen) in ("", "one ")
    assert_still_serves(gateway, upstream)


@pytest.mark.parametrize("model", ["resp-model", "chat-model"], ids=["passthrough", "translated"])
@pytest.mark.parametrize("kind", list(BREAKS))
def test_responses_stream_failure_ends_failed(
    upstream: FakeUpstream, gateway: RunningGateway, model: str, kind: str
) -> None:
    body = {"model": model, "input": "q", "stream": True}
    upstream.script(BREAKS[kind](FIRST_WORD[model]))
    status, _, raw = send(gateway, "POST", RESPONSES, body)
    assert status == 200
    events = [json.loads(d) for _, d in sse_events(raw)]
    for name, data in sse_events(raw):
        assert name == json.loads(data)["type"]
    for event in events:
        assert_openai("ResponseStreamEvent", event)
    types = [e["type"] for e in events]
    assert types[-1] in ("response.failed", "error"), types
    assert "response.completed" not in types
    assert [e["sequence_number"] for e in events] == list(range(len(events)))

    upstream.script(BREAKS[kind](FIRST_WORD[model]))
    seen: list[str] = []
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        try:
            for event in sdk.responses.create(model=model, input="q", stream=True):
                seen.append(event.type)
        except openai.APIError:
            seen.append("raised")
    assert seen[-1] in ("response.failed", "error", "raised"), seen
    assert "response.completed" not in seen
    assert_still_serves(gateway, upstream)


# ----------------------------------------------------------------------------------------------
# Slow upstreams and vanishing clients
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "model"),
    [(CHAT, "chat-model"), (RESPONSES, "resp-model"), (RESPONSES, "chat-model")],
    ids=["chat", "responses-passthrough", "responses-translated"],
)
def test_keepalives_while_the_upstream_is_slow(
    upstream: FakeUpstream, gateway: RunningGateway, path: str, model: str
) -> None:
    upstream.script(Reply.delay(0.8, Reply.text("finally here")))
    body = _typed_body(path, model, "stream", True)
    started = time.monotonic()
    conn, response = open_stream(gateway, path, body)
    try:
        first = response.read1(65536)
        first_at = time.monotonic() - started
        raw = read_to_end(response, first)
    finally:
        conn.close()
    assert response.status == 200 and response.getheader("x-request-id")
    assert first.startswith(b": keep-alive\n\n"), first[:200]
    assert first_at < 0.7  # the client heard something long before the upstream answered
    keepalives, rest = 0, raw
    while rest.startswith(KEEPALIVE):
        keepalives, rest = keepalives + 1, rest[len(KEEPALIVE) :]
    assert keepalives >= 2 and rest.startswith((b"data:", b"event:")), raw[:300]
    assert KEEPALIVE not in rest  # none once the answer flows
    events = sse_events(raw)
    if path == CHAT:
        assert events[-1][1] == "[DONE]"
        text = "".join(
            c["delta"].get("content") or "" for _, d in events[:-1] for c in json.loads(d)["choices"]
        )
        assert text == "finally here"
    else:
        assert json.loads(events[-1][1])["type"] == "response.completed"


def test_client_disconnect_cancels_the_upstream_stream(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    words = [f"w{i}" for i in range(40)]
    upstream.script(Reply.text(" ".join(words), chunk_delay=0.1))  # four seconds if read to the end
    request_id = f"disconnect-{uuid.uuid4().hex[:12]}"
    body = {"model": "chat-model", "messages": USER, "stream": True}
    conn, response = open_stream(gateway, CHAT, body, {"X-Request-Id": request_id})
    got = b""
    while got.count(b"data:") < 3:
        got += response.read1(65536)
    response.close()
    conn.close()
    gone = time.monotonic()

    upstream.script(Reply.text("next one"))
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        completion = sdk.chat.completions.create(model="chat-model", messages=USER)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "next one"
    assert time.monotonic() - gone < 1.5

    rows = wait_for_usage(gateway.config["store"], request_id, timeout=10.0)
    assert [r["status"] for r in rows] == [499], rows
    # The request ended when the client left, not when the upstream's four-second answer would have
    # (timed from its first token: the fake may take a while to start answering).
    assert rows[0]["latency_ms"] - rows[0]["ttft_ms"] < 2500, "the gateway kept reading the upstream"
    assert rows[0]["stream"] and rows[0]["public_model"] == "chat-model"


# ----------------------------------------------------------------------------------------------
# Health, readiness, metrics
# ----------------------------------------------------------------------------------------------


def test_health_and_readiness(gateway: RunningGateway) -> None:
    status, _, body = send(gateway, "GET", "/healthz", key=None)
    assert status == 200 and orjson.loads(body)["status"] == "ok"
    status, _, body = send(gateway, "GET", "/readyz", key=None)
    assert status == 200 and orjson.loads(body)["status"] == "ready"


def test_readyz_is_503_once_the_store_is_gone(upstream: FakeUpstream, tmp_path: Path) -> None:
    database = f"mwtest_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {database}")
    config = base_config(upstream, tmp_path)
    config["store"] = PG_URL.rsplit("/", 1)[0] + "/" + database
    running = start_gateway(config, tmp_path, name="pg-ready")
    try:
        assert send(running, "GET", "/readyz", key=None)[0] == 200
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {database} WITH (FORCE)")
        deadline = time.monotonic() + 10
        status, _, body = send(running, "GET", "/readyz", key=None)
        while status != 503 and time.monotonic() < deadline:
            time.sleep(0.1)
            status, _, body = send(running, "GET", "/readyz", key=None)
        assert status == 503, body
        assert b"store" in body
        assert send(running, "GET", "/healthz", key=None)[0] == 200  # alive, just not ready
    finally:
        running.stop()
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def test_unreachable_store_at_start_up_fails_fast(tmp_path: Path) -> None:
    """Documented behaviour: with the store unreachable from the start, the gateway refuses to start
    (non-zero exit, the cause in its output) rather than serving with /readyz at 503."""
    port = free_port()
    config = {"store": f"postgresql://postgres@127.0.0.1:{port}/test", "backends": minimal_backends()}
    path = tmp_path / "pg-closed.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.monotonic()
    result = subprocess.run(
        [MODELWIRE, "serve", "--config", str(path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 20
    output = result.stdout + result.stderr
    assert f"port {port}" in output and "refused" in output.lower(), output[-2000:]


def test_metrics_after_traffic(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.text("counted", usage=(12, 4)), Reply.text("streamed", usage=(3, 2)))
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        sdk.chat.completions.create(model="chat-model", messages=USER)  # type: ignore[arg-type]
        list(sdk.responses.create(model="resp-model", input="q", stream=True))
    send(gateway, "POST", CHAT, {"model": CHAT_ONLY_KEY, "messages": USER})  # a key-looking model name
    send(gateway, "POST", CHAT, {"model": "chat-model", "messages": USER}, key="sk-client-nope-424242")
    assert_still_serves(gateway, upstream)
    status, headers, body = send(gateway, "GET", "/metrics", key=None)
    assert status == 200
    assert headers["content-type"].startswith("text/plain")
    text = body.decode()
    for name in ("modelwire_requests_total", "modelwire_request_seconds", "modelwire_tokens_total"):
        assert f"# TYPE {name.removesuffix('_total')}" in text and name in text, name
    assert 'modelwire_request_seconds_bucket{le="+Inf"' in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            float(value)  # every sample is "name{labels} number"
            assert name.startswith(("modelwire_", "python_", "process_")), line
    for secret in (CLIENT_KEY, CHAT_ONLY_KEY, "sk-client-", "sk-up-", "sk-client-nope"):
        assert secret not in text, secret


def test_metrics_request_series_name_the_backend(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    """``modelwire_requests_total`` has a ``backend`` label; it should say which backend served."""
    upstream.script(Reply.text("labelled"))
    status, _, _ = send(gateway, "POST", CHAT, {"model": "chat-model", "messages": USER})
    assert status == 200
    text = send(gateway, "GET", "/metrics", key=None)[2].decode()
    served = [
        line
        for line in text.splitlines()
        if line.startswith("modelwire_requests_total{")
        and 'model="chat-model"' in line
        and 'status="200"' in line
    ]
    assert served and all('backend="compat"' in line for line in served), served


# ----------------------------------------------------------------------------------------------
# Shutdown
# ----------------------------------------------------------------------------------------------


def test_sigterm_lets_an_inflight_stream_finish(upstream: FakeUpstream, tmp_path: Path) -> None:
    running = start_gateway(base_config(upstream, tmp_path), tmp_path, name="sigterm")
    try:
        words = [f"t{i}" for i in range(12)]
        upstream.script(Reply.text(" ".join(words), usage=(9, 12), chunk_delay=0.1))
        request_id = f"sigterm-{uuid.uuid4().hex[:12]}"
        body = {"model": "chat-model", "messages": USER, "stream": True}
        conn, response = open_stream(running, CHAT, body, {"X-Request-Id": request_id})
        try:
            first = response.read1(65536)
            running.proc.send_signal(signal.SIGTERM)
            raw = read_to_end(response, first)
        finally:
            conn.close()
        events = sse_events(raw)
        assert events[-1][1] == "[DONE]", raw[-300:]
        text = "".join(
            c["delta"].get("content") or "" for _, d in events[:-1] for c in json.loads(d)["choices"]
        )
        assert text == " ".join(words)
        code = running.proc.wait(timeout=15)
        rows = usage_rows(running.config["store"], request_id)
        assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [(200, 9, 12)]
        assert "Traceback" not in running.log()
        assert code == 0, f"exit status {code} after SIGTERM"
    finally:
        running.stop()


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown-backend": (
        yaml.safe_dump({"backends": minimal_backends(), "models": [{"name": "m", "route": "nope/gpt-4.1"}]}),
        ["models[0].route[0]", "unknown backend", "nope"],
    ),
    "unknown-backend-second": (
        yaml.safe_dump(
            {"backends": minimal_backends(), "models": [{"name": "m", "route": ["a/gpt-4.1", "zzz/x"]}]}
        ),
        ["models[0].route[1]", "unknown backend", "zzz"],
    ),
    "bad-uri-param": (
        yaml.safe_dump(
            {"backends": minimal_backends(), "models": [{"name": "m", "route": "a/gpt-4.1?temperature=9"}]}
        ),
        ["models[0].route[0]", "temperature", "9"],
    ),
    "unknown-top-level-key": (
        yaml.safe_dump({"servr": {"port": 1}, "backends": minimal_backends()}),
        ["servr", "unknown key"],
    ),
    "invalid-yaml": ("backends: [unclosed\n  - x: {\n", ["yaml", "line"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_fails_at_start_up(tmp_path: Path, case: str) -> None:
    text, needles = BAD_CONFIGS[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = subprocess.run(
        [MODELWIRE, "serve", "--config", str(path), "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2, result.stderr
    stderr = " ".join(result.stderr.split())  # the console wraps long lines (see the test below)
    assert str(path) in "".join(result.stderr.split()), stderr
    for needle in needles:
        assert needle.lower() in stderr.lower(), (needle, stderr)
    assert "Traceback" not in result.stderr


def test_config_error_keeps_the_file_name_whole(tmp_path: Path) -> None:
    """The error names the file exactly as given, even when stderr is a pipe and the path is long:
    a terminal-width hard wrap that cuts the path in two breaks every tool that greps for it."""
    path = tmp_path / ("deployment-configuration-" + "x" * 40) / "modelwire-production.yaml"
    path.parent.mkdir()
    path.write_text(BAD_CONFIGS["unknown-backend"][0])
    result = subprocess.run(
        [MODELWIRE, "serve", "--config", str(path)], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 2
    assert str(path) in result.stderr, result.stderr


def test_env_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_ROBUST_URL", "http://127.0.0.1:9/v1")
    monkeypatch.delenv("MW_ROBUST_UNSET", raising=False)
    monkeypatch.delenv("MW_ROBUST_NAME", raising=False)
    path = tmp_path / "env.yaml"
    path.write_text(
        "backends:\n"
        "  a:\n"
        "    type: openai-compatible\n"
        '    base_url: "${MW_ROBUST_URL}"\n'
        '    headers: {x-team: "${MW_ROBUST_UNSET:-}"}\n'
        "models:\n"
        '  - name: "${MW_ROBUST_NAME:-fallback-name}"\n'
        "    route: a/gpt-4.1\n"
    )
    config = load_config(path)
    assert config.backends["a"].base_url == "http://127.0.0.1:9/v1"
    assert config.backends["a"].headers == {"x-team": ""}, "${VAR:-} asks for an empty value on purpose"
    assert [m.name for m in config.models] == ["fallback-name"]
    monkeypatch.setenv("MW_ROBUST_NAME", "from-env")
    assert [m.name for m in load_config(path).models] == ["from-env"]


def test_no_keys_refuses_a_public_address(tmp_path: Path) -> None:
    path = tmp_path / "open.yaml"
    path.write_text(
        yaml.safe_dump({"store": f"sqlite:///{tmp_path}/state.db", "backends": minimal_backends()})
    )
    result = subprocess.run(
        [MODELWIRE, "serve", "--config", str(path), "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2, result.stderr
    stderr = " ".join(result.stderr.split())
    assert "0.0.0.0" in stderr and "keys" in stderr, stderr
    assert str(path) in "".join(result.stderr.split()), stderr
    assert "Traceback" not in result.stderr


def test_no_keys_on_loopback_serves_without_auth(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Also proves ``${VAR}`` and ``${VAR:-default}`` in a config the gateway really runs on."""
    config = base_config(upstream, tmp_path)
    del config["keys"]
    config["backends"]["compat"]["base_url"] = "${MW_ROBUST_UPSTREAM}"
    config["models"].append(
        {"name": "${MW_ROBUST_UNSET_MODEL:-env-default-model}", "route": "compat/gpt-4.1"}
    )
    env = {"MW_ROBUST_UPSTREAM": upstream.url}
    running = start_gateway(config, tmp_path, env=env, name="open")
    try:
        upstream.script(Reply.text("open door"), Reply.text("defaulted"))
        status, _, body = send(running, "POST", CHAT, {"model": "chat-model", "messages": USER}, key=None)
        assert status == 200, body
        assert orjson.loads(body)["choices"][0]["message"]["content"] == "open door"
        assert upstream.last.path == "/v1/chat/completions"
        status, _, body = send(
            running, "POST", CHAT, {"model": "env-default-model", "messages": USER}, key=None
        )
        assert status == 200, body
        assert orjson.loads(body)["choices"][0]["message"]["content"] == "defaulted"
    finally:
        running.stop()


# ----------------------------------------------------------------------------------------------
# Wire capture
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capture_gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("capture")
    config = base_config(upstream_server, tmp)
    config["capture"] = {"path": str(tmp / "capture.jsonl"), "max_bytes": 4 * 1024 * 1024}
    running = start_gateway(config, tmp, name="capture")
    try:
        yield running
    finally:
        running.stop()


def capture_lines(gateway: RunningGateway, *request_ids: str, want: int = 4) -> list[dict[str, Any]]:
    """The capture's lines for these request ids, once each has at least ``want`` of them (or 10 s:
    the capture is written by a background thread, which a loaded test machine may delay)."""
    path = Path(gateway.config["capture"]["path"])
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
        mine = [line for line in lines if line["request_id"] in request_ids]
        counts = [sum(1 for line in mine if line["request_id"] == r) for r in request_ids]
        if min(counts) >= want or time.monotonic() > deadline:
            return mine
        time.sleep(0.05)


def _captured_traffic(gateway: RunningGateway, model: str = "chat-model") -> tuple[str, str]:
    plain, streamed = f"cap-plain-{uuid.uuid4().hex[:10]}", f"cap-stream-{uuid.uuid4().hex[:10]}"
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        sdk.chat.completions.create(
            model=model,
            messages=USER,  # type: ignore[arg-type]
            extra_headers={"X-Request-Id": plain},
        )
        list(
            sdk.chat.completions.create(
                model=model,
                messages=USER,  # type: ignore[arg-type]
                stream=True,
                extra_headers={"X-Request-Id": streamed},
            )
        )
    return plain, streamed


def test_wire_capture_keeps_no_secret(upstream: FakeUpstream, capture_gateway: RunningGateway) -> None:
    plain, streamed = _captured_traffic(capture_gateway)
    lines = capture_lines(capture_gateway, plain, streamed)
    for request_id in (plain, streamed):
        mine = [line for line in lines if line["request_id"] == request_id]
        directions = {line["direction"] for line in mine}
        assert {"client_request", "upstream_request"} <= directions, directions
        upstream_lines = [line for line in mine if line["direction"].startswith("upstream_")]
        assert upstream_lines and all(line["backend"] == "compat" for line in upstream_lines)
        client = next(line for line in mine if line["direction"] == "client_request")
        payload = client["payload"]
        payload = json.loads(payload) if isinstance(payload, str) else payload
        assert client["key_name"] == "all" and payload["model"] == "chat-model"
    path = Path(capture_gateway.config["capture"]["path"])
    assert path.stat().st_mode & 0o777 == 0o600
    raw = path.read_bytes()
    for secret in (CLIENT_KEY, "sk-client-", "sk-up-"):
        assert secret.encode() not in raw, secret
    log = capture_gateway.log()
    assert CLIENT_KEY not in log and "sk-up-" not in log


def test_wire_capture_records_responses_and_chunks(
    upstream: FakeUpstream, capture_gateway: RunningGateway
) -> None:
    """The capture promises requests, responses and stream chunks in both directions."""
    plain, streamed = _captured_traffic(capture_gateway)
    lines = capture_lines(capture_gateway, plain, streamed, want=4)
    plain_directions = {line["direction"] for line in lines if line["request_id"] == plain}
    assert plain_directions >= {
        "client_request",
        "upstream_request",
        "upstream_response",
        "client_response",
    }, plain_directions
    stream_directions = {line["direction"] for line in lines if line["request_id"] == streamed}
    assert {"client_request", "upstream_request"} <= stream_directions
    assert stream_directions & {"upstream_chunk", "client_chunk"}, stream_directions
    raw = Path(capture_gateway.config["capture"]["path"]).read_bytes()
    assert b"sk-up-" not in raw and CLIENT_KEY.encode() not in raw


def test_wire_capture_records_translated_upstream_requests(
    upstream: FakeUpstream, capture_gateway: RunningGateway
) -> None:
    """A translated request (Chat client → Responses upstream) goes upstream too and must be captured."""
    plain, streamed = _captured_traffic(capture_gateway, model="resp-model")
    lines = capture_lines(capture_gateway, plain, streamed)
    for request_id in (plain, streamed):
        outbound = [
            line
            for line in lines
            if line["request_id"] == request_id and line["direction"] == "upstream_request"
        ]
        assert outbound and outbound[0]["backend"] == "oai", [
            (line["request_id"], line["direction"]) for line in lines
        ]
    raw = Path(capture_gateway.config["capture"]["path"]).read_bytes()
    assert b"sk-up-" not in raw and CLIENT_KEY.encode() not in raw
