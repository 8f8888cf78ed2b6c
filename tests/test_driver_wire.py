"""Driver behaviours 1 and 2: two wire APIs with one behaviour, and streaming.

Every request the driver sends is validated by the fake upstream against the official
``CreateResponse`` / ``CreateChatCompletionRequest`` schemas (the ``upstream`` fixture fails a test
on any violation), and every answer the fake gives validates against the response schemas.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import pytest

import modelwire as mw
from modelwire.types import BlockDelta, BlockStart, BlockStop, Finish, Reasoning, ToolCall, UsageUpdate

from .driver_fixtures import collect, driver
from .fake_upstream import FakeUpstream, Reply

APIS = ["responses", "chat"]
WEATHER = mw.Tool(
    name="get_weather",
    description="Weather for a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


@pytest.fixture
async def clients(upstream: FakeUpstream) -> AsyncIterator[dict[str, mw.OpenAI]]:
    made = {api: driver(upstream, api=api) for api in APIS}
    yield made
    for client in made.values():
        await client.aclose()


@pytest.mark.parametrize("api", APIS)
async def test_text_answer(upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str) -> None:
    upstream.script(Reply.text("Paris is the capital.", usage=(12, 6), cached=4))
    reply = await clients[api].complete(model="gpt-4.1", messages=[mw.user("Capital of France?")])
    assert reply.text == "Paris is the capital."
    assert reply.stop_reason == "stop"
    assert (reply.usage.input_tokens, reply.usage.cached_input_tokens, reply.usage.output_tokens) == (
        12,
        4,
        6,
    )
    assert reply.usage.cost == pytest.approx((8 * 2.0 + 4 * 0.5 + 6 * 8.0) / 1e6)
    assert upstream.last.path == ("/v1/responses" if api == "responses" else "/v1/chat/completions")


async def test_both_apis_give_the_same_neutral_result(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI]
) -> None:
    results = []
    for api in APIS:
        upstream.script(
            Reply.tool_calls([("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Oslo"}')])
        )
        results.append(
            await clients[api].complete(model="gpt-4.1", messages=[mw.user("weather?")], tools=[WEATHER])
        )
    a, b = results
    assert [(c.name, c.arguments) for c in a.tool_calls] == [(c.name, c.arguments) for c in b.tool_calls]
    assert a.stop_reason == b.stop_reason == "tool_calls"
    assert a.usage.input_tokens == b.usage.input_tokens and a.usage.output_tokens == b.usage.output_tokens


@pytest.mark.parametrize("api", APIS)
async def test_images_by_url_and_base64(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str
) -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    message = mw.user(
        "what is this?",
        mw.Image(url="https://example.com/cat.png", detail="low"),
        mw.Image(data=png, media_type="image/png"),
    )
    await clients[api].complete(model="gpt-4.1", messages=[message])
    body = upstream.last.body
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    if api == "responses":
        parts = body["input"][0]["content"]
        assert parts[1] == {
            "type": "input_image",
            "image_url": "https://example.com/cat.png",
            "detail": "low",
        }
        assert parts[2]["image_url"] == data_url
    else:
        parts = body["messages"][0]["content"]
        assert parts[1] == {
            "type": "image_url",
            "image_url": {"url": "https://example.com/cat.png", "detail": "low"},
        }
        assert parts[2]["image_url"]["url"] == data_url


@pytest.mark.parametrize("api", APIS)
async def test_tool_loop_with_parallel_calls(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str
) -> None:
    client = clients[api]
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city":"Paris"}'), ("get_weather", '{"city":"Oslo"}')])
    )
    messages = [mw.user("Weather in Paris and Oslo?")]
    first = await client.complete(
        model="gpt-4.1", messages=messages, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=True
    )
    assert [json.loads(c.arguments)["city"] for c in first.tool_calls] == ["Paris", "Oslo"]
    messages.append(first.message())
    messages += [
        mw.tool_result(c.id, f"sunny in {json.loads(c.arguments)['city']}") for c in first.tool_calls
    ]
    upstream.script(Reply.text("Both sunny."))
    second = await client.complete(
        model="gpt-4.1", messages=messages, tools=[WEATHER], tool_choice=mw.ToolName("get_weather")
    )
    assert second.text == "Both sunny."
    body = upstream.last.body
    ids = [c.id for c in first.tool_calls]
    if api == "responses":
        outputs = [i for i in body["input"] if i.get("type") == "function_call_output"]
        calls = [i for i in body["input"] if i.get("type") == "function_call"]
        assert [o["call_id"] for o in outputs] == ids == [c["call_id"] for c in calls]
        assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
        assert body["tools"][0]["name"] == "get_weather" and body["tools"][0]["strict"] is False
    else:
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        assert [t["tool_call_id"] for t in tools] == ids
        assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
        assert body["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("api", APIS)
async def test_structured_output(upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    upstream.script(Reply.text('{"answer": "42"}'))
    fmt = mw.ResponseFormat(type="json_schema", name="result", schema=schema, strict=True)
    reply = await clients[api].complete(model="gpt-4.1", messages=[mw.user("q")], response_format=fmt)
    assert json.loads(reply.text) == {"answer": "42"}
    body = upstream.last.body
    strict_schema = {**schema, "additionalProperties": False}
    if api == "responses":
        assert body["text"]["format"] == {
            "type": "json_schema",
            "name": "result",
            "schema": strict_schema,
            "strict": True,
        }
    else:
        assert body["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "result", "schema": strict_schema, "strict": True},
        }


@pytest.mark.parametrize("api", APIS)
async def test_settings_are_sent_only_when_set(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str
) -> None:
    await clients[api].complete(model="gpt-4.1", messages=[mw.user("q")])
    bare = upstream.last.body
    assert not {"temperature", "top_p", "max_output_tokens", "max_completion_tokens", "metadata"} & set(bare)
    await clients[api].complete(
        model="gpt-4.1",
        messages=[mw.user("q")],
        temperature=0.3,
        top_p=0.9,
        max_output_tokens=77,
        metadata={"run": "7"},
        user="user-42",
    )
    body = upstream.last.body
    assert (body["temperature"], body["top_p"], body["metadata"]) == (0.3, 0.9, {"run": "7"})
    assert body["safety_identifier"] == "user-42"
    assert body["max_output_tokens" if api == "responses" else "max_completion_tokens"] == 77


@pytest.mark.parametrize("api", APIS)
async def test_reasoning_settings(upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str) -> None:
    await clients[api].complete(
        model="gpt-5.1",
        messages=[mw.user("q")],
        reasoning_effort="high",
        reasoning_summary="auto",
        temperature=0.5,
    )
    body = upstream.last.body
    assert "temperature" not in body  # gpt-5.1 is a reasoning model: sampling is dropped
    if api == "responses":
        assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    else:
        assert body["reasoning_effort"] == "high"


@pytest.mark.parametrize("api", APIS)
async def test_stop_sequences(upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str) -> None:
    upstream.script(Reply.text("one two STOP three"))
    reply = await clients[api].complete(model="gpt-4.1", messages=[mw.user("count")], stop=["STOP"])
    if api == "chat":
        assert upstream.last.body["stop"] == ["STOP"]  # native; the fake does not apply it
        assert reply.text == "one two STOP three"
    else:
        assert "stop" not in upstream.last.body  # Responses has none: applied by the driver
        assert reply.text == "one two " and reply.stop_sequence == "STOP" and reply.stop_reason == "stop"


async def test_stop_sequences_cut_a_stream(upstream: FakeUpstream, clients: dict[str, mw.OpenAI]) -> None:
    upstream.script(Reply.text("alpha beta gamma delta", chunks=["alp", "ha be", "ta gam", "ma delta"]))
    events = await collect(
        clients["responses"].stream(model="gpt-4.1", messages=[mw.user("q")], stop=["a gam"])
    )
    text = "".join(e.text for e in events if isinstance(e, BlockDelta))
    assert text == "alpha bet"
    finish = events[-1]
    assert isinstance(finish, Finish) and finish.stop_reason == "stop" and finish.stop_sequence == "a gam"


# ------------------------------------------------------------------------------------------ streaming


@pytest.mark.parametrize("api", APIS)
async def test_stream_text_and_usage_at_the_end(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str
) -> None:
    upstream.script(Reply.text("Hello there friend", usage=(9, 3)))
    events = await collect(clients[api].stream(model="gpt-4.1", messages=[mw.user("hi")]))
    deltas = [e.text for e in events if isinstance(e, BlockDelta)]
    assert len(deltas) == 3 and "".join(deltas) == "Hello there friend"
    assert isinstance(events[-2], UsageUpdate) and isinstance(events[-1], Finish)
    assert events[-1].usage is not None and events[-1].usage.output_tokens == 3
    assert events[-1].usage.cost is not None
    if api == "chat":
        assert upstream.last.body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("api", APIS)
async def test_stream_tool_arguments_incrementally(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str
) -> None:
    upstream.script(
        Reply.tool_calls(
            [("get_weather", '{"city": "Paris", "unit": "celsius"}'), ("get_weather", '{"city": "Oslo"}')]
        )
    )
    events = await collect(clients[api].stream(model="gpt-4.1", messages=[mw.user("q")], tools=[WEATHER]))
    starts = [e for e in events if isinstance(e, BlockStart) and isinstance(e.part, ToolCall)]
    assert [s.part.name for s in starts] == ["get_weather", "get_weather"]  # type: ignore[union-attr]
    first = starts[0].index
    fragments = [e.text for e in events if isinstance(e, BlockDelta) and e.index == first]
    assert len(fragments) > 1 and "".join(fragments) == '{"city": "Paris", "unit": "celsius"}'
    stops = [e.part for e in events if isinstance(e, BlockStop) and isinstance(e.part, ToolCall)]
    assert [s.arguments for s in stops] == ['{"city": "Paris", "unit": "celsius"}', '{"city": "Oslo"}']
    assert isinstance(events[-1], Finish) and events[-1].stop_reason == "tool_calls"


async def test_stream_reasoning_summaries_incrementally(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI]
) -> None:
    upstream.script(Reply.reasoning(["First I think about it.", "Then I answer."], text="42"))
    events = await collect(
        clients["responses"].stream(
            model="gpt-5.1", messages=[mw.user("q")], reasoning_effort="low", reasoning_summary="auto"
        )
    )
    reasoning_start = next(e for e in events if isinstance(e, BlockStart) and isinstance(e.part, Reasoning))
    deltas = [e for e in events if isinstance(e, BlockDelta) and e.index == reasoning_start.index]
    assert len(deltas) > 2 and {d.summary_index for d in deltas} == {0, 1}
    done = next(e.part for e in events if isinstance(e, BlockStop) and isinstance(e.part, Reasoning))
    assert done.summary == ["First I think about it.", "Then I answer."]
    assert done.data and done.id and done.id.startswith("rs_")


@pytest.mark.parametrize("api", APIS)
async def test_error_mid_stream_raises_a_typed_error(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str
) -> None:
    upstream.script(Reply.stream_error("a b c d e f", after=6, message="server exploded"))
    seen: list[str] = []
    with pytest.raises(mw.ModelwireError, match="server exploded"):
        async for event in clients[api].stream(model="gpt-4.1", messages=[mw.user("q")]):
            if isinstance(event, BlockDelta):
                seen.append(event.text)
    assert seen  # part of the answer arrived before the failure
    assert len(upstream.requests) == 1  # never retried once bytes reached the caller


@pytest.mark.parametrize("api", APIS)
async def test_cut_stream_raises_a_protocol_error(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], api: str
) -> None:
    upstream.script(Reply.truncated("a b c d e f g", after=3))
    with pytest.raises(mw.ProtocolError):
        await collect(clients[api].stream(model="gpt-4.1", messages=[mw.user("q")]))


async def test_unknown_stream_events_are_skipped(
    upstream: FakeUpstream, clients: dict[str, mw.OpenAI], caplog: pytest.LogCaptureFixture
) -> None:
    def event(payload: dict[str, object]) -> bytes:
        return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n".encode()

    response = {
        "id": "resp_x",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "gpt-4.1",
        "output": [],
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
    }
    body = (
        event(
            {
                "type": "response.created",
                "sequence_number": 0,
                "response": {**response, "status": "in_progress"},
            }
        )
        + event({"type": "response.future_feature.delta", "sequence_number": 1, "delta": "??"})
        + event(
            {
                "type": "response.output_text.delta",
                "sequence_number": 2,
                "output_index": 0,
                "content_index": 0,
                "item_id": "msg_1",
                "delta": "ok",
            }
        )
        + event({"type": "response.completed", "sequence_number": 3, "response": response})
    )
    upstream.script(Reply.raw(200, body, {"content-type": "text/event-stream"}))
    caplog.set_level("DEBUG", logger="modelwire.dialects.responses")
    events = await collect(clients["responses"].stream(model="gpt-4.1", messages=[mw.user("q")]))
    assert "".join(e.text for e in events if isinstance(e, BlockDelta)) == "ok"
    assert isinstance(events[-1], Finish)
    assert "response.future_feature.delta" in caplog.text
