"""Property tests: each dialect's two directions are inverses on the neutral model.

For requests, the driver side (encode) and the surface side (decode) of one dialect must give
back the conversation they were given; for responses, the surface side (render) and the driver
side (decode); for streams, the renderer's bytes decoded by the same dialect's stream decoder.
Strategies generate each dialect's canonical form (the shape its decoder produces).
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelwire.dialects import openai_chat, openai_responses
from modelwire.dialects.sse import SSEParser
from modelwire.dialects.stream import ResponseAccumulator, events_from_response
from modelwire.types import (
    Image,
    Message,
    Part,
    Reasoning,
    Refusal,
    Request,
    Response,
    ResponseFormat,
    Text,
    Tool,
    ToolCall,
    ToolName,
    ToolResult,
    Usage,
)

from .spec import assert_openai

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
ids = st.from_regex(r"[a-z0-9]{4,12}", fullmatch=True)
args = st.dictionaries(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.integers(-(2**53), 2**53) | words, max_size=3
).map(lambda d: orjson.dumps(d).decode())


def images(details: list[str | None]) -> st.SearchStrategy[Image]:
    return st.one_of(
        st.builds(Image, url=st.just("https://example.com/cat.png"), detail=st.sampled_from(details)),
        st.builds(
            Image,
            data=st.binary(min_size=1, max_size=24),
            media_type=st.just("image/png"),
            detail=st.sampled_from(details),
        ),
    )


chat_images = images([None, "low", "high"])
responses_images = images(["auto", "low", "high"])  # Responses always states the detail
tools = st.builds(
    Tool,
    name=st.from_regex(r"[a-z_]{1,16}", fullmatch=True),
    description=st.none() | words,
    parameters=st.just({"type": "object", "properties": {"q": {"type": "string"}}}),
    strict=st.none() | st.booleans(),
)
usages = st.builds(
    Usage,
    input_tokens=st.integers(0, 10**6),
    cached_input_tokens=st.just(0),
    output_tokens=st.integers(0, 10**5),
    reasoning_tokens=st.just(0),
)


def call_ids(draw: Any) -> str:
    return "call_" + draw(ids)


@st.composite
def chat_conversations(draw: Any) -> list[Message]:
    """Canonical Chat transcripts: one tool result per tool message, joined assistant text."""
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(
            Message(role=draw(st.sampled_from(["system", "developer"])), content=[Text(text=draw(words))])
        )
    for _ in range(draw(st.integers(1, 3))):
        content: list[Part] = [Text(text=draw(words))]
        if draw(st.booleans()):
            content = [Text(text=draw(words)), draw(chat_images)]
        messages.append(Message(role="user", content=content))
        calls = [
            ToolCall(id=call_ids(draw), name=draw(ids), arguments=draw(args))
            for _ in range(draw(st.integers(0, 2)))
        ]
        text = draw(st.none() | words)
        reply: list[Part] = ([Text(text=text)] if text else []) + list(calls)
        messages.append(Message(role="assistant", content=reply or [Text(text="ok")]))
        messages += [
            Message(role="tool", content=[ToolResult(call_id=c.id, content=[Text(text=draw(words))])])
            for c in calls
        ]
    return messages


@st.composite
def responses_conversations(draw: Any) -> list[Message]:
    """Canonical Responses transcripts: one developer instruction first, results grouped."""
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(Message(role="developer", content=[Text(text=draw(words))]))
    for _ in range(draw(st.integers(1, 3))):
        content: list[Part] = [Text(text=draw(words))]
        if draw(st.booleans()):
            content = [Text(text=draw(words)), draw(responses_images)]
        messages.append(Message(role="user", content=content))
        reply: list[Part] = []
        if draw(st.booleans()):
            reply.append(
                Reasoning(
                    id="rs_" + draw(ids),
                    summary=draw(st.lists(words, max_size=2)),
                    data=draw(words),
                    dialect="openai_responses",
                )
            )
        calls = [
            ToolCall(id=call_ids(draw), name=draw(ids), arguments=draw(args))
            for _ in range(draw(st.integers(0, 2)))
        ]
        reply += [Text(text=draw(words))] if not calls or draw(st.booleans()) else []
        reply += calls
        messages.append(Message(role="assistant", content=reply))
        if calls:
            results: list[Part] = [ToolResult(call_id=c.id, content=[Text(text=draw(words))]) for c in calls]
            messages.append(Message(role="tool", content=results))
    return messages


@st.composite
def settings_for(draw: Any, req: Request) -> Request:
    req.tools = draw(st.lists(tools, max_size=2, unique_by=lambda t: t.name))
    if req.tools:
        req.tool_choice = draw(st.sampled_from(["auto", "none", "required", ToolName(req.tools[0].name)]))
        req.parallel_tool_calls = draw(st.none() | st.booleans())
    req.max_output_tokens = draw(st.none() | st.integers(16, 100_000))
    req.temperature = draw(st.none() | st.floats(0, 2).map(lambda f: round(f, 2)))
    req.top_p = draw(st.none() | st.floats(0, 1).map(lambda f: round(f, 2)))
    req.reasoning_effort = draw(st.none() | st.sampled_from(["low", "medium", "high"]))
    req.metadata = draw(st.none() | st.just({"team": "a"}))
    req.user = draw(st.none() | ids)
    req.response_format = draw(
        st.none()
        | st.just(ResponseFormat(type="json_object"))
        | st.just(ResponseFormat(type="json_schema", name="out", schema={"type": "object"}, strict=True))
    )
    return req


def normal(req: Request) -> Request:
    req.dialect = None
    req.extra = {}
    return req


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_chat_request_round_trip(data: st.DataObject) -> None:
    req = data.draw(settings_for(Request(model="gpt-4.1", messages=data.draw(chat_conversations()))))
    req.stop = data.draw(st.none() | st.lists(words, min_size=1, max_size=2))
    req.seed = data.draw(st.none() | st.integers(0, 2**31))
    body = openai_chat.encode_request(req)
    assert_openai("CreateChatCompletionRequest", body)
    assert normal(openai_chat.decode_request(orjson.loads(orjson.dumps(body)))) == req


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_responses_request_round_trip(data: st.DataObject) -> None:
    req = data.draw(settings_for(Request(model="gpt-5.1", messages=data.draw(responses_conversations()))))
    req.reasoning_summary = data.draw(st.none() | st.just("auto"))
    req.store = data.draw(st.none() | st.booleans())
    body = openai_responses.encode_request(req)
    assert_openai("CreateResponse", body)
    for tool in req.tools:
        tool.strict = bool(tool.strict)  # Responses always states strict
    assert normal(openai_responses.decode_request(orjson.loads(orjson.dumps(body)))) == req


@st.composite
def chat_responses(draw: Any) -> Response:
    parts: list[Part] = []
    if draw(st.booleans()):
        parts.append(Reasoning(text=draw(words)))
    if draw(st.booleans()):
        parts.append(Text(text=draw(words)))
    calls = [
        ToolCall(id=call_ids(draw), name=draw(ids), arguments=draw(args))
        for _ in range(draw(st.integers(0, 2)))
    ]
    parts += calls
    stop = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    return Response(
        id="chatcmpl-" + draw(ids),
        model="gpt-4.1",
        content=parts,
        stop_reason=stop,
        usage=draw(usages),
        created=1_700_000_000,
    )


@st.composite
def responses_responses(draw: Any) -> Response:
    parts: list[Part] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["text", "refusal", "call", "reasoning"]))
        if kind == "text":
            parts.append(Text(text=draw(words)))
        elif kind == "refusal":
            parts.append(Refusal(text=draw(words)))
        elif kind == "call":
            parts.append(
                ToolCall(id=call_ids(draw), name=draw(ids), arguments=draw(args), item_id="fc_" + draw(ids))
            )
        else:
            parts.append(
                Reasoning(
                    id="rs_" + draw(ids),
                    summary=draw(st.lists(words, max_size=2)),
                    data=draw(st.none() | words),
                    text=draw(st.none() | words),
                    dialect="openai_responses",
                )
            )
    has_calls = any(isinstance(p, ToolCall) for p in parts)
    stop = "tool_calls" if has_calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    return Response(
        id="resp_" + draw(ids),
        model="gpt-5.1",
        content=parts,
        stop_reason=stop,
        usage=draw(usages),
        created=1_700_000_000,
        service_tier="default",
    )


@given(chat_responses())
def test_chat_response_round_trip(resp: Response) -> None:
    body = openai_chat.render_response(resp)
    assert_openai("CreateChatCompletionResponse", body)
    if resp.stop_reason == "length" and resp.tool_calls:
        return
    assert openai_chat.decode_response(orjson.loads(orjson.dumps(body))) == resp


@given(responses_responses())
def test_responses_response_round_trip(resp: Response) -> None:
    req = Request(model="gpt-5.1")
    body = openai_responses.render_response(resp, req)
    assert_openai("Response", body)
    back = openai_responses.decode_response(orjson.loads(orjson.dumps(body)))
    back.id = resp.id  # ids are the renderer's to mint
    assert back == resp


def replay_stream(payload: bytes, decoder: Any) -> Response:
    parser = SSEParser()
    acc = ResponseAccumulator()
    for sse in parser.feed(payload) + parser.flush():
        for event in decoder.feed(sse.data):
            acc.feed(event)
    for event in decoder.end():
        acc.feed(event)
    return acc.result()


def without_ids(resp: Response) -> Response:
    resp.id = ""
    resp.created = 0
    resp.model = ""
    return resp


@given(chat_responses())
def test_chat_stream_round_trip(resp: Response) -> None:
    renderer = openai_chat.StreamRenderer(include_usage=True)
    payload = b"".join(renderer.feed(e) for e in events_from_response(resp))
    for line in payload.split(b"\n\n"):
        if line.startswith(b"data: {"):
            assert_openai("CreateChatCompletionStreamResponse", orjson.loads(line[6:]))
    back = replay_stream(payload, openai_chat.StreamDecoder())
    expected = without_ids(
        Response(id="", model="", content=list(resp.content), stop_reason=resp.stop_reason, usage=resp.usage)
    )
    assert without_ids(back) == expected


@settings(max_examples=150)
@given(responses_responses())
def test_responses_stream_round_trip(resp: Response) -> None:
    renderer = openai_responses.StreamRenderer(Request(model="gpt-5.1"))
    payload = b"".join(renderer.feed(e) for e in events_from_response(resp))
    sequence = []
    for block in payload.split(b"\n\n"):
        if block:
            event = orjson.loads(block.split(b"data: ", 1)[1])
            assert_openai("ResponseStreamEvent", event)
            sequence.append(event["sequence_number"])
    assert sequence == list(range(len(sequence)))
    back = replay_stream(payload, openai_responses.StreamDecoder())
    assert without_ids(back) == without_ids(
        Response(id="", model="", content=list(resp.content), stop_reason=resp.stop_reason, usage=resp.usage)
    )
