"""Every client dialect over every upstream wire, end to end.

One real ``modelwire serve`` process with four backends on the one fake upstream, one per wire
(``chat``: OpenAI Chat Completions, ``resp``: OpenAI Responses, ``claude``: Anthropic Messages,
``gem``: Gemini), and public names routing to each (``via-chat``, ``via-responses``,
``via-anthropic``, ``via-gemini``). The official SDKs are the clients.

* The matrix: each client dialect over each wire, plain and streamed, runs a tool round trip with
  reasoning kept across turns. Turn 1 the upstream reasons and calls a tool; the client sends the
  result back with the assistant turn as that client does (Responses: the output items, reasoning
  with ``encrypted_content`` included; Anthropic: the content blocks, thinking and signature
  included; Gemini: the SDK's chat history, ``thoughtSignature`` included; Chat: the assistant
  message with ``tool_calls``); turn 2 the upstream answers. Checked: every answer against the client
  dialect's spec, the call intact both ways, the result and (where both sides carry reasoning)
  the very token the upstream minted in the upstream's turn-2 request, and usage in the answer,
  the ``x-modelwire-backend`` header and the gateway's usage table.
* Fast paths (client dialect == wire): the body forwarded as the client wrote it but for the
  model, the client's Anthropic headers forwarded, the backend's key (never the client's) sent, the
  upstream's token counters used, Gemini's JSON-array stream served from an SSE upstream.
* Failover across wires, and errors of the new upstreams in each client's dialect.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from google import genai
from google.genai import types as gtypes
from sqlalchemy import select

from modelwire.gateway.store import Store
from modelwire.gateway.tables import usage_table

from .fake_upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    anthropic_signature,
    count_tokens,
    gemini_signature,
    google_error_problems,
)
from .gateway_fixtures import CLIENT_KEY, RunningGateway, request, sse_events, start_gateway
from .spec import ANTHROPIC, GEMINI, GEMINI_PROTOS, OPENAI, assert_anthropic, assert_gemini, assert_openai

CLIENTS = ("chat", "responses", "anthropic", "gemini")
WIRES = ("chat", "responses", "anthropic", "gemini")
REASONING_DIALECTS = frozenset({"responses", "anthropic", "gemini"})  # Chat carries no replay token
MODEL = {wire: f"via-{wire}" for wire in WIRES}
UPSTREAM_MODEL = {
    "chat": "up-chat",
    "responses": "up-responses",
    "anthropic": "up-claude",
    "gemini": "up-gemini",
}
BACKEND = {"chat": "chat", "responses": "resp", "anthropic": "claude", "gemini": "gem"}
BACKEND_KEY = {
    "chat": "sk-up-chat-000000000001",
    "responses": "sk-up-resp-000000000002",
    "anthropic": "sk-ant-up-000000000003",
    "gemini": "AIza-up-gemini-0000000004",
}
UPSTREAM_PATH = {
    ("chat", False): "/v1/chat/completions",
    ("chat", True): "/v1/chat/completions",
    ("responses", False): "/v1/responses",
    ("responses", True): "/v1/responses",
    ("anthropic", False): "/v1/messages",
    ("anthropic", True): "/v1/messages",
    ("gemini", False): "/v1beta/models/up-gemini:generateContent",
    ("gemini", True): "/v1beta/models/up-gemini:streamGenerateContent",
}

QUESTION = "What will the weather be in Paris over the next 2 days?"
THOUGHT = "The user wants a forecast: call get_weather for Paris, 2 days."
ENCRYPTED = "enc-matrix-reasoning-turn-1"
ARGS = {"city": "Paris", "days": 2}
RESULT = "18C and sunny both days"
ANSWER = "Sunny in Paris, 18C, for both days."
TURN1_USAGE = (30, 12)  # (input, output incl. reasoning)
TURN2_USAGE = (50, 6)
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city", "days"],
}
CHAT_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Forecast for a city", "parameters": SCHEMA},
}
RESPONSES_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Forecast for a city",
    "parameters": SCHEMA,
    "strict": False,
}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "Forecast for a city", "input_schema": SCHEMA}
GEMINI_TOOL = gtypes.Tool(
    function_declarations=[
        gtypes.FunctionDeclaration(
            name="get_weather", description="Forecast for a city", parameters_json_schema=SCHEMA
        )
    ]
)


def turn1_reply() -> Reply:
    return Reply.tool_calls(
        [("get_weather", json.dumps(ARGS))],
        summary=[THOUGHT],
        encrypted=ENCRYPTED,
        usage=TURN1_USAGE,
        reasoning_tokens=4,
    )


def turn2_reply() -> Reply:
    return Reply.text(ANSWER, usage=TURN2_USAGE)


# ----------------------------------------------------------------------------------------------
# The gateway: four wires, failover routes, one backend per error case
# ----------------------------------------------------------------------------------------------

# Error cases of the new upstreams: (case, wire). Each case gets a backend per client, as a 429
# puts the backend's key in a cool-down that would answer the next client without asking.
ERROR_CASES = {"anthropic-429": "anthropic", "anthropic-400": "anthropic", "gemini-429": "gemini"}


def error_model(case: str, client: str) -> str:
    return f"{case}-{client}"


@dataclass
class Matrix:
    gateway: RunningGateway
    store: str


@pytest.fixture(scope="module")
def closed_port() -> Iterator[int]:
    """A port bound but never listening: connecting to it is refused, and nothing else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def matrix_config(upstream: FakeUpstream, tmp: Path, closed: int) -> dict[str, Any]:
    root = upstream.root
    backends: dict[str, Any] = {
        "chat": {"type": "openai-compatible", "base_url": upstream.url, "api_key": BACKEND_KEY["chat"]},
        "resp": {"type": "openai", "base_url": upstream.url, "api_key": BACKEND_KEY["responses"]},
        "claude": {"type": "anthropic", "base_url": root, "api_keys": [BACKEND_KEY["anthropic"]]},
        "gem": {"type": "gemini", "base_url": root, "api_keys": [BACKEND_KEY["gemini"]]},
        # failover: one attempt each, so that a failure moves on at once
        "claude_once": {"type": "anthropic", "base_url": root, "api_key": "sk-ant-up-once", "max_retries": 0},
        "resp_once": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up-once", "max_retries": 0},
        "closed": {
            "type": "anthropic",
            "base_url": f"http://127.0.0.1:{closed}",
            "api_key": "sk-ant-up-closed",
            "max_retries": 0,
        },
    }
    models: list[dict[str, Any]] = [
        {"name": MODEL[wire], "route": f"{BACKEND[wire]}/{UPSTREAM_MODEL[wire]}"} for wire in WIRES
    ]
    models += [
        {"name": "fo-overloaded", "route": ["claude_once/fo-claude", "resp/fo-openai"]},
        {"name": "fo-refused", "route": ["closed/fo-closed", "resp/fo-openai"]},
        {"name": "fo-all-fail", "route": ["resp_once/fo-dead-openai", "claude_once/fo-dead-claude"]},
    ]
    for case, wire in ERROR_CASES.items():
        for client in CLIENTS:
            name = error_model(case, client)
            kind = "anthropic" if wire == "anthropic" else "gemini"
            # two keys: a 429 moves to the other key at once (the tests script one error per key)
            backends[name] = {
                "type": kind,
                "base_url": root,
                "api_keys": [f"sk-up-{name}-a", f"sk-up-{name}-b"],
                "max_retries": 0,
            }
            models.append({"name": name, "route": f"{name}/{name}-up"})
    return {
        "store": f"sqlite:///{tmp}/state.db",
        # no keep-alive before the first answer, whose headers name the backend that gave it
        "server": {"keepalive_seconds": 10.0, "grace_seconds": 5},
        "failover": {"budget_seconds": 15},
        "usage": {"flush_seconds": 0.05},
        "backends": backends,
        "models": models,
        "keys": [{"key": CLIENT_KEY, "name": "matrix"}],
    }


@pytest.fixture(scope="module")
def matrix(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory, closed_port: int
) -> Iterator[Matrix]:
    for spec in (OPENAI, ANTHROPIC, GEMINI):  # loaded once, now: the fake's first check would stall
        assert spec.registry is not None
    assert GEMINI_PROTOS.messages
    tmp = tmp_path_factory.mktemp("matrix")
    config = matrix_config(upstream_server, tmp, closed_port)
    running = start_gateway(config, tmp, name="matrix")
    try:
        yield Matrix(running, config["store"])
    finally:
        running.stop()


def usage_row(store_url: str, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The usage record of one request, once the gateway's batch writer has put it in the store."""
    deadline = time.monotonic() + timeout
    with Store(store_url) as store:
        while True:
            with store.engine.connect() as conn:
                stmt = select(usage_table).where(usage_table.c.request_id == request_id)
                rows = [dict(row) for row in conn.execute(stmt).mappings()]
            if rows or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert len(rows) == 1, f"usage rows for {request_id}: {rows}"
    return rows[0]


# ----------------------------------------------------------------------------------------------
# What the SDKs sent and got, byte for byte: an httpx transport that keeps a copy
# ----------------------------------------------------------------------------------------------


@dataclass
class Exchange:
    method: str
    url: str
    body_sent: bytes
    status: int
    headers: httpx2.Headers
    body: bytearray = field(default_factory=bytearray)


class _Tee(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, sink: bytearray) -> None:
        self.inner, self.sink = inner, sink

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.inner:
            self.sink += chunk
            yield chunk

    def close(self) -> None:
        self.inner.close()


class Recorder(httpx2.BaseTransport):
    """Sends through a real transport and keeps every exchange (the answer as it is read)."""

    def __init__(self) -> None:
        self.inner = httpx2.HTTPTransport()
        self.exchanges: list[Exchange] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        sent = request.read()
        response = self.inner.handle_request(request)
        exchange = Exchange(request.method, str(request.url), sent, response.status_code, response.headers)
        self.exchanges.append(exchange)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_Tee(response.stream, exchange.body),
            extensions=response.extensions,
        )

    @property
    def last(self) -> Exchange:
        return self.exchanges[-1]

    def close(self) -> None:
        self.inner.close()


# ----------------------------------------------------------------------------------------------
# Reading answers in each client dialect, each payload checked against its official spec
# ----------------------------------------------------------------------------------------------


def stream_docs(dialect: str, payload: bytes) -> list[dict[str, Any]]:
    """Every event of a streamed answer as JSON, each validated against the dialect's spec (and
    Anthropic's event names against their types)."""
    docs: list[dict[str, Any]] = []
    for name, data in sse_events(payload):
        if dialect == "chat" and data == "[DONE]":
            continue
        doc = json.loads(data)
        if dialect == "chat":
            assert_openai("ErrorResponse" if "error" in doc else "CreateChatCompletionStreamResponse", doc)
        elif dialect == "responses":
            assert_openai("ResponseStreamEvent", doc)
            assert name == doc["type"], (name, doc)
        elif dialect == "anthropic":
            assert name == doc["type"], (name, doc)
            if doc["type"] == "error":  # Anthropic's own stream error events carry no request_id
                assert_anthropic("ErrorResponse", {"request_id": None, **doc})
            else:
                assert_anthropic("MessageStreamEvent", doc)
        elif "error" in doc:
            assert google_error_problems(doc) == [], doc
        else:
            assert_gemini("GenerateContentResponse", doc)
            gtypes.GenerateContentResponse.model_validate(doc)
        docs.append(doc)
    return docs


def check_document(dialect: str, doc: dict[str, Any]) -> None:
    if dialect == "chat":
        assert_openai("CreateChatCompletionResponse", doc)
    elif dialect == "responses":
        assert_openai("Response", doc)
    elif dialect == "anthropic":
        assert_anthropic("Message", doc)
    else:
        assert_gemini("GenerateContentResponse", doc)
        gtypes.GenerateContentResponse.model_validate(doc)


def answer_text(dialect: str, stream: bool, payload: bytes) -> str:
    """The text of a whole answer (validated), after checking it ended as that dialect ends one."""
    if not stream:
        doc = json.loads(payload)
        check_document(dialect, doc)
        if dialect == "chat":
            return str(doc["choices"][0]["message"]["content"])
        if dialect == "responses":
            assert doc["status"] == "completed"
            return "".join(
                c["text"] for item in doc["output"] if item["type"] == "message" for c in item["content"]
            )
        if dialect == "anthropic":
            return "".join(b["text"] for b in doc["content"] if b["type"] == "text")
        return "".join(
            p.get("text", "") for p in doc["candidates"][0]["content"]["parts"] if not p.get("thought")
        )
    docs = stream_docs(dialect, payload)
    if dialect == "chat":
        choices = [c for d in docs for c in d.get("choices", [])]
        assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
        return "".join(c["delta"].get("content") or "" for c in choices)
    if dialect == "responses":
        assert docs[-1]["type"] == "response.completed"
        return "".join(d["delta"] for d in docs if d["type"] == "response.output_text.delta")
    if dialect == "anthropic":
        assert docs[-1]["type"] == "message_stop"
        return "".join(
            d["delta"]["text"]
            for d in docs
            if d["type"] == "content_block_delta" and d["delta"]["type"] == "text_delta"
        )
    assert docs[-1]["candidates"][0]["finishReason"] == "STOP"
    return "".join(
        p.get("text", "")
        for d in docs
        for p in d["candidates"][0].get("content", {}).get("parts", [])
        if not p.get("thought")
    )


def error_of(dialect: str, status: int, payload: bytes) -> tuple[str, str]:
    """``(message, kind)`` of an error answer, validated as the dialect's error shape; kind is the
    OpenAI or Anthropic ``type``, or Google's ``status``."""
    doc = json.loads(payload)
    if dialect in ("chat", "responses"):
        assert_openai("ErrorResponse", doc)
        return doc["error"]["message"], doc["error"]["type"]
    if dialect == "anthropic":
        assert_anthropic("ErrorResponse", doc)
        return doc["error"]["message"], doc["error"]["type"]
    assert google_error_problems(doc, status) == [], doc
    return doc["error"]["message"], doc["error"]["status"]


def raw_generate(
    gateway: RunningGateway, dialect: str, model: str, stream: bool, text: str = "Hello?"
) -> tuple[int, dict[str, str], bytes]:
    """One generation request in ``dialect``'s own wire format, without an SDK."""
    headers = {"Content-Type": "application/json"}
    body: dict[str, Any]
    if dialect == "chat":
        path = "/v1/chat/completions"
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        if stream:
            body |= {"stream": True, "stream_options": {"include_usage": True}}
    elif dialect == "responses":
        path, body = "/v1/responses", {"model": model, "input": text, "stream": stream}
    elif dialect == "anthropic":
        path = "/v1/messages"
        body = {
            "model": model,
            "max_tokens": 256,
            "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }
        headers |= {"anthropic-version": "2023-06-01", "x-api-key": CLIENT_KEY, "Authorization": ""}
    else:
        action = "streamGenerateContent?alt=sse" if stream else "generateContent"
        path = f"/v1beta/models/{model}:{action}"
        body = {"contents": [{"role": "user", "parts": [{"text": text}]}]}
        headers |= {"x-goog-api-key": CLIENT_KEY, "Authorization": ""}
    return request(gateway, "POST", path, json.dumps(body).encode(), headers)


# ----------------------------------------------------------------------------------------------
# The clients: one tool round trip each, as each SDK's users write it
# ----------------------------------------------------------------------------------------------


@dataclass
class Seen:
    """What a client got from one turn."""

    calls: list[tuple[str, dict[str, Any]]]
    text: str
    reasoning: str  # the reasoning text shown
    token: str | None  # the opaque reasoning token the client holds, if its dialect has one
    usage: tuple[int, int]  # (input incl. cached, output incl. reasoning)
    exchange: Exchange


class ChatClient:
    def __init__(self, gateway: RunningGateway) -> None:
        self.recorder = Recorder()
        self.sdk = openai.OpenAI(
            base_url=gateway.v1,
            api_key=CLIENT_KEY,
            max_retries=0,
            http_client=httpx2.Client(transport=self.recorder),
        )

    def close(self) -> None:
        self.sdk.close()

    def round_trip(self, model: str, stream: bool) -> tuple[Seen, Seen]:
        messages: list[dict[str, Any]] = [{"role": "user", "content": QUESTION}]
        first, assistant = self.turn(model, messages, stream)
        messages.append(assistant)
        messages += [
            {"role": "tool", "tool_call_id": c["id"], "content": RESULT} for c in assistant["tool_calls"]
        ]
        second, _ = self.turn(model, messages, stream)
        return first, second

    def turn(self, model: str, messages: list[dict[str, Any]], stream: bool) -> tuple[Seen, dict[str, Any]]:
        kwargs: Any = {
            "model": model,
            "messages": messages,
            "tools": [CHAT_TOOL],
            "reasoning_effort": "medium",
        }
        calls: list[dict[str, Any]] = []
        if not stream:
            completion = self.sdk.chat.completions.create(**kwargs)
            check_document("chat", json.loads(self.recorder.last.body))
            message = completion.choices[0].message
            text, reasoning = (
                message.content or "",
                str((message.model_extra or {}).get("reasoning_content") or ""),
            )
            for call in message.tool_calls or []:
                assert call.type == "function"
                calls.append(
                    {"id": call.id, "name": call.function.name, "arguments": call.function.arguments}
                )
            assert completion.usage is not None
            usage = (completion.usage.prompt_tokens, completion.usage.completion_tokens)
        else:
            chunks = list(
                self.sdk.chat.completions.create(
                    **kwargs, stream=True, stream_options={"include_usage": True}
                )
            )
            stream_docs("chat", bytes(self.recorder.last.body))
            text = reasoning = ""
            for chunk in chunks:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    reasoning += str((choice.delta.model_extra or {}).get("reasoning_content") or "")
                    for delta in choice.delta.tool_calls or []:
                        while len(calls) <= delta.index:
                            calls.append({"id": "", "name": "", "arguments": ""})
                        call = calls[delta.index]
                        call["id"] = delta.id or call["id"]
                        if delta.function is not None:
                            call["name"] += delta.function.name or ""
                            call["arguments"] += delta.function.arguments or ""
            last = chunks[-1]
            assert last.choices == [] and last.usage is not None, "no usage chunk at the end of the stream"
            usage = (last.usage.prompt_tokens, last.usage.completion_tokens)
        assistant: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            assistant["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in calls
            ]
        seen = Seen(
            [(c["name"], json.loads(c["arguments"])) for c in calls],
            text,
            reasoning,
            None,
            usage,
            self.recorder.last,
        )
        return seen, assistant


class ResponsesClient:
    def __init__(self, gateway: RunningGateway) -> None:
        self.recorder = Recorder()
        self.sdk = openai.OpenAI(
            base_url=gateway.v1,
            api_key=CLIENT_KEY,
            max_retries=0,
            http_client=httpx2.Client(transport=self.recorder),
        )

    def close(self) -> None:
        self.sdk.close()

    def round_trip(self, model: str, stream: bool) -> tuple[Seen, Seen]:
        items: list[Any] = [{"role": "user", "content": QUESTION}]
        first, output = self.turn(model, items, stream)
        items += [item.model_dump(exclude_none=True) for item in output]  # reasoning, function call
        items += [
            {"type": "function_call_output", "call_id": item.call_id, "output": RESULT}
            for item in output
            if item.type == "function_call"
        ]
        second, _ = self.turn(model, items, stream)
        return first, second

    def turn(self, model: str, items: list[Any], stream: bool) -> tuple[Seen, list[Any]]:
        kwargs: Any = {
            "model": model,
            "input": items,
            "tools": [RESPONSES_TOOL],
            "reasoning": {"effort": "medium", "summary": "auto"},
            "include": ["reasoning.encrypted_content"],
            "store": False,
        }
        if not stream:
            response = self.sdk.responses.create(**kwargs)
            check_document("responses", json.loads(self.recorder.last.body))
        else:
            events = list(self.sdk.responses.create(**kwargs, stream=True))
            docs = stream_docs("responses", bytes(self.recorder.last.body))
            assert [d["sequence_number"] for d in docs] == list(range(len(docs)))
            assert events[-1].type == "response.completed", events[-1].type
            response = events[-1].response
        assert response.status == "completed" and response.usage is not None
        calls, reasoning, token = [], "", None
        for item in response.output:
            if item.type == "function_call":
                calls.append((item.name, json.loads(item.arguments)))
            elif item.type == "reasoning":  # a summary, or the raw text (a Chat upstream's)
                reasoning += "\n\n".join(s.text for s in item.summary) or "".join(
                    c.text for c in item.content or []
                )
                token = item.encrypted_content
        usage = (response.usage.input_tokens, response.usage.output_tokens)
        seen = Seen(calls, response.output_text, reasoning, token, usage, self.recorder.last)
        return seen, list(response.output)


class AnthropicClient:
    def __init__(self, gateway: RunningGateway) -> None:
        self.recorder = Recorder()
        self.sdk = anthropic.Anthropic(
            base_url=gateway.url,
            api_key=CLIENT_KEY,
            max_retries=0,
            http_client=httpx2.Client(transport=self.recorder),
        )

    def close(self) -> None:
        self.sdk.close()

    def round_trip(self, model: str, stream: bool) -> tuple[Seen, Seen]:
        messages: list[Any] = [{"role": "user", "content": QUESTION}]
        first, content = self.turn(model, messages, stream)
        messages.append({"role": "assistant", "content": content})  # the blocks as the SDK gave them
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": block.id, "content": RESULT}
                    for block in content
                    if block.type == "tool_use"
                ],
            }
        )
        second, _ = self.turn(model, messages, stream)
        return first, second

    def turn(self, model: str, messages: list[Any], stream: bool) -> tuple[Seen, list[Any]]:
        kwargs: Any = {
            "model": model,
            "max_tokens": 8192,
            "thinking": {"type": "enabled", "budget_tokens": 4096},
            "tools": [ANTHROPIC_TOOL],
            "messages": messages,
        }
        if not stream:
            message = self.sdk.messages.create(**kwargs)
            check_document("anthropic", json.loads(self.recorder.last.body))
        else:
            with self.sdk.messages.stream(**kwargs) as events:
                for _ in events:
                    pass
                message = events.get_final_message()
            docs = stream_docs("anthropic", bytes(self.recorder.last.body))
            assert docs[0]["type"] in ("message_start", "ping") and docs[-1]["type"] == "message_stop"
        calls, text, reasoning, token = [], "", "", None
        for block in message.content:
            if block.type == "tool_use":
                calls.append((block.name, dict(block.input)))
            elif block.type == "text":
                text += block.text
            elif block.type == "thinking":
                reasoning += block.thinking
                token = block.signature
        u = message.usage
        usage = (
            u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0),
            u.output_tokens,
        )
        return Seen(calls, text, reasoning, token, usage, self.recorder.last), list(message.content)


class GeminiClient:
    """google-genai's chat session: it keeps the history (every streamed chunk's content as it came)
    and sends it back, as its users rely on."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.recorder = Recorder()
        self.sdk = genai.Client(
            api_key=CLIENT_KEY,
            http_options=gtypes.HttpOptions(
                base_url=gateway.url, httpx_client=httpx2.Client(transport=self.recorder)
            ),
        )
        self.config = gtypes.GenerateContentConfig(
            tools=[GEMINI_TOOL],
            thinking_config=gtypes.ThinkingConfig(thinking_budget=4096, include_thoughts=True),
            automatic_function_calling=gtypes.AutomaticFunctionCallingConfig(disable=True),
        )

    def close(self) -> None:
        self.sdk.close()

    def round_trip(self, model: str, stream: bool) -> tuple[Seen, Seen]:
        chat = self.sdk.chats.create(model=model, config=self.config)
        first, calls = self.turn(chat, QUESTION, stream)
        reply = [
            gtypes.Part(
                function_response=gtypes.FunctionResponse(id=c.id, name=c.name, response={"result": RESULT})
            )
            for c in calls
        ]
        second, _ = self.turn(chat, reply, stream)
        # the SDK keeps only answers it finds valid in the history it sends back
        assert chat.get_history(curated=True) == chat.get_history(curated=False)
        return first, second

    def turn(self, chat: Any, message: Any, stream: bool) -> tuple[Seen, list[gtypes.FunctionCall]]:
        if not stream:
            responses = [chat.send_message(message)]
            check_document("gemini", json.loads(self.recorder.last.body))
        else:
            responses = list(chat.send_message_stream(message))
            stream_docs("gemini", bytes(self.recorder.last.body))
        calls: list[gtypes.FunctionCall] = []
        text = reasoning = ""
        token = None
        for response in responses:
            assert response.candidates
            content = response.candidates[0].content
            for part in (content.parts if content else None) or []:
                if part.thought:
                    reasoning += part.text or ""
                elif part.function_call is not None:
                    calls.append(part.function_call)
                else:
                    text += part.text or ""
                if part.thought_signature:
                    token = base64.b64encode(part.thought_signature).decode()
        meta = responses[-1].usage_metadata
        assert meta is not None and meta.prompt_token_count is not None
        usage = (
            meta.prompt_token_count,
            (meta.candidates_token_count or 0) + (meta.thoughts_token_count or 0),
        )
        seen = Seen(
            [(c.name or "", dict(c.args or {})) for c in calls],
            text,
            reasoning,
            token,
            usage,
            self.recorder.last,
        )
        return seen, calls


RUNNERS: dict[str, type[ChatClient | ResponsesClient | AnthropicClient | GeminiClient]] = {
    "chat": ChatClient,
    "responses": ResponsesClient,
    "anthropic": AnthropicClient,
    "gemini": GeminiClient,
}


# ----------------------------------------------------------------------------------------------
# Reading the upstream's turn-2 request, per wire
# ----------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """What an upstream request carried back from earlier turns."""

    calls: list[tuple[str | None, str, dict[str, Any]]] = field(default_factory=list)  # (id, name, args)
    results: list[tuple[str | None, str]] = field(
        default_factory=list
    )  # (call id or name, the result as JSON)
    reasoning: list[str | None] = field(default_factory=list)  # opaque tokens, in order
    order: list[str] = field(default_factory=list)  # the assistant turn's kinds of item, in order


def _standard_b64(signature: str) -> str:
    return signature.replace("-", "+").replace("_", "/")


def read_sent(wire: str, body: dict[str, Any]) -> Sent:
    sent = Sent()
    if wire == "chat":
        for m in body["messages"]:
            if m["role"] == "assistant":
                for c in m.get("tool_calls") or []:
                    sent.calls.append(
                        (c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
                    )
                    sent.order.append("call")
            elif m["role"] == "tool":
                sent.results.append((m["tool_call_id"], json.dumps(m["content"])))
    elif wire == "responses":
        for item in body["input"] if isinstance(body["input"], list) else []:
            kind = item.get("type")
            if kind == "function_call":
                sent.calls.append((item["call_id"], item["name"], json.loads(item["arguments"])))
                sent.order.append("call")
            elif kind == "function_call_output":
                sent.results.append((item["call_id"], json.dumps(item["output"])))
            elif kind == "reasoning":
                sent.reasoning.append(item.get("encrypted_content"))
                sent.order.append("reasoning")
    elif wire == "anthropic":
        for m in body["messages"]:
            for block in m["content"] if isinstance(m["content"], list) else []:
                if block["type"] == "tool_use":
                    sent.calls.append((block["id"], block["name"], block["input"]))
                    sent.order.append("call")
                elif block["type"] in ("thinking", "redacted_thinking"):
                    sent.reasoning.append(block.get("signature"))
                    sent.order.append("reasoning")
                elif block["type"] == "tool_result":
                    sent.results.append((block["tool_use_id"], json.dumps(block["content"])))
    else:
        for content in body["contents"]:
            for part in content.get("parts", []):
                signature = part.get("thoughtSignature", part.get("thought_signature"))
                call = part.get("functionCall", part.get("function_call"))
                response = part.get("functionResponse", part.get("function_response"))
                if call is not None:
                    sent.calls.append((call.get("id"), call["name"], call.get("args", {})))
                    sent.order.append("signed call" if signature else "call")
                elif signature:
                    sent.order.append("signed part")
                if signature:
                    sent.reasoning.append(_standard_b64(signature))
                if response is not None:
                    sent.results.append(
                        (response.get("id") or response["name"], json.dumps(response["response"]))
                    )
    return sent


UPSTREAM_TOKEN = {
    "responses": ENCRYPTED,
    "anthropic": anthropic_signature(THOUGHT),
    "gemini": gemini_signature(THOUGHT),
}
# Where the turn-2 request must carry the upstream's token: before the call (Responses' reasoning
# item, Anthropic's thinking block), or on the call's own part (Gemini, where it arrived).
TOKEN_ORDER = {
    "responses": ["reasoning", "call"],
    "anthropic": ["reasoning", "call"],
    "gemini": ["signed call"],
}


# ----------------------------------------------------------------------------------------------
# 1. The matrix
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("wire", WIRES, ids=[f"over-{w}" for w in WIRES])
@pytest.mark.parametrize("client", CLIENTS)
def test_tool_round_trip_keeps_reasoning(
    matrix: Matrix, upstream: FakeUpstream, client: str, wire: str, stream: bool
) -> None:
    upstream.for_model(UPSTREAM_MODEL[wire], turn1_reply(), turn2_reply())
    runner = RUNNERS[client](matrix.gateway)
    try:
        first, second = runner.round_trip(MODEL[wire], stream)
    finally:
        runner.close()
    both_reason = client in REASONING_DIALECTS and wire in REASONING_DIALECTS

    # what the client got: the call intact, the reasoning shown (and its token held), the answer
    assert first.calls == [("get_weather", ARGS)]
    assert first.reasoning == THOUGHT
    if both_reason:
        assert first.token, "the client got no reasoning token to send back"
    if client == wire and client in REASONING_DIALECTS:  # the fast path hands the upstream's token over as is
        assert first.token == UPSTREAM_TOKEN[wire]
    assert (second.text, second.calls) == (ANSWER, [])

    # what the upstream got in turn 2: the call, its result, and the reasoning it minted
    posts = [r for r in upstream.requests if r.method == "POST"]
    assert [r.path for r in posts] == [UPSTREAM_PATH[wire, stream]] * 2
    sent = read_sent(wire, posts[1].body)
    assert [(name, args) for _, name, args in sent.calls] == [("get_weather", ARGS)]
    assert len(sent.results) == 1 and RESULT in sent.results[0][1], sent.results
    call_id, name, _ = sent.calls[0]
    assert sent.results[0][0] in (call_id, name), "the tool result does not answer the call it follows"
    if both_reason:
        assert sent.reasoning == [UPSTREAM_TOKEN[wire]], "the upstream's reasoning token did not come back"
        assert sent.order == TOKEN_ORDER[wire]
    if wire == "responses" and client in REASONING_DIALECTS:
        assert "reasoning.encrypted_content" in posts[0].body.get("include", [])
    if wire == "anthropic":
        thinking = posts[1].body.get("thinking") or {}
        if client in REASONING_DIALECTS:
            assert thinking.get("type") == "enabled", "the client asked for reasoning on every turn"
        if thinking.get("type") == "enabled":  # Anthropic refuses a tool loop whose call lost its thinking
            assert sent.order[0] == "reasoning", sent.order

    # usage: in the answer, in the headers, in the gateway's usage table
    for seen, expected in ((first, TURN1_USAGE), (second, TURN2_USAGE)):
        assert seen.usage == expected
        assert seen.exchange.headers["x-modelwire-backend"] == BACKEND[wire]
        assert seen.exchange.headers["x-modelwire-model"] == UPSTREAM_MODEL[wire]
        row = usage_row(matrix.store, seen.exchange.headers["x-request-id"])
        assert (row["backend"], row["upstream_model"], row["status"], bool(row["stream"])) == (
            BACKEND[wire],
            UPSTREAM_MODEL[wire],
            200,
            stream,
        )
        assert (row["input_tokens"], row["output_tokens"]) == expected


# ----------------------------------------------------------------------------------------------
# 2. Fast paths: Anthropic → anthropic, Gemini → gemini
# ----------------------------------------------------------------------------------------------

ANTHROPIC_HEADERS = {
    "Content-Type": "application/json",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "interleaved-thinking-2025-05-14",
    "x-api-key": CLIENT_KEY,
    "Authorization": "",
}


def assert_no_client_key(recorded: Recorded) -> None:
    leaked = {k: v for k, v in recorded.headers.items() if CLIENT_KEY in v}
    assert not leaked and CLIENT_KEY not in json.dumps(recorded.query), leaked


def test_anthropic_fast_path_forwards_the_clients_body_and_headers(
    matrix: Matrix, upstream: FakeUpstream
) -> None:
    upstream.for_model("up-claude", turn1_reply(), turn2_reply())
    body: dict[str, Any] = {
        "model": "via-anthropic",
        "max_tokens": 8192,
        "thinking": {"type": "enabled", "budget_tokens": 4096},
        "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{**ANTHROPIC_TOOL, "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "metadata": {"user_id": "user-7"},
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": QUESTION, "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    status, headers, payload = request(
        matrix.gateway, "POST", "/v1/messages", json.dumps(body).encode(), ANTHROPIC_HEADERS
    )
    assert status == 200, payload
    first = json.loads(payload)
    assert_anthropic("BetaMessage", first)
    assert headers["x-modelwire-backend"] == "claude"
    thinking = first["content"][0]
    assert thinking == {"type": "thinking", "thinking": THOUGHT, "signature": anthropic_signature(THOUGHT)}
    use = first["content"][1]
    assert (use["type"], use["name"], use["input"]) == ("tool_use", "get_weather", ARGS)

    body["messages"] += [
        {"role": "assistant", "content": first["content"]},
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": use["id"],
                    "content": RESULT,
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    body["stream"] = True
    request_id = "matrix-anthropic-fast-stream"
    status, headers, payload = request(
        matrix.gateway,
        "POST",
        "/v1/messages",
        json.dumps(body).encode(),
        {**ANTHROPIC_HEADERS, "x-request-id": request_id},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert answer_text("anthropic", True, payload) == ANSWER

    posts = [r for r in upstream.requests if r.method == "POST"]
    assert len(posts) == 2
    for recorded, sent in zip(posts, (first_body(body), body), strict=True):
        assert recorded.path == "/v1/messages"
        assert recorded.body == {**sent, "model": "up-claude"}  # nothing but the model changed
        assert recorded.headers["anthropic-beta"] == ANTHROPIC_HEADERS["anthropic-beta"]
        assert recorded.headers["anthropic-version"] == "2023-06-01"
        assert recorded.headers["x-api-key"] == BACKEND_KEY["anthropic"]
        assert_no_client_key(recorded)
    replayed = posts[1].body["messages"][1]["content"][0]
    assert replayed["signature"] == anthropic_signature(THOUGHT)  # the fake checks it too
    assert posts[1].body["messages"][2]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert posts[1].body["tools"][0]["cache_control"] == {"type": "ephemeral", "ttl": "1h"}

    row = usage_row(matrix.store, request_id)  # the stream's usage, read by the tap as it passed
    assert (row["backend"], row["input_tokens"], row["output_tokens"], row["stream"]) == (
        "claude",
        *TURN2_USAGE,
        True,
    )


def first_body(full: dict[str, Any]) -> dict[str, Any]:
    """The turn-1 body of the fast-path test, rebuilt from the turn-2 one."""
    body = {k: v for k, v in full.items() if k != "stream"}
    return {**body, "messages": full["messages"][:1]}


def test_anthropic_count_tokens_is_the_upstreams(matrix: Matrix, upstream: FakeUpstream) -> None:
    body = {
        "model": "via-anthropic",
        "system": "You are terse.",
        "tools": [ANTHROPIC_TOOL],
        "messages": [{"role": "user", "content": QUESTION}],
    }
    status, _, payload = request(
        matrix.gateway, "POST", "/v1/messages/count_tokens", json.dumps(body).encode(), ANTHROPIC_HEADERS
    )
    assert status == 200, payload
    counted = [r for r in upstream.requests if r.path == "/v1/messages/count_tokens"]
    assert len(counted) == 1, "the count was not asked of the Anthropic upstream"
    assert counted[0].body == {**body, "model": "up-claude"}
    assert counted[0].headers["x-api-key"] == BACKEND_KEY["anthropic"]
    assert_no_client_key(counted[0])
    expected = count_tokens({k: body[k] for k in ("system", "messages", "tools")})
    assert json.loads(payload)["input_tokens"] == expected


GEMINI_BODY: dict[str, Any] = {
    "contents": [{"role": "user", "parts": [{"text": QUESTION}]}],
    "systemInstruction": {"parts": [{"text": "You are terse."}]},
    "tools": [
        {
            "functionDeclarations": [
                {"name": "get_weather", "description": "Forecast", "parametersJsonSchema": SCHEMA}
            ]
        }
    ],
    "generationConfig": {
        "temperature": 0.2,
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 4096},
    },
}


def test_gemini_fast_path_forwards_the_clients_body(matrix: Matrix, upstream: FakeUpstream) -> None:
    upstream.for_model("up-gemini", turn1_reply(), turn2_reply())
    body = json.loads(json.dumps(GEMINI_BODY))
    status, headers, payload = request(
        matrix.gateway,
        "POST",
        f"/v1beta/models/via-gemini:generateContent?key={CLIENT_KEY}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "Authorization": ""},
    )
    assert status == 200, payload
    first = json.loads(payload)
    check_document("gemini", first)
    assert headers["x-modelwire-backend"] == "gem"
    parts = first["candidates"][0]["content"]["parts"]
    assert parts[0] == {"text": THOUGHT, "thought": True}
    assert parts[1]["functionCall"] == {"name": "get_weather", "args": ARGS}
    assert parts[1]["thoughtSignature"] == gemini_signature(THOUGHT)

    body["contents"] += [
        first["candidates"][0]["content"],
        {
            "role": "user",
            "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": RESULT}}}],
        },
    ]
    request_id = "matrix-gemini-fast-array"
    status, headers, payload = request(  # no alt=sse: the answer is one JSON array
        matrix.gateway,
        "POST",
        "/v1beta/models/via-gemini:streamGenerateContent",
        json.dumps(body).encode(),
        {
            "Content-Type": "application/json",
            "x-goog-api-key": CLIENT_KEY,
            "Authorization": "",
            "x-request-id": request_id,
        },
    )
    assert status == 200 and headers["content-type"].startswith("application/json"), payload
    chunks = json.loads(payload)
    assert isinstance(chunks, list) and len(chunks) >= 2
    for chunk in chunks:
        check_document("gemini", chunk)
    assert (
        "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"]) == ANSWER
    )
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"

    posts = [r for r in upstream.requests if r.method == "POST"]
    assert [(r.path, r.query.get("alt")) for r in posts] == [
        ("/v1beta/models/up-gemini:generateContent", None),
        ("/v1beta/models/up-gemini:streamGenerateContent", "sse"),  # the gateway reads SSE upstream
    ]
    assert posts[0].body == GEMINI_BODY and posts[1].body == body  # as the client wrote them
    for recorded in posts:
        assert recorded.headers["x-goog-api-key"] == BACKEND_KEY["gemini"]
        assert_no_client_key(recorded)
    assert posts[1].body["contents"][1]["parts"][1]["thoughtSignature"] == gemini_signature(THOUGHT)

    row = usage_row(matrix.store, request_id)
    assert (row["backend"], row["input_tokens"], row["output_tokens"], row["stream"]) == (
        "gem",
        *TURN2_USAGE,
        True,
    )


def test_gemini_count_tokens_is_the_upstreams(matrix: Matrix, upstream: FakeUpstream) -> None:
    body = {"contents": GEMINI_BODY["contents"]}
    status, _, payload = request(
        matrix.gateway,
        "POST",
        "/v1beta/models/via-gemini:countTokens",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "x-goog-api-key": CLIENT_KEY, "Authorization": ""},
    )
    assert status == 200, payload
    counted = [r for r in upstream.requests if r.path.endswith(":countTokens")]
    assert [r.path for r in counted] == ["/v1beta/models/up-gemini:countTokens"], "not asked of the upstream"
    assert counted[0].body == body and counted[0].headers["x-goog-api-key"] == BACKEND_KEY["gemini"]
    assert_no_client_key(counted[0])
    assert json.loads(payload)["totalTokens"] == count_tokens({"contents": body["contents"]})


# ----------------------------------------------------------------------------------------------
# 3. Failover across wires
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("cause", ["overloaded", "refused"])
@pytest.mark.parametrize("client", CLIENTS)
def test_failover_from_anthropic_to_openai(
    matrix: Matrix, upstream: FakeUpstream, client: str, cause: str, stream: bool
) -> None:
    upstream.for_model("fo-claude", Reply.error(529, "Overloaded"))
    upstream.for_model("fo-openai", Reply.text("The backup answers."))
    status, headers, payload = raw_generate(matrix.gateway, client, f"fo-{cause}", stream)
    assert status == 200, payload
    assert headers["x-modelwire-backend"] == "resp" and headers["x-modelwire-model"] == "fo-openai"
    assert answer_text(client, stream, payload) == "The backup answers."
    tried = [(r.path, r.body.get("model")) for r in upstream.requests if r.method == "POST"]
    expected = [("/v1/responses", "fo-openai")]
    assert tried == ([("/v1/messages", "fo-claude"), *expected] if cause == "overloaded" else expected)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
@pytest.mark.parametrize("client", CLIENTS)
def test_every_target_failing_is_a_clean_error(
    matrix: Matrix, upstream: FakeUpstream, client: str, stream: bool
) -> None:
    upstream.for_model("fo-dead-openai", Reply.error(500, "The server had an error"))
    upstream.for_model("fo-dead-claude", Reply.error(529, "Overloaded"))
    status, headers, payload = raw_generate(matrix.gateway, client, "fo-all-fail", stream)
    assert [r.body.get("model") for r in upstream.requests] == ["fo-dead-openai", "fo-dead-claude"]
    assert 500 <= status < 600, (status, payload)
    assert not headers.get("content-type", "").startswith("text/event-stream"), (
        "failed before a byte: no stream"
    )
    message, kind = error_of(client, status, payload)
    assert "Overloaded" in message
    if client == "anthropic":
        assert (status, kind) == (529, "overloaded_error")
    if client == "gemini":
        assert (status, kind) == (503, "UNAVAILABLE")  # Google has no 529
    if client in ("chat", "responses"):  # nor has OpenAI: its overloaded servers answer 503
        assert (status, kind) == (503, "server_error")
    for secret in ("sk-up-once", "sk-ant-up-once", CLIENT_KEY):
        assert secret not in payload.decode()


# ----------------------------------------------------------------------------------------------
# 4. Errors from the new upstreams, in each client's dialect
# ----------------------------------------------------------------------------------------------

EXPECTED_KIND = {  # (case, client) -> the error's type (OpenAI, Anthropic) or status (Google)
    ("anthropic-429", "anthropic"): "rate_limit_error",
    ("anthropic-429", "gemini"): "RESOURCE_EXHAUSTED",
    ("anthropic-400", "anthropic"): "invalid_request_error",
    ("anthropic-400", "chat"): "invalid_request_error",
    ("anthropic-400", "responses"): "invalid_request_error",
    ("anthropic-400", "gemini"): "INVALID_ARGUMENT",
    ("gemini-429", "anthropic"): "rate_limit_error",
    ("gemini-429", "gemini"): "RESOURCE_EXHAUSTED",
}


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_upstream_errors_in_the_clients_dialect(
    matrix: Matrix, upstream: FakeUpstream, case: str, client: str
) -> None:
    model = error_model(case, client)
    if case == "anthropic-429":
        message = "Number of request tokens has exceeded your per-minute rate limit"
        limited = Reply.error(429, message, headers={"retry-after": "120"})
        upstream.for_model(f"{model}-up", limited, limited)  # one per key of the backend
    elif case == "anthropic-400":
        message = "messages.0.content: Input should be a valid list"
        upstream.for_model(f"{model}-up", Reply.error(400, message, type="invalid_request_error"))
    else:  # Google sends no Retry-After: the gateway tries the backend's other key, then gives up
        message = "Resource has been exhausted (e.g. check quota)."
        upstream.for_model(f"{model}-up", Reply.error(429, message), Reply.error(429, message))
    status, headers, payload = raw_generate(matrix.gateway, client, model, stream=False)
    assert status == (400 if case == "anthropic-400" else 429), payload
    text, kind = error_of(client, status, payload)
    assert message in text
    if (case, client) in EXPECTED_KIND:
        assert kind == EXPECTED_KIND[case, client]
    if case == "anthropic-429":
        assert headers.get("retry-after") == "120"
        if client == "gemini":  # Gemini clients read the wait from a RetryInfo detail
            details = json.loads(payload)["error"]["details"]
            assert {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "120s"} in details
    tried = [r for r in upstream.requests if r.method == "POST"]
    assert len(tried) == (1 if case == "anthropic-400" else 2)  # a 429 tries the other key first
    assert len({r.headers.get("x-api-key") or r.headers.get("x-goog-api-key") for r in tried}) == len(tried)


@pytest.mark.parametrize("wire", ["anthropic", "gemini"], ids=["from-anthropic", "from-gemini"])
@pytest.mark.parametrize("client", CLIENTS)
def test_mid_stream_upstream_error_is_the_clients_error_event(
    matrix: Matrix, upstream: FakeUpstream, client: str, wire: str
) -> None:
    upstream.for_model(
        UPSTREAM_MODEL[wire],
        Reply.stream_error("one two three four five six", after=4, message="upstream exploded"),
    )
    status, _, payload = raw_generate(matrix.gateway, client, MODEL[wire], stream=True)
    assert status == 200  # the stream had begun
    docs = stream_docs(client, payload)  # every event valid, the error event included
    last = docs[-1]
    if client == "chat":
        assert "error" in last and "upstream exploded" in last["error"]["message"]
        finishes = [c["finish_reason"] for d in docs for c in d.get("choices", []) if c["finish_reason"]]
        assert finishes == [], "a fake finish before the error"
        text = "".join(c["delta"].get("content") or "" for d in docs for c in d.get("choices", []))
    elif client == "responses":
        assert last["type"] in ("error", "response.failed")
        said = last.get("message") or last.get("response", {}).get("error", {}).get("message", "")
        assert "upstream exploded" in said
        assert not any(d["type"] == "response.completed" for d in docs)
        text = "".join(d["delta"] for d in docs if d["type"] == "response.output_text.delta")
    elif client == "anthropic":
        assert last["type"] == "error" and "upstream exploded" in last["error"]["message"]
        assert not any(d["type"] == "message_stop" for d in docs)
        text = "".join(d["delta"].get("text", "") for d in docs if d["type"] == "content_block_delta")
    else:
        assert "error" in last and "upstream exploded" in last["error"]["message"]
        assert not any(c.get("finishReason") for d in docs[:-1] for c in d["candidates"])
        text = "".join(p.get("text", "") for d in docs[:-1] for p in d["candidates"][0]["content"]["parts"])
    assert text.startswith("one "), text  # what came before the failure reached the client


STRAY_RESULT: dict[str, tuple[str, dict[str, Any]]] = {  # a request whose only turn answers no call
    "chat": (
        "/v1/chat/completions",
        {"messages": [{"role": "tool", "tool_call_id": "call_gone", "content": RESULT}]},
    ),
    "responses": (
        "/v1/responses",
        {"input": [{"type": "function_call_output", "call_id": "call_gone", "output": RESULT}]},
    ),
    "anthropic": (
        "/v1/messages",
        {
            "max_tokens": 256,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "toolu_gone", "content": RESULT}],
                }
            ],
        },
    ),
    "gemini": (
        "/v1beta/models/{model}:generateContent",
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": RESULT}}}],
                }
            ]
        },
    ),
}


@pytest.mark.parametrize(
    ("client", "wire"), [(c, w) for c in CLIENTS for w in WIRES if c != w], ids=lambda v: str(v)
)
def test_a_conversation_of_stray_tool_results_is_refused(
    matrix: Matrix, upstream: FakeUpstream, client: str, wire: str
) -> None:
    """Repair drops a result that answers no call; when nothing is left, the client hears why,
    rather than the upstream being asked to answer an empty conversation (a Gemini SDK chat that
    lost its history ends up sending exactly this)."""
    path, body = STRAY_RESULT[client]
    headers = {"Content-Type": "application/json"}
    if client == "anthropic":
        headers |= {"anthropic-version": "2023-06-01", "x-api-key": CLIENT_KEY, "Authorization": ""}
    if client == "gemini":
        headers |= {"x-goog-api-key": CLIENT_KEY, "Authorization": ""}
    else:
        body = {"model": MODEL[wire], **body}
    status, _, payload = request(
        matrix.gateway, "POST", path.format(model=MODEL[wire]), json.dumps(body).encode(), headers
    )
    sent = [r.body for r in upstream.requests if r.method == "POST"]
    assert not [b for b in sent if not (b.get("messages") or b.get("input") or b.get("contents"))], sent
    assert status == 400, payload
    _, kind = error_of(client, status, payload)
    assert kind == ("INVALID_ARGUMENT" if client == "gemini" else "invalid_request_error")
