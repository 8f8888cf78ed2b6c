"""The Gemini surface end to end: the official ``google-genai`` SDK against a real
``modelwire serve`` process, over a Chat upstream and a Responses upstream."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, request

ROUTES = ["chat-model", "resp-model"]
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Weather for a city",
    parameters_json_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
)


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[genai.Client]:
    sdk = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=gateway.url))
    yield sdk
    sdk.close()


def post(gateway: RunningGateway, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return request(
        gateway,
        "POST",
        path,
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "x-goog-api-key": CLIENT_KEY, "Authorization": ""},
    )


@pytest.mark.parametrize("model", ROUTES)
def test_generate_content(upstream: FakeUpstream, client: genai.Client, model: str) -> None:
    upstream.script(Reply.text("Ciao!", usage=(11, 2)))
    response = client.models.generate_content(
        model=model,
        contents="Say hi in Italian.",
        config=types.GenerateContentConfig(
            system_instruction="Be brief.", max_output_tokens=64, temperature=0.3
        ),
    )
    assert response.text == "Ciao!"
    assert response.candidates and response.candidates[0].finish_reason == types.FinishReason.STOP
    assert response.usage_metadata is not None and response.usage_metadata.prompt_token_count == 11
    sent = upstream.last.body
    if model == "resp-model":
        assert sent["instructions"] == "Be brief." and sent["max_output_tokens"] == 64
        assert sent["temperature"] == 0.3
    else:
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 64


@pytest.mark.parametrize("model", ROUTES)
def test_generate_content_stream(upstream: FakeUpstream, client: genai.Client, model: str) -> None:
    upstream.script(Reply.text("uno due tre", usage=(6, 3)))
    chunks = list(client.models.generate_content_stream(model=model, contents="count"))
    assert "".join(c.text or "" for c in chunks) == "uno due tre" and len(chunks) >= 3
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == types.FinishReason.STOP
    assert last.usage_metadata is not None and last.usage_metadata.candidates_token_count == 3


def test_json_array_stream_without_alt_sse(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.text("a b c"))
    status, headers, body = post(
        gateway,
        "/v1beta/models/chat-model:streamGenerateContent",
        {"contents": [{"role": "user", "parts": [{"text": "q"}]}]},
    )
    assert status == 200 and headers["content-type"].startswith("application/json")
    chunks = json.loads(body)
    assert isinstance(chunks, list) and len(chunks) >= 3
    assert (
        "".join(p.get("text", "") for c in chunks for p in c["candidates"][0]["content"]["parts"]) == "a b c"
    )
    for chunk in chunks:
        types.GenerateContentResponse.model_validate(chunk)


@pytest.mark.parametrize("model", ROUTES)
def test_function_calling_loop(upstream: FakeUpstream, client: genai.Client, model: str) -> None:
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city":"Rome"}'), ("get_weather", '{"city":"Oslo"}')])
    )
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        tool_config=types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="ANY")),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    history: list[types.Content] = [
        types.Content(role="user", parts=[types.Part(text="Weather in Rome, Oslo?")])
    ]
    first = client.models.generate_content(model=model, contents=history, config=config)
    calls = first.function_calls or []
    assert [(c.name, c.args) for c in calls] == [
        ("get_weather", {"city": "Rome"}),
        ("get_weather", {"city": "Oslo"}),
    ]
    sent = upstream.last.body
    assert sent["tool_choice"] == "required"
    assert first.candidates and first.candidates[0].content
    history.append(first.candidates[0].content)
    history.append(
        types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(
                        id=c.id, name=c.name, response={"result": f"sunny in {c.args['city']}"}
                    )
                )  # type: ignore[index]
                for c in calls
            ],
        )
    )
    upstream.script(Reply.text("Both sunny."))
    second = client.models.generate_content(model=model, contents=history, config=config)
    assert second.text == "Both sunny."
    sent = upstream.last.body
    if model == "resp-model":
        outputs = [i for i in sent["input"] if i.get("type") == "function_call_output"]
        calls_sent = [i for i in sent["input"] if i.get("type") == "function_call"]
        assert [o["call_id"] for o in outputs] == [c["call_id"] for c in calls_sent]
        assert outputs[0]["output"] == "sunny in Rome"
    else:
        tools = [m for m in sent["messages"] if m["role"] == "tool"]
        assert [t["content"] for t in tools] == ["sunny in Rome", "sunny in Oslo"]


def test_streamed_function_call(upstream: FakeUpstream, client: genai.Client) -> None:
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Lima"}')]))
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    chunks = list(client.models.generate_content_stream(model="chat-model", contents="q", config=config))
    calls = [c for chunk in chunks for c in chunk.function_calls or []]
    assert [(c.name, c.args) for c in calls] == [("get_weather", {"city": "Lima"})]


def test_thinking_and_signatures_survive_a_tool_loop(upstream: FakeUpstream, client: genai.Client) -> None:
    config = types.GenerateContentConfig(
        tools=[types.Tool(function_declarations=[WEATHER])],
        thinking_config=types.ThinkingConfig(thinking_budget=8192, include_thoughts=True),
        automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
    )
    upstream.script(
        Reply.tool_calls(
            [("get_weather", '{"city":"Paris"}')], summary=["Need the weather."], encrypted="enc-gem-1"
        )
    )
    history: list[types.Content] = [types.Content(role="user", parts=[types.Part(text="Weather in Paris?")])]
    first = client.models.generate_content(model="reasoner", contents=history, config=config)
    sent = upstream.last.body
    assert sent["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert first.candidates and first.candidates[0].content and first.candidates[0].content.parts
    parts = first.candidates[0].content.parts
    assert any(p.thought and p.text == "Need the weather." for p in parts)
    assert any(p.function_call and p.thought_signature for p in parts)
    history.append(first.candidates[0].content)
    call = (first.function_calls or [])[0]
    history.append(
        types.Content(
            role="user",
            parts=[
                types.Part(
                    function_response=types.FunctionResponse(
                        id=call.id, name=call.name, response={"result": "rainy"}
                    )
                )
            ],
        )
    )
    upstream.script(Reply.text("Rainy."))
    client.models.generate_content(model="reasoner", contents=history, config=config)
    replayed = [i for i in upstream.last.body["input"] if i.get("type") == "reasoning"]
    assert [r["encrypted_content"] for r in replayed] == ["enc-gem-1"]


def test_gemini_cli_shaped_request(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "List the files."}]}],
        "systemInstruction": {"parts": [{"text": "You are Gemini CLI."}]},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "list_directory",
                        "description": "ls",
                        "parametersJsonSchema": {
                            "type": "object",
                            "properties": {"path": {"type": "string"}},
                        },
                    }
                ]
            }
        ],
        "generationConfig": {"temperature": 0, "topP": 1, "thinkingConfig": {"includeThoughts": True}},
    }
    upstream.script(Reply.tool_calls([("list_directory", '{"path": "."}')]))
    status, _, raw = post(gateway, "/v1beta/models/chat-model:streamGenerateContent?alt=sse", body)
    assert status == 200
    chunks = [json.loads(line[6:]) for line in raw.decode().split("\r\n") if line.startswith("data: ")]
    calls = [
        p["functionCall"]
        for c in chunks
        for p in c["candidates"][0]["content"]["parts"]
        if "functionCall" in p
    ]
    assert calls and calls[0]["name"] == "list_directory" and calls[0]["args"] == {"path": "."}
    sent = upstream.last.body
    assert sent["tools"][0]["function"]["parameters"]["properties"] == {"path": {"type": "string"}}


def test_count_tokens_and_models(client: genai.Client) -> None:
    small = client.models.count_tokens(model="chat-model", contents="hi")
    big = client.models.count_tokens(model="chat-model", contents="hello world " * 200)
    assert small.total_tokens is not None and big.total_tokens is not None
    assert 0 < small.total_tokens < big.total_tokens
    names = [m.name for m in client.models.list()]
    assert "models/chat-model" in names and "models/resp-model" in names
    assert client.models.get(model="chat-model").name == "models/chat-model"


def test_key_in_query(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    status, _, _ = request(
        gateway,
        "POST",
        f"/v1beta/models/chat-model:generateContent?key={CLIENT_KEY}",
        json.dumps({"contents": [{"parts": [{"text": "q"}]}]}).encode(),
        {"Content-Type": "application/json", "Authorization": ""},
    )
    assert status == 200


def test_errors_in_google_shape(gateway: RunningGateway) -> None:
    bad = genai.Client(api_key="wrong-key", http_options=types.HttpOptions(base_url=gateway.url))
    with pytest.raises(errors.ClientError) as info:
        bad.models.generate_content(model="chat-model", contents="q")
    bad.close()
    assert info.value.code == 401 and info.value.status == "UNAUTHENTICATED"
    status, _, raw = post(
        gateway, "/v1beta/models/no-such-model:generateContent", {"contents": [{"parts": [{"text": "q"}]}]}
    )
    doc = json.loads(raw)
    assert status == 404 and doc["error"]["status"] == "NOT_FOUND" and "chat-model" in doc["error"]["message"]
    status, _, raw = post(gateway, "/v1beta/models/chat-model:generateContent", {"contents": "not a list"})
    assert status == 400 and json.loads(raw)["error"]["status"] == "INVALID_ARGUMENT"


def test_mid_stream_failure(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.stream_error("a b c d e f", after=4))
    status, _, raw = post(
        gateway,
        "/v1beta/models/chat-model:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "q"}]}]},
    )
    chunks = [json.loads(line[6:]) for line in raw.decode().split("\r\n") if line.startswith("data: ")]
    assert status == 200 and "error" in chunks[-1]
    assert not any(c.get("candidates", [{}])[0].get("finishReason") == "STOP" for c in chunks[:-1])


def test_upper_case_schema_types_are_made_standard(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    # Gemini CLI's model router sends Google-style types in responseJsonSchema; OpenAI refuses them.
    schema = {"type": "OBJECT", "properties": {"score": {"type": "INTEGER"}, "why": {"type": "STRING"}}}
    status, _, _ = post(
        gateway,
        "/v1beta/models/chat-model:generateContent",
        {
            "contents": [{"role": "user", "parts": [{"text": "rate it"}]}],
            "generationConfig": {"responseMimeType": "application/json", "responseJsonSchema": schema},
        },
    )
    assert status == 200
    sent = upstream.last.body["response_format"]["json_schema"]["schema"]
    assert sent == {"type": "object", "properties": {"score": {"type": "integer"}, "why": {"type": "string"}}}
