"""The Anthropic Messages surface end to end: the official ``anthropic`` SDK against a real
``modelwire serve`` process, over a Chat upstream (``chat-model``) and a Responses upstream
(``resp-model``). Rendered messages and stream events are checked against Anthropic's spec."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, request
from .spec import assert_anthropic

ROUTES = ["chat-model", "resp-model"]
WEATHER = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=gateway.url, api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


def raw_messages(gateway: RunningGateway, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    return request(
        gateway,
        "POST",
        "/v1/messages",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
    )


@pytest.mark.parametrize("model", [*ROUTES, "claude-house-blend"])
def test_plain_message(
    upstream: FakeUpstream, client: anthropic.Anthropic, gateway: RunningGateway, model: str
) -> None:
    upstream.script(Reply.text("Bonjour.", usage=(20, 4), cached=5))
    message = client.messages.create(
        model=model,
        max_tokens=100,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hello in French."}],
    )
    assert message.content[0].type == "text" and message.content[0].text == "Bonjour."
    assert message.stop_reason == "end_turn" and message.role == "assistant"
    assert (
        message.usage.input_tokens,
        message.usage.cache_read_input_tokens,
        message.usage.output_tokens,
    ) == (15, 5, 4)  # Anthropic counts cache reads apart from input
    sent = upstream.last.body
    if model == "resp-model":
        assert sent["instructions"] == "Be brief." and sent["max_output_tokens"] == 100
    else:
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."} and sent["max_tokens"] == 100
    upstream.script(Reply.text("Bonjour."))
    status, _, body = raw_messages(
        gateway, {"model": model, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert status == 200
    assert_anthropic("Message", json.loads(body))


@pytest.mark.parametrize("model", ROUTES)
def test_streamed_message(upstream: FakeUpstream, client: anthropic.Anthropic, model: str) -> None:
    upstream.script(Reply.text("one two three", usage=(9, 3)))
    with client.messages.stream(
        model=model, max_tokens=50, messages=[{"role": "user", "content": "count"}]
    ) as s:
        texts = list(s.text_stream)
        final = s.get_final_message()
    assert "".join(texts) == "one two three" and len(texts) == 3
    assert final.content[0].text == "one two three"  # type: ignore[union-attr]
    assert (
        final.stop_reason == "end_turn" and final.usage.output_tokens == 3 and final.usage.input_tokens == 9
    )


def test_stream_events_follow_the_spec(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Paris"}')], text="Checking."))
    status, headers, body = raw_messages(
        gateway,
        {
            "model": "chat-model",
            "max_tokens": 50,
            "stream": True,
            "tools": [WEATHER],
            "messages": [{"role": "user", "content": "q"}],
        },
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    names = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        event_line, data_line = block.split("\n", 1)
        event = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {event['type']}"
        assert_anthropic("MessageStreamEvent", event)
        names.append(event["type"])
    # Keep-alive pings may come while the gateway waits for the upstream (SDKs skip them).
    names = [n for n in names if n != "ping"]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 2


@pytest.mark.parametrize("model", ROUTES)
def test_tools_parallel_calls_and_results(
    upstream: FakeUpstream, client: anthropic.Anthropic, model: str
) -> None:
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Oslo"}')])
    )
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris and Oslo?"}]
    first = client.messages.create(
        model=model,
        max_tokens=200,
        tools=[WEATHER],
        messages=messages,  # type: ignore[arg-type]
        tool_choice={"type": "any"},
    )
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Oslo"}]  # type: ignore[union-attr]
    assert first.stop_reason == "tool_use"
    sent = upstream.last.body
    assert sent["tool_choice"] == "required"
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": uses[0].id, "content": "sunny"},  # type: ignore[union-attr]
                {
                    "type": "tool_result",
                    "tool_use_id": uses[1].id,
                    "content": "station offline",
                    "is_error": True,
                },  # type: ignore[union-attr]
                {"type": "text", "text": "Summarise."},
            ],
        }
    )
    upstream.script(Reply.text("Paris is sunny; Oslo unknown."))
    client.messages.create(model=model, max_tokens=200, tools=[WEATHER], messages=messages)  # type: ignore[arg-type]
    sent = upstream.last.body
    if model == "resp-model":
        outputs = [i for i in sent["input"] if i.get("type") == "function_call_output"]
        assert [o["call_id"] for o in outputs] == [u.id for u in uses]  # type: ignore[union-attr]
        assert outputs[1]["output"].startswith("Error")
    else:
        tools = [m for m in sent["messages"] if m["role"] == "tool"]
        assert [t["tool_call_id"] for t in tools] == [u.id for u in uses]  # type: ignore[union-attr]
        assert tools[1]["content"].startswith("Error") and sent["messages"][-1]["content"] == "Summarise."


@pytest.mark.parametrize("model", ROUTES)
def test_streamed_tool_arguments(upstream: FakeUpstream, client: anthropic.Anthropic, model: str) -> None:
    upstream.script(Reply.tool_calls([("get_weather", '{"city": "Lima", "days": 3}')]))
    partials = []
    with client.messages.stream(
        model=model,
        max_tokens=100,
        tools=[WEATHER],  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "q"}],
    ) as stream:
        for event in stream:
            if event.type == "input_json":
                partials.append(event.partial_json)
        final = stream.get_final_message()
    assert len(partials) > 1 and json.loads("".join(partials)) == {"city": "Lima", "days": 3}
    assert final.content[-1].input == {"city": "Lima", "days": 3}  # type: ignore[union-attr]


@pytest.mark.parametrize("model", ROUTES)
def test_images_and_system_blocks(upstream: FakeUpstream, client: anthropic.Anthropic, model: str) -> None:
    png = base64.b64encode(b"\x89PNG fake").decode()
    client.messages.create(
        model=model,
        max_tokens=50,
        system=[{"type": "text", "text": "You see images.", "cache_control": {"type": "ephemeral"}}],
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}},
                    {"type": "text", "text": "What are these?"},
                ],
            }
        ],
    )
    sent = upstream.last.body
    if model == "resp-model":
        parts = sent["input"][0]["content"]
        assert parts[0]["image_url"] == f"data:image/png;base64,{png}"
        assert parts[1]["image_url"] == "https://example.com/cat.png"
        assert sent["instructions"] == "You see images."
    else:
        parts = sent["messages"][1]["content"]
        assert parts[0]["image_url"]["url"] == f"data:image/png;base64,{png}"


def test_thinking_maps_to_reasoning_effort_and_back(
    upstream: FakeUpstream, client: anthropic.Anthropic
) -> None:
    upstream.script(Reply.reasoning(["Considering the options."], text="42", encrypted="enc-think-1"))
    message = client.messages.create(
        model="reasoner",
        max_tokens=20000,
        thinking={"type": "enabled", "budget_tokens": 10000},
        messages=[{"role": "user", "content": "Meaning of life?"}],
    )
    sent = upstream.last.body
    assert sent["reasoning"] == {"effort": "medium", "summary": "auto"}
    assert sent["include"] == ["reasoning.encrypted_content"]
    thinking = message.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Considering the options."
    assert thinking.signature.startswith("mw1.")  # the upstream's encrypted reasoning rides in the signature
    assert message.content[1].text == "42"  # type: ignore[union-attr]


def test_errors_in_anthropic_shape(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key="sk-wrong", max_retries=0) as bad,
        pytest.raises(anthropic.AuthenticationError) as auth,
    ):
        bad.messages.create(model="chat-model", max_tokens=5, messages=[{"role": "user", "content": "q"}])
    assert auth.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    status, _, body = raw_messages(
        gateway, {"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}
    )
    doc = json.loads(body)
    assert status == 404 and doc["type"] == "error" and doc["error"]["type"] == "not_found_error"
    assert "chat-model" in doc["error"]["message"]  # lists what is available
    assert_anthropic("ErrorResponse", doc)
    status, _, body = raw_messages(
        gateway, {"model": "chat-model", "messages": [{"role": "user", "content": "q"}]}
    )
    assert status == 400 and "max_tokens" in json.loads(body)["error"]["message"]
    upstream.script(Reply.error(429, "slow down", headers={"retry-after": "120"}))
    status, _, body = raw_messages(
        gateway, {"model": "native-chat", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}
    )
    assert status == 429 and json.loads(body)["error"]["type"] == "rate_limit_error"


def test_mid_stream_failure_is_an_error_event(upstream: FakeUpstream, client: anthropic.Anthropic) -> None:
    upstream.script(Reply.stream_error("a b c d e f g", after=4))
    with (
        pytest.raises(anthropic.APIError),
        client.messages.stream(
            model="chat-model", max_tokens=50, messages=[{"role": "user", "content": "q"}]
        ) as stream,
    ):
        for _ in stream:
            pass


def test_pings_while_the_upstream_is_slow(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.script(Reply.delay(0.8, Reply.text("late")))
    status, _, body = raw_messages(
        gateway,
        {
            "model": "chat-model",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "q"}],
        },
    )
    text = body.decode()
    assert status == 200 and text.startswith("event: ping\n")
    assert text.index("event: ping") < text.index("event: message_start") and "event: message_stop" in text


def test_count_tokens(client: anthropic.Anthropic) -> None:
    small = client.messages.count_tokens(model="chat-model", messages=[{"role": "user", "content": "hi"}])
    big = client.messages.count_tokens(
        model="chat-model",
        tools=[WEATHER],  # type: ignore[list-item]
        system="You are a helpful assistant.",
        messages=[{"role": "user", "content": "hello world " * 100}],
    )
    assert 0 < small.input_tokens < 20 and big.input_tokens > small.input_tokens + 200


def test_models_in_anthropic_shape(client: anthropic.Anthropic) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"chat-model", "resp-model"} <= set(ids)


def test_anthropic_beta_and_query_are_accepted(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    status, _, _ = request(
        gateway,
        "POST",
        "/v1/messages?beta=true",
        json.dumps(
            {"model": "chat-model", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}
        ).encode(),
        {
            "anthropic-beta": "interleaved-thinking-2025-05-14,context-management-2025-06-27",
            "anthropic-version": "2023-06-01",
            "x-api-key": CLIENT_KEY,
            "Authorization": "",
        },
    )
    assert status == 200


# ------------------------------------------------------------------------------ a Claude Code session

TOOLS = [
    {
        "name": name,
        "description": f"The {name} tool.",
        "cache_control": {"type": "ephemeral"} if i == 11 else None,
        "input_schema": {"type": "object", "properties": {"arg": {"type": "string"}}, "required": ["arg"]},
    }
    for i, name in enumerate(
        [
            "Bash",
            "Glob",
            "Grep",
            "LS",
            "Read",
            "Edit",
            "MultiEdit",
            "Write",
            "NotebookEdit",
            "WebFetch",
            "TodoWrite",
            "Task",
        ]
    )
]
ROUNDS = [
    [("Glob", '{"arg": "**/*.py"}')],
    [("Read", '{"arg": "src/app.py"}'), ("Grep", '{"arg": "TODO"}')],
    [("Edit", '{"arg": "fix the bug"}')],
]


@pytest.mark.parametrize("model", ["chat-model", "reasoner"])
def test_claude_code_session(upstream: FakeUpstream, client: anthropic.Anthropic, model: str) -> None:
    tools = [{k: v for k, v in t.items() if v is not None} for t in TOOLS]
    system = [
        {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Work in /repo."},
    ]
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": "Fix the TODO."}]}
    ]
    reasoning = model == "reasoner"

    def turn() -> anthropic.types.Message:
        with client.messages.stream(
            model=model,
            max_tokens=32000,
            system=system,
            tools=tools,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 20000},
            messages=messages,
        ) as stream:
            return stream.get_final_message()

    for number, calls in enumerate(ROUNDS):
        upstream.script(
            Reply.tool_calls(
                calls, summary=[f"Step {number}."] if reasoning else [], encrypted=f"enc-{number}"
            )
        )
        final = turn()
        blocks = [b.model_dump() for b in final.content]
        expected_uses = [
            {"type": "tool_use", "name": name, "input": json.loads(args)} for name, args in calls
        ]
        uses = [{k: b[k] for k in ("type", "name", "input")} for b in blocks if b["type"] == "tool_use"]
        assert uses == expected_uses and final.stop_reason == "tool_use"
        if reasoning:
            assert blocks[0]["type"] == "thinking" and blocks[0]["thinking"] == f"Step {number}."
            assert blocks[0]["signature"].startswith("mw1.")
        else:
            assert all(b["type"] == "tool_use" for b in blocks)
        messages.append({"role": "assistant", "content": blocks})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": b["id"], "content": f"result of {b['name']}"}
                    for b in blocks
                    if b["type"] == "tool_use"
                ],
            }
        )
        sent = upstream.last.body
        if reasoning and number > 0:  # every earlier round's reasoning came back to the upstream
            replayed = [i["encrypted_content"] for i in sent["input"] if i.get("type") == "reasoning"]
            assert replayed == [f"enc-{n}" for n in range(number)]
    upstream.script(Reply.text("Fixed the TODO in src/app.py."))
    final = turn()
    assert [b.model_dump() for b in final.content] == [
        {"type": "text", "text": "Fixed the TODO in src/app.py.", "citations": None}
    ]
    sent = upstream.last.body
    results = (
        [i for i in sent["input"] if i.get("type") == "function_call_output"]
        if reasoning
        else [m for m in sent["messages"] if m["role"] == "tool"]
    )
    assert len(results) == 4
    assert len(sent["tools"]) == 12


def test_unsupported_sampling_is_dropped_and_named(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    status, headers, _ = raw_messages(
        gateway,
        {
            "model": "reasoner",
            "max_tokens": 50,
            "temperature": 0.5,
            "top_k": 40,
            "messages": [{"role": "user", "content": "q"}],
        },
    )
    assert status == 200
    assert headers["x-modelwire-dropped-params"] == "temperature, top_k"  # a reasoning model, no top_k field
    sent = upstream.last.body
    assert "temperature" not in sent and "top_k" not in sent
    status, headers, _ = raw_messages(
        gateway,
        {
            "model": "chat-model",
            "max_tokens": 50,
            "temperature": 0.5,
            "messages": [{"role": "user", "content": "q"}],
        },
    )
    assert "x-modelwire-dropped-params" not in headers and upstream.last.body["temperature"] == 0.5


def test_the_clients_model_name_is_echoed(upstream: FakeUpstream, client: anthropic.Anthropic) -> None:
    # Claude Code drops thinking blocks from turns whose model differs from the one it asks for.
    upstream.script(Reply.reasoning(["hm"], text="ok"), Reply.reasoning(["hm"], text="ok"))
    message = client.messages.create(
        model="claude-house-blend", max_tokens=50, messages=[{"role": "user", "content": "q"}]
    )
    assert message.model == "claude-house-blend"
    with client.messages.stream(
        model="claude-house-blend", max_tokens=50, messages=[{"role": "user", "content": "q"}]
    ) as stream:
        assert stream.get_final_message().model == "claude-house-blend"


def test_a_server_tool_choice_is_not_sent_where_the_tool_cannot_go(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    status, headers, _ = raw_messages(
        gateway,
        {
            "model": "resp-model",
            "max_tokens": 50,
            "messages": [{"role": "user", "content": "search it"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 8}],
            "tool_choice": {"type": "tool", "name": "web_search"},
        },
    )
    assert status == 200 and "tools.web_search" in headers["x-modelwire-dropped-params"]
    assert "tool_choice" not in upstream.last.body and "tools" not in upstream.last.body


def test_context_overflow_in_anthropic_words(upstream: FakeUpstream, client: anthropic.Anthropic) -> None:
    upstream.script(
        Reply.error(
            400, "Your input exceeds the context window of this model.", code="context_length_exceeded"
        )
    )
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(
            model="chat-model", max_tokens=50, messages=[{"role": "user", "content": "q " * 300}]
        )
    import re

    message = info.value.body["error"]["message"]  # type: ignore[index]
    found = re.search(r"prompt is too long[^0-9]*(\d+)\s*tokens?\s*>\s*(\d+)", message)
    assert found is not None and int(found.group(1)) > int(found.group(2)) > 0, message
