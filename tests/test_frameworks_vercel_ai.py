"""The Vercel AI SDK (``ai`` with ``@ai-sdk/openai``, ``@ai-sdk/anthropic``, ``@ai-sdk/google``)
against a real ``modelwire serve`` process, its providers pointed at the gateway the way users do:
``createOpenAI({baseURL: <gateway>/v1})`` (``openai(model)`` speaks Responses, ``openai.chat(model)``
Chat Completions), ``createAnthropic({baseURL: <gateway>/v1})`` and
``createGoogleGenerativeAI({baseURL: <gateway>/v1beta})``.

The SDK runs in node (``tests/clients/vercel_ai.mjs``, installed by ``make test``); each test hands
it a list of calls, which it makes in order and answers with one JSON list of results. The upstream
is the fake, which validates every request against the vendors' specs.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fake_upstream import (
    FakeUpstream,
    Recorded,
    Reply,
    embedding_for,
    gemini_embedding,
    gemini_signature_is_minted,
)
from .gateway_fixtures import CLIENT_KEY, RunningGateway, add_vendor_backends, base_config, running_gateway

CLIENTS = Path(__file__).parent / "clients"
SCRIPT = CLIENTS / "vercel_ai.mjs"
ANTHROPIC_KEY = "sk-ant-up-vercel-ai-0001"
GEMINI_KEY = "AIza-up-vercel-ai-00000001"
# Names routed to the native Anthropic and Gemini backends; everything else is in base_config.
CLAUDE = "claude-vercel-direct"
GEMINI = "gemini-vercel-direct"
EMBED = "gemini-embed"  # a Gemini embedding model

# (provider, model, upstream wire): each SDK provider over a passthrough and a translated route.
ROUTES = [
    ("openai", "resp-model", "responses"),
    ("openai", "chat-model", "chat"),
    ("openai.chat", "chat-model", "chat"),
    ("openai.chat", "resp-model", "responses"),
    ("anthropic", CLAUDE, "messages"),
    ("anthropic", "chat-model", "chat"),
    ("google", GEMINI, "gemini"),
    ("google", "resp-model", "responses"),
]
ROUTE_IDS = [f"{provider}-{model}" for provider, model, _ in ROUTES]


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The usual gateway plus an Anthropic and a Gemini backend on the fake."""
    tmp = tmp_path_factory.mktemp("vercel-ai-gateway")
    config = base_config(upstream_server, tmp)
    add_vendor_backends(config, upstream_server, anthropic=ANTHROPIC_KEY, gemini=GEMINI_KEY)
    # A wrong key counts against the client's address (5 by default lock it out for 30 s), and every
    # test here comes from 127.0.0.1: the wrong-key test must not lock the others out.
    config["lockout"] = {"failures": 100}
    config["models"][:0] = [
        {"name": CLAUDE, "route": "anthropic/claude-sonnet-4-5"},
        {"name": GEMINI, "route": "gem/gemini-2.5-flash"},
        {"name": EMBED, "route": "gem/gemini-embedding-001"},
    ]
    with running_gateway(config, tmp, name="vercel-ai-gateway") as running:
        yield running


def vercel_ai(gateway: RunningGateway, *cases: dict[str, Any], key: str = CLIENT_KEY) -> list[dict[str, Any]]:
    """Run ``cases`` (see the script's header) through the SDK, in order; their results."""
    spec = json.dumps({"gateway": gateway.url, "key": key, "cases": list(cases)})
    run = subprocess.run(["node", str(SCRIPT), spec], cwd=CLIENTS, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    results: list[dict[str, Any]] = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) == len(cases)
    return results


def case(
    route: tuple[str, str, str], call: str, prompt: str = "Say something.", **extra: Any
) -> dict[str, Any]:
    provider, model, _ = route
    return {"provider": provider, "model": model, "call": call, "prompt": prompt, **extra}


def ok(result: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in result, result["error"]
    return result


def wire(path: str) -> str:
    """Which upstream API a request path is: chat, responses, messages or gemini."""
    for suffix, name in [
        ("/chat/completions", "chat"),
        ("/responses", "responses"),
        ("/messages", "messages"),
    ]:
        if path.endswith(suffix):
            return name
    return "gemini" if "GenerateContent" in path or "generateContent" in path else path


def generation_requests(upstream: FakeUpstream) -> list[Recorded]:
    """The generation requests that reached the upstream (not token counts or model lists)."""
    paths = ("/responses", "/chat/completions", "/messages", ":generateContent", ":streamGenerateContent")
    return [r for r in upstream.requests if r.path.endswith(paths) and r.body is not None]


def streaming(request: Recorded) -> bool:
    return bool(request.body.get("stream")) or request.path.endswith(":streamGenerateContent")


def tool_call_id(request: Recorded) -> str:
    """The id of the one tool call in the history of ``request`` (in its wire's shape)."""
    body, kind = request.body, wire(request.path)
    if kind == "responses":
        (call,) = [i for i in body["input"] if i.get("type") == "function_call"]
        return str(call["call_id"])
    if kind == "chat":
        (call,) = [c for m in body["messages"] for c in m.get("tool_calls") or []]
        return str(call["id"])
    if kind == "messages":
        blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
        (call,) = [b for b in blocks if b["type"] == "tool_use"]
        return str(call["id"])
    (part,) = [p for c in body["contents"] for p in c["parts"] if "functionCall" in p]
    assert gemini_signature_is_minted(part.get("thoughtSignature")), part  # came back unchanged
    return str(part["functionCall"]["id"])


def tool_result(request: Recorded) -> tuple[str, str]:
    """(call id, output as text) of the one tool result ``request`` carries (in its wire's shape)."""
    body, kind = request.body, wire(request.path)
    if kind == "responses":
        (out,) = [i for i in body["input"] if i.get("type") == "function_call_output"]
        return str(out["call_id"]), json.dumps(out["output"])
    if kind == "chat":
        (msg,) = [m for m in body["messages"] if m["role"] == "tool"]
        return str(msg["tool_call_id"]), json.dumps(msg["content"])
    if kind == "messages":
        blocks = [b for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
        (result,) = [b for b in blocks if b["type"] == "tool_result"]
        return str(result["tool_use_id"]), json.dumps(result["content"])
    (part,) = [p for c in body["contents"] for p in c["parts"] if "functionResponse" in p]
    return str(part["functionResponse"]["id"]), json.dumps(part["functionResponse"]["response"])


# ------------------------------------------------------------------------------- text, plain and streamed


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_generate_and_stream_text(
    upstream: FakeUpstream, gateway: RunningGateway, route: tuple[str, str, str]
) -> None:
    """``generateText`` then ``streamText``: the answer, its finish reason and its usage (cache
    reads included) come back whole, the streamed one in several deltas, over the route's wire."""
    upstream.script(
        Reply.text("The capital is Paris.", usage=(14, 6), cached=4),
        Reply.text("one two three four", usage=(9, 4)),
    )
    plain, streamed = vercel_ai(
        gateway, case(route, "generateText", system="Be brief."), case(route, "streamText")
    )
    ok(plain)
    assert plain["text"] == "The capital is Paris." and plain["finishReason"] == "stop"
    usage = plain["usage"]
    assert (usage["inputTokens"], usage["outputTokens"], usage["totalTokens"]) == (14, 6, 20)
    assert usage["cacheReadTokens"] == 4
    ok(streamed)
    assert streamed["text"] == "one two three four" and len(streamed["deltas"]) > 1
    assert "".join(streamed["deltas"]) == streamed["text"]
    assert streamed["finishReason"] == "stop"
    assert (streamed["usage"]["inputTokens"], streamed["usage"]["outputTokens"]) == (9, 4)
    assert streamed["usage"]["totalTokens"] == 13
    first, second = generation_requests(upstream)
    assert (wire(first.path), wire(second.path)) == (route[2], route[2])
    assert "Be brief." in json.dumps(first.body)  # the system prompt arrived, in whatever form
    assert not streaming(first) and streaming(second)


# ------------------------------------------------------------------------------------ tool round trip


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_tool_round_trip(
    upstream: FakeUpstream, gateway: RunningGateway, route: tuple[str, str, str]
) -> None:
    """``tools`` with an ``execute`` and ``stopWhen: stepCountIs(2)``, plain then streamed: the model
    asks for the weather, the SDK runs the tool and sends its result back for that call id, and the
    second step's answer is the final text. Usage adds up over both steps."""
    # Gemini signs its function calls (the signature must come back unchanged, which the fake
    # checks); unsigned, the SDK would send its documented bypass value, which the fake refuses.
    summary = ["Weather needed."] if route[2] == "gemini" else []
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city":"Paris"}')], summary=summary),
        Reply.text("Sunny in Paris."),
        Reply.tool_calls([("get_weather", '{"city":"Oslo"}')], summary=summary),
        Reply.text("Sunny in Oslo."),
    )
    results = vercel_ai(gateway, case(route, "tools"), case(route, "streamTools"))
    sent = generation_requests(upstream)
    assert len(sent) == 4, [r.path for r in sent]
    for result, city, (asked, answered) in zip(results, ["Paris", "Oslo"], [sent[:2], sent[2:]], strict=True):
        ok(result)
        assert result["text"] == f"Sunny in {city}." and result["finishReason"] == "stop"
        call_step, answer_step = result["steps"]
        assert call_step["finishReason"] == "tool-calls"
        (tool_call,) = call_step["toolCalls"]
        assert tool_call["name"] == "get_weather" and tool_call["input"] == {"city": city}
        assert call_step["toolResults"] == [
            {"id": tool_call["id"], "output": {"city": city, "forecast": f"sunny in {city}"}}
        ]
        assert answer_step["text"] == f"Sunny in {city}."
        assert (result["usage"]["inputTokens"], result["usage"]["outputTokens"]) == (20, 10)  # 2 x (10, 5)
        assert "get_weather" in json.dumps(asked.body)  # the tool was declared upstream
        call_id, output = tool_result(answered)
        assert call_id == tool_call_id(answered) and f"sunny in {city}" in output
        if route[2] != "gemini":  # the call's id is the upstream's own, whatever the client's wire
            assert call_id == tool_call["id"]


# ------------------------------------------------------------------------------------ structured output


# Per route, where the upstream request carries the schema: the SDK's own mechanism (OpenAI
# json_schema, Anthropic output_config, Gemini responseJsonSchema), translated where it must be.
# Anthropic through a model it does not know (``chat-model``) falls back to a forced ``json`` tool.
def schema_sent(route: tuple[str, str, str], body: dict[str, Any]) -> Any:
    provider, model, upstream_wire = route
    if provider == "anthropic" and model != CLAUDE:
        (tool,) = body["tools"]
        assert tool["function"]["name"] == "json" and body["tool_choice"] == "required"
        return tool["function"]["parameters"]
    if upstream_wire == "responses":
        assert body["text"]["format"]["type"] == "json_schema"
        return body["text"]["format"]["schema"]
    if upstream_wire == "chat":
        assert body["response_format"]["type"] == "json_schema"
        return body["response_format"]["json_schema"]["schema"]
    if upstream_wire == "messages":
        return body["output_config"]["format"]["schema"]
    assert body["generationConfig"]["responseMimeType"] == "application/json"
    return body["generationConfig"]["responseJsonSchema"]


def test_structured_output_on_every_route(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    """``generateObject`` and ``streamObject`` with a JSON schema, through every route in one node
    run: the object parses and validates on the SDK's side, and the schema reached the upstream."""
    city = '{"name":"Paris","population":2100000}'
    cases: list[dict[str, Any]] = []
    replies: list[Reply] = []
    for route in ROUTES:
        forced_tool = route[0] == "anthropic" and route[1] != CLAUDE
        replies += [Reply.tool_calls([("json", city)]) if forced_tool else Reply.text(city) for _ in "ab"]
        cases += [case(route, "object"), case(route, "streamObject")]
    upstream.script(*replies)
    results = vercel_ai(gateway, *cases)
    sent = generation_requests(upstream)
    assert len(sent) == len(cases)
    for i, route in enumerate(ROUTES):
        plain, streamed = ok(results[2 * i]), ok(results[2 * i + 1])
        assert plain["object"] == streamed["object"] == {"name": "Paris", "population": 2100000}, route
        assert plain["usage"]["inputTokens"] == 10 and streamed["usage"]["outputTokens"] == 5, route
        for request in sent[2 * i : 2 * i + 2]:
            schema = schema_sent(route, request.body)
            assert schema["required"] == ["name", "population"], route
            assert schema["properties"]["population"] == {"type": "integer"}, route
        assert streaming(sent[2 * i + 1]) and not streaming(sent[2 * i]), route


# ------------------------------------------------------------------------------------------ multi-turn


def test_conversation_carries_the_previous_answer(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    """A second turn built from ``response.messages`` of the first: the upstream sees the first
    answer as the assistant's turn. The OpenAI provider stores by default and then refers to its
    earlier answer by id alone (``item_reference``): a native Responses upstream resolves it; for
    any other the gateway, which stored the answer, sends the answer itself."""
    no_store = {"openai": {"store": False}}
    turns: list[tuple[dict[str, Any], str]] = [
        ({"provider": "openai", "model": "resp-model"}, "item_reference"),
        ({"provider": "openai", "model": "chat-model"}, "chat"),
        ({"provider": "openai", "model": CLAUDE}, "messages"),
        ({"provider": "openai", "model": GEMINI, "providerOptions": no_store}, "gemini"),
        ({"provider": "anthropic", "model": "resp-model"}, "responses"),
        ({"provider": "google", "model": CLAUDE}, "messages"),
    ]
    for _ in turns:
        upstream.script(Reply.text("Paris is the capital."), Reply.text("About two million."))
    cases = [
        {**where, "call": "conversation", "prompt": "Capital of France?", "followUp": "Its population?"}
        for where, _ in turns
    ]
    results = vercel_ai(gateway, *cases)
    sent = generation_requests(upstream)
    for i, (result, (_, form)) in enumerate(zip(results, turns, strict=True)):
        ok(result)
        assert (result["first"], result["text"]) == ("Paris is the capital.", "About two million.")
        first, second = sent[2 * i], sent[2 * i + 1]
        history = json.dumps(second.body)
        assert "Capital of France?" in history and "Its population?" in history
        if form == "item_reference":  # passthrough: the upstream answered it and resolves the id
            assert any(item.get("type") == "item_reference" for item in second.body["input"]), history
        else:
            assert "Paris is the capital." in history, history
            assert "Paris is the capital." not in json.dumps(first.body)


# ------------------------------------------------------------------------------------------ embeddings


@pytest.mark.parametrize(
    ("provider", "model"), [("openai", EMBED), ("google", "chat-model"), ("google", EMBED)]
)
def test_embed_and_embed_many(
    upstream: FakeUpstream, gateway: RunningGateway, provider: str, model: str
) -> None:
    """``embed`` (Google's provider posts ``:embedContent``) and ``embedMany`` (``:batchEmbedContents``,
    or OpenAI's ``/embeddings``), each across dialects where the model is the other vendor's."""
    results = vercel_ai(
        gateway,
        {"provider": provider, "model": model, "call": "embed", "values": ["sun"]},
        {"provider": provider, "model": model, "call": "embed", "values": ["moon", "stars"]},
    )
    for result in results:
        ok(result)
    sent = [r for r in upstream.requests if r.method == "POST"][-2:]
    (single,), pair = results[0]["embeddings"], results[1]["embeddings"]
    if model == EMBED:  # a Gemini upstream: one request per text (one alone goes to :embedContent)
        wanted = [r for request in sent for r in request.body.get("requests") or [request.body]]
        assert [r["content"]["parts"][0]["text"] for r in wanted] == ["sun", "moon", "stars"]
        assert [single, *pair] == [pytest.approx(gemini_embedding(r), rel=1e-6) for r in wanted]
    else:
        assert [request.body["input"] for request in sent] == [["sun"], ["moon", "stars"]]
        assert [single, *pair] == [
            pytest.approx(embedding_for(t), rel=1e-6) for t in ("sun", "moon", "stars")
        ]


# ----------------------------------------------------------------------------------------- a wrong key

WRONG_KEY = "sk-not-a-key-of-this-gateway-000"
# Each vendor's error shape, as its SDK reads it: OpenAI's error object, Anthropic's typed error,
# Google's status.
WRONG_KEY_ERRORS = {
    "openai": lambda body: body["error"]["code"] == "invalid_api_key",
    "openai.chat": lambda body: body["error"]["code"] == "invalid_api_key",
    "anthropic": lambda body: body["type"] == "error" and body["error"]["type"] == "authentication_error",
    "google": lambda body: body["error"]["code"] == 401 and body["error"]["status"] == "UNAUTHENTICATED",
}


def test_wrong_key_is_a_401_api_error_and_reaches_no_upstream(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """Every provider, plain and streamed: the SDK raises an ``APICallError`` with status 401 and a
    message it read from the body (in the vendor's own error shape), and nothing went upstream."""
    routes = [
        ("openai", "resp-model"),
        ("openai.chat", "chat-model"),
        ("anthropic", CLAUDE),
        ("google", GEMINI),
    ]
    cases = [
        {"provider": provider, "model": model, "call": call, "prompt": "hi"}
        for provider, model in routes
        for call in ("generateText", "streamText")
    ]
    results = vercel_ai(gateway, *cases, key=WRONG_KEY)
    for spec, result in zip(cases, results, strict=True):
        error = result.get("error")
        assert error is not None, (spec, result)
        assert error["name"] == "AI_APICallError" and error["statusCode"] == 401, (spec, error)
        assert "invalid API key" in error["message"], (spec, error)
        assert WRONG_KEY_ERRORS[spec["provider"]](json.loads(error["responseBody"])), (spec, error)
    assert upstream.requests == []
