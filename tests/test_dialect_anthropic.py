"""Anthropic Messages, both ways: round trips, the official spec, the official SDK as a client.

Property tests mirror ``test_roundtrip.py``: the driver's encoder and the surface's decoder are
inverses on canonical neutral requests (the shape the decoder produces), the surface's renderer and
the driver's decoder on canonical responses, and the stream renderer and stream decoder likewise.
Everything rendered is checked against Anthropic's spec, and the official ``anthropic`` SDK reads
our streams.
"""

from __future__ import annotations

from typing import Any

import anthropic
import httpx2
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelwire.dialects import anthropic_messages as am
from modelwire.dialects import openai_chat, openai_responses
from modelwire.dialects.sse import SSEParser
from modelwire.dialects.stream import ResponseAccumulator, events_from_response
from modelwire.errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelwireError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    TimeoutError,
    UpstreamUnavailableError,
)
from modelwire.types import (
    BlockDelta,
    BlockStart,
    BlockStop,
    Dialect,
    File,
    Finish,
    Image,
    Message,
    Part,
    Reasoning,
    Refusal,
    Request,
    Response,
    ResponseFormat,
    Start,
    StreamError,
    StreamEvent,
    Text,
    Tool,
    ToolCall,
    ToolName,
    ToolResult,
    Usage,
)

from .spec import assert_anthropic

DIALECT: Dialect = "anthropic_messages"
EPHEMERAL = {"type": "ephemeral"}
SDK_MODEL = "modelwire-test"  # a name the SDK has no deprecation warning for

# ------------------------------------------------------------------------------------ strategies

words = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
ids = st.from_regex(r"[a-z0-9]{4,12}", fullmatch=True)
tool_names = st.from_regex(r"[a-zA-Z0-9_-]{1,16}", fullmatch=True)
args = st.dictionaries(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.integers(-(2**53), 2**53) | words, max_size=3
).map(lambda d: orjson.dumps(d).decode())
cache_controls = st.none() | st.just(EPHEMERAL)


def texts() -> st.SearchStrategy[Text]:
    return st.builds(Text, text=words, cache_control=cache_controls)


images = st.one_of(
    st.builds(Image, url=st.just("https://example.com/cat.png")),
    st.builds(
        Image, data=st.binary(min_size=1, max_size=24), media_type=st.sampled_from(["image/png", "image/gif"])
    ),
)
files = st.one_of(
    st.builds(File, data=st.binary(min_size=1, max_size=24), media_type=st.just("application/pdf")),
    st.builds(File, data=words.map(str.encode), media_type=st.just("text/plain"), filename=st.none() | words),
    st.builds(File, url=st.just("https://example.com/a.pdf"), filename=st.none() | words),
)
own_reasoning = st.builds(
    Reasoning, summary=st.lists(words, max_size=1), data=words, dialect=st.just(DIALECT)
) | st.builds(Reasoning, data=words, dialect=st.just(DIALECT), redacted=st.just(True))
# Another dialect's reasoning rides in the signature as an envelope (responses only: a request to
# Anthropic drops it).
foreign_reasoning = st.builds(
    Reasoning,
    summary=st.lists(words, max_size=1),
    id=ids.map(lambda i: "rs_" + i),
    data=st.none() | words,
    dialect=st.just("openai_responses"),
)


def tool_calls(draw: Any) -> list[ToolCall]:
    n = draw(st.integers(0, 2))
    return [ToolCall(id="toolu_" + draw(ids), name=draw(tool_names), arguments=draw(args)) for _ in range(n)]


@st.composite
def conversations(draw: Any, thinking: bool) -> list[Message]:
    """Canonical transcripts: one leading system message, tool results in their own message, and
    (with thinking on) every assistant turn that calls tools opening with its thinking block."""
    messages: list[Message] = []
    if draw(st.booleans()):
        messages.append(Message(role="system", content=draw(st.lists(texts(), min_size=1, max_size=2))))
    for _ in range(draw(st.integers(1, 3))):
        content: list[Part] = draw(st.lists(texts() | images | files, min_size=1, max_size=3))
        messages.append(Message(role="user", content=content))
        calls = tool_calls(draw)
        reply: list[Part] = []
        if (calls and thinking) or draw(st.booleans()):
            reply.append(draw(own_reasoning))
        reply += draw(st.lists(texts(), min_size=0 if calls else 1, max_size=2))
        messages.append(Message(role="assistant", content=reply + calls))
        if calls:
            results: list[Part] = [
                ToolResult(
                    call_id=c.id,
                    content=draw(st.lists(texts() | images, min_size=1, max_size=2)),
                    is_error=draw(st.booleans()),
                )
                for c in calls
            ]
            messages.append(Message(role="tool", content=results))
    return messages


tools = st.builds(
    Tool,
    name=tool_names,
    description=st.none() | words,
    parameters=st.just({"type": "object", "properties": {"q": {"type": "string"}}}),
    strict=st.none() | st.booleans(),
    cache_control=cache_controls,
)


@st.composite
def requests(draw: Any) -> Request:
    thinking = draw(st.booleans())
    req = Request(model="claude-sonnet-4-5", messages=draw(conversations(thinking)))
    req.tools = draw(st.lists(tools, max_size=2, unique_by=lambda t: t.name))
    if req.tools:
        choices = ["auto", "none"] + ([] if thinking else ["required", ToolName(req.tools[0].name)])
        req.tool_choice = draw(st.none() | st.sampled_from(choices))
        if req.tool_choice not in (None, "none"):
            req.parallel_tool_calls = draw(st.none() | st.booleans())
    if thinking:
        # Room for the largest budget, and only the sampling values Anthropic allows with thinking.
        req.max_output_tokens = draw(st.integers(30_000, 64_000))
        req.reasoning_effort = draw(st.sampled_from(["low", "medium", "high"]))
        req.reasoning_summary = "auto"
        req.temperature = draw(st.none() | st.just(1.0))
        req.top_p = draw(st.none() | st.just(0.95))
    else:
        req.max_output_tokens = draw(st.integers(1, 64_000))
        req.temperature = draw(st.none() | st.floats(0, 1).map(lambda f: round(f, 2)))
        req.top_p = draw(st.none() | st.floats(0, 1).map(lambda f: round(f, 2)))
    req.stop = draw(st.none() | st.lists(words, min_size=1, max_size=2))
    req.user = draw(st.none() | ids)
    req.service_tier = draw(st.none() | st.sampled_from(["auto", "default"]))
    req.stream = draw(st.booleans())
    req.response_format = draw(
        st.none() | st.just(ResponseFormat(type="json_schema", name="response", schema={"type": "object"}))
    )
    return req


def normal(req: Request) -> Request:
    req.dialect = None
    req.extra = {}
    return req


@st.composite
def usages(draw: Any) -> Usage:
    uncached, cached, written = (draw(st.integers(0, 10**6)) for _ in range(3))
    output = draw(st.integers(0, 10**5))
    return Usage(
        input_tokens=uncached + cached + written,
        cached_input_tokens=cached,
        cache_write_tokens=written,
        output_tokens=output,
        reasoning_tokens=draw(st.integers(0, output)),
    )


@st.composite
def responses(draw: Any) -> Response:
    parts: list[Part] = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["text", "call", "own", "foreign"]))
        if kind == "text":
            parts.append(Text(text=draw(words)))
        elif kind == "call":
            parts.append(ToolCall(id="toolu_" + draw(ids), name=draw(tool_names), arguments=draw(args)))
        else:
            parts.append(draw(own_reasoning if kind == "own" else foreign_reasoning))
    has_calls = any(isinstance(p, ToolCall) for p in parts)
    stop = "tool_calls" if has_calls else draw(st.sampled_from(["stop", "length", "refusal", "pause"]))
    return Response(
        id="msg_" + draw(ids),
        model="claude-sonnet-4-5",
        content=parts,
        stop_reason=stop,
        stop_sequence=draw(st.none() | words) if stop == "stop" else None,
        usage=draw(usages()),
        service_tier="standard",
    )


# ----------------------------------------------------------------------------------- round trips


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_request_round_trip(req: Request) -> None:
    body = am.encode_request(req)
    assert_anthropic("CreateMessageParams", body)
    assert normal(am.decode_request(orjson.loads(orjson.dumps(body)))) == req


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_response_round_trip(resp: Response) -> None:
    body = am.render_response(resp, Request(model="claude-sonnet-4-5"))
    assert_anthropic("Message", body)
    usage = body["usage"]
    assert usage["input_tokens"] == resp.usage.input_tokens - resp.usage.cached_input_tokens - (
        resp.usage.cache_write_tokens
    )
    assert usage["cache_read_input_tokens"] == resp.usage.cached_input_tokens
    assert usage["cache_creation_input_tokens"] == resp.usage.cache_write_tokens
    back = am.decode_response(orjson.loads(orjson.dumps(body)))
    assert back == resp


def stream_events(payload: bytes) -> list[dict[str, Any]]:
    """Every event of a rendered stream, checked against the spec and its ``event:`` line."""
    parser = SSEParser()
    events = []
    for sse in parser.feed(payload) + parser.flush():
        event = orjson.loads(sse.data)
        assert sse.event == event["type"]
        if event["type"] != "error":
            assert_anthropic("MessageStreamEvent", event)
        events.append(event)
    return events


def replay(payload: bytes) -> Response:
    parser = SSEParser()
    decoder = am.StreamDecoder()
    acc = ResponseAccumulator()
    for sse in parser.feed(payload) + parser.flush():
        for event in decoder.feed(sse.data):
            acc.feed(event)
    for event in decoder.end():
        acc.feed(event)
    return acc.result()


def render_stream(
    resp: Response, req: Request | None = None, events: list[StreamEvent] | None = None
) -> bytes:
    renderer = am.StreamRenderer(req or Request(model="claude-sonnet-4-5"))
    return b"".join(renderer.feed(e) for e in (events or events_from_response(resp)))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(responses())
def test_stream_round_trip(resp: Response) -> None:
    payload = render_stream(resp)
    events = stream_events(payload)
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    assert starts == list(range(len(starts)))
    back = replay(payload)
    assert (back.id, back.model) == (events[0]["message"]["id"], "claude-sonnet-4-5")
    expected = Response(
        id=back.id,
        model=back.model,
        content=resp.content,
        stop_reason=resp.stop_reason,
        stop_sequence=resp.stop_sequence,
        usage=resp.usage,
    )
    assert back == expected


# --------------------------------------------------------------------------- the official SDK


def sdk_client(payload: bytes) -> anthropic.Anthropic:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=payload)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return anthropic.Anthropic(base_url="http://gateway.test", api_key="x", http_client=http, max_retries=0)


def sdk_final_message(payload: bytes) -> dict[str, Any]:
    client = sdk_client(payload)
    with client.messages.stream(
        model=SDK_MODEL, max_tokens=1024, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        message = stream.get_final_message()
    return message.to_dict()


def without_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "id"}


SDK_CASES = {
    "text": Response(
        id="msg_1",
        model="claude-sonnet-4-5",
        content=[Text(text="Hello, "), Text(text="world")],
        usage=Usage(input_tokens=120, cached_input_tokens=100, output_tokens=7),
    ),
    "parallel tool calls": Response(
        id="msg_2",
        model="claude-sonnet-4-5",
        content=[
            Text(text="Checking both."),
            ToolCall(id="toolu_a", name="get_weather", arguments='{"city":"Paris"}'),
            ToolCall(id="toolu_b", name="get_time", arguments='{"tz":"Europe/Paris","fmt":24}'),
        ],
        stop_reason="tool_calls",
        usage=Usage(input_tokens=300, cache_write_tokens=200, output_tokens=40),
    ),
    "thinking and tool use": Response(
        id="msg_3",
        model="claude-sonnet-4-5",
        content=[
            Reasoning(summary=["Need the weather."], data="sig-abc", dialect=DIALECT),
            Reasoning(data="opaque", dialect=DIALECT, redacted=True),
            Reasoning(
                id="rs_9", summary=["From OpenAI", "two parts"], data="ENC", dialect="openai_responses"
            ),
            ToolCall(id="toolu_c", name="get_weather", arguments='{"city":"Oslo"}'),
        ],
        stop_reason="tool_calls",
        usage=Usage(input_tokens=50, output_tokens=500, reasoning_tokens=400),
    ),
}


@pytest.mark.parametrize("name", list(SDK_CASES))
def test_sdk_accumulates_our_stream_into_the_message_we_render(name: str) -> None:
    resp = SDK_CASES[name]
    req = Request(model="claude-sonnet-4-5")
    rendered = am.render_response(resp, req)
    final = sdk_final_message(render_stream(resp, req))
    assert without_id(final) == without_id(rendered)


def test_sdk_skips_pings_and_raises_on_an_error_event() -> None:
    renderer = am.StreamRenderer(Request(model="claude-sonnet-4-5"))
    payload = am.ping() + renderer.feed(Start(id="msg_x", model="claude-sonnet-4-5"))
    payload += renderer.feed(BlockStart(index=0, part=Text(text=""))) + am.KEEPALIVE
    payload += renderer.feed(BlockDelta(index=0, text="partial"))
    payload += renderer.feed(StreamError(error=UpstreamUnavailableError("upstream went away")))
    assert renderer.feed(Finish(stop_reason="stop")) == b""
    with pytest.raises(anthropic.APIStatusError) as info:
        sdk_final_message(payload)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "upstream went away"},
    }


def test_sdk_raw_events_parse() -> None:
    payload = render_stream(SDK_CASES["thinking and tool use"])
    client = sdk_client(payload)
    stream = client.messages.create(
        model=SDK_MODEL, max_tokens=1024, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    kinds = [event.type for event in stream]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop") == 4


# ---------------------------------------------------------------------------- stream rendering


def test_stream_event_sequence_for_thinking_then_text() -> None:
    resp = Response(
        id="up-1",
        model="claude-sonnet-4-5",
        content=[Reasoning(summary=["a", "b"], data="sig", dialect=DIALECT), Text(text="hi")],
        usage=Usage(input_tokens=10, output_tokens=3),
    )
    events = stream_events(render_stream(resp))
    assert [(e["type"], e.get("delta", {}).get("type")) for e in events] == [
        ("message_start", None),
        ("content_block_start", None),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "thinking_delta"),
        ("content_block_delta", "signature_delta"),
        ("content_block_stop", None),
        ("content_block_start", None),
        ("content_block_delta", "text_delta"),
        ("content_block_stop", None),
        ("message_delta", None),
        ("message_stop", None),
    ]
    assert events[0]["message"]["id"] == "msg_up-1"
    assert events[1]["content_block"] == {"type": "thinking", "thinking": "", "signature": ""}
    assert [e["delta"].get("thinking") for e in events[2:4]] == ["a", "\n\nb"]
    assert events[-2]["usage"]["input_tokens"] == 10 and events[-2]["usage"]["output_tokens"] == 3


def test_stream_renderer_is_robust_to_overlapping_and_whole_blocks() -> None:
    renderer = am.StreamRenderer(Request(model="m"))
    events: list[StreamEvent] = [
        Start(id="msg_1", model="m"),
        BlockStart(index=0, part=Text(text="")),
        BlockDelta(index=0, text="one"),
        BlockStart(index=1, part=ToolCall(id="toolu_1", name="f", arguments="")),  # 0 still open
        BlockDelta(index=1, text='{"a":'),
        BlockDelta(index=1, text="1}"),
        BlockStop(index=1, part=ToolCall(id="toolu_1", name="f", arguments='{"a":1}')),
        BlockStop(index=0, part=Text(text="one")),  # late: already closed
        BlockStop(index=2, part=Text(text="whole")),  # never started
        BlockStart(index=3, part=Reasoning()),
        BlockStop(index=3, part=Reasoning()),  # nothing to show or replay: left out
        BlockStart(index=4, part=Refusal(text="")),
        BlockDelta(index=4, text="no"),
        BlockStop(index=4, part=Refusal(text="no")),
        Finish(stop_reason="stop", usage=Usage(input_tokens=1, output_tokens=2)),
    ]
    payload = b"".join(renderer.feed(e) for e in events)
    stream_events(payload)
    final = sdk_final_message(payload)
    assert final["content"] == [
        {"type": "text", "text": "one", "citations": None},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}, "caller": {"type": "direct"}},
        {"type": "text", "text": "whole", "citations": None},
        {"type": "text", "text": "no", "citations": None},
    ]
    assert final["stop_reason"] == "refusal"


def test_stream_error_is_an_error_event_and_nothing_after() -> None:
    renderer = am.StreamRenderer(Request(model="m"))
    out = renderer.feed(StreamError(error=RateLimitError("slow down")))
    error = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}'
    assert out == b"event: error\ndata: " + error + b"\n\n"
    assert renderer.feed(Start(id="x", model="m")) == b""


def test_keepalive_is_a_ping_event() -> None:
    assert am.KEEPALIVE == am.ping() == b'event: ping\ndata: {"type":"ping"}\n\n'


# -------------------------------------------------------------------------- reasoning across dialects


def test_responses_reasoning_survives_a_claude_code_tool_loop() -> None:
    """Responses upstream -> Claude Code -> next turn -> Responses upstream gets encrypted_content."""
    upstream = Response(
        id="resp_1",
        model="gpt-5.1",
        content=[
            Reasoning(id="rs_1", summary=["think"], data="ENCRYPTED", dialect="openai_responses"),
            ToolCall(id="call_1", name="read_file", arguments='{"path":"a.py"}', item_id="fc_1"),
        ],
        stop_reason="tool_calls",
    )
    req = Request(model="claude-sonnet-4-5")
    seen = sdk_final_message(render_stream(upstream, req))
    assert seen == without_id(am.render_response(upstream, req)) | {"id": seen["id"]}
    replayed = [{k: v for k, v in b.items() if k not in ("caller", "citations")} for b in seen["content"]]
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 32000,
        "thinking": {"type": "adaptive"},
        "messages": [
            {"role": "user", "content": "read a.py"},
            {"role": "assistant", "content": replayed},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "print(1)"}],
            },
        ],
    }
    neutral = am.decode_request(body)
    assert neutral.messages[1].content[0] == Reasoning(
        id="rs_1", summary=["think"], data="ENCRYPTED", dialect="openai_responses"
    )
    items = openai_responses.encode_request(neutral)["input"]
    assert items[1] == {
        "type": "reasoning",
        "id": "rs_1",
        "summary": [{"type": "summary_text", "text": "think"}],
        "encrypted_content": "ENCRYPTED",
    }
    assert items[2]["type"] == "function_call" and items[3]["type"] == "function_call_output"


def test_foreign_reasoning_is_not_sent_to_anthropic_and_thinking_yields() -> None:
    req = Request(
        model="claude-sonnet-4-5",
        reasoning_effort="high",
        max_output_tokens=40_000,
        messages=[
            Message(role="user", content=[Text(text="go")]),
            Message(
                role="assistant",
                content=[
                    Reasoning(id="rs_1", data="ENC", dialect="openai_responses"),
                    ToolCall(id="call_1", name="f", arguments=""),
                ],
            ),
            Message(role="tool", content=[ToolResult(call_id="call_1", content=[Text(text="ok")])]),
        ],
        tools=[Tool(name="f")],
    )
    body = am.encode_request(req)
    assert_anthropic("CreateMessageParams", body)
    assert body["messages"][1]["content"] == [{"type": "tool_use", "id": "call_1", "name": "f", "input": {}}]
    # Anthropic would refuse thinking here: the tool-calling turn has no thinking block to continue.
    assert "thinking" not in body


# ----------------------------------------------------------------------------- driver encoding


def test_chat_shaped_transcript_becomes_anthropic_turns() -> None:
    req = Request(
        model="claude-sonnet-4-5",
        messages=[
            Message(role="developer", content=[Text(text="Be brief.")]),
            Message(role="user", content=[Text(text="weather?")]),
            Message(
                role="assistant",
                content=[
                    Text(text="Looking."),
                    ToolCall(id="call_a", name="w", arguments='{"c":"Paris"}'),
                    ToolCall(id="call_b", name="w", arguments=""),
                ],
            ),
            Message(role="tool", content=[ToolResult(call_id="call_a", content=[Text(text="sun")])]),
            Message(
                role="tool", content=[ToolResult(call_id="call_b", content=[Text(text="x")], is_error=True)]
            ),
            Message(role="system", content=[Text(text="Mid-conversation note.")]),
            Message(role="user", content=[Text(text="thanks")]),
        ],
    )
    body = am.encode_request(req)
    assert_anthropic("CreateMessageParams", body)
    assert body["max_tokens"] == am.DEFAULT_MAX_TOKENS
    assert body["system"] == [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Mid-conversation note."},
    ]
    assert body["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "call_a", "name": "w", "input": {"c": "Paris"}},
                {"type": "tool_use", "id": "call_b", "name": "w", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "sun"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "x", "is_error": True},
                {"type": "text", "text": "thanks"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("effort", "max_tokens", "choice", "thinking"),
    [
        ("low", 64_000, None, {"type": "enabled", "budget_tokens": 2048}),
        ("medium", 64_000, "auto", {"type": "enabled", "budget_tokens": 8192}),
        ("high", 64_000, None, {"type": "enabled", "budget_tokens": 24576}),
        ("high", 5000, None, {"type": "enabled", "budget_tokens": 4999}),  # clamped below max_tokens
        ("high", 1024, None, None),  # no room for the minimum budget
        ("none", 64_000, None, None),
        ("high", 64_000, "required", None),  # Anthropic refuses thinking with a forced tool
        ("high", 64_000, ToolName("f"), None),
    ],
)
def test_thinking_budget(effort: str, max_tokens: int, choice: Any, thinking: dict[str, Any] | None) -> None:
    req = Request(
        model="m",
        messages=[Message(role="user", content=[Text(text="hi")])],
        tools=[Tool(name="f")],
        tool_choice=choice,
        reasoning_effort=effort,
        max_output_tokens=max_tokens,
        temperature=0.2,
        top_p=0.5,
    )
    body = am.encode_request(req)
    assert_anthropic("CreateMessageParams", body)
    assert body.get("thinking") == thinking
    assert ("temperature" in body, "top_p" in body) == ((False, False) if thinking else (True, True))


@pytest.mark.parametrize(
    ("effort", "default", "budget", "max_tokens"),
    [
        ("low", 4096, 2048, 2048 + 4096),
        ("high", 4096, 24576, 24576 + 4096),
        ("xhigh", 4096, 32000 - 4096, 32000),  # under the smallest limit of a thinking Claude
        ("max", 8192, 32000 - 8192, 32000),
        ("high", 40_000, 24576, 40_000),  # an operator's large default holds budget and answer
        ("xhigh", 31_500, 31_499, 32_000),  # one that leaves too little: the budget goes under it
    ],
)
def test_thinking_with_no_limit_asked_leaves_room_for_the_answer(
    effort: str, default: int, budget: int, max_tokens: int
) -> None:
    req = Request(
        model="m", messages=[Message(role="user", content=[Text(text="hi")])], reasoning_effort=effort
    )
    body = am.encode_request(req, default_max_tokens=default)
    assert_anthropic("CreateMessageParams", body)
    assert (body["thinking"]["budget_tokens"], body["max_tokens"]) == (budget, max_tokens)


def test_separate_text_blocks_stay_apart_in_a_chat_message() -> None:
    """Claude Code's system blocks (a billing header, then its prompt) and the reminders before its
    user's words: to a Chat upstream each message is one string, its blocks on separate paragraphs."""
    body = {
        "model": "m",
        "max_tokens": 100,
        "system": [
            {"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1"},
            {"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}},
        ],
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "<system-reminder>Be terse.</system-reminder>"},
                    {"type": "text", "text": "List the files."},
                ],
            }
        ],
    }
    messages = openai_chat.encode_request(am.decode_request(body))["messages"]
    assert messages == [
        {"role": "system", "content": "x-anthropic-billing-header: cc_version=2.1\n\nYou are Claude Code."},
        {"role": "user", "content": "<system-reminder>Be terse.</system-reminder>\n\nList the files."},
    ]


def test_sampling_and_settings_mapping() -> None:
    req = Request(
        model="m",
        messages=[Message(role="user", content=[Text(text="hi")])],
        temperature=1.7,  # an OpenAI value: Anthropic tops out at 1
        stop=["END"],
        user="u1",
        metadata={"team": "a"},  # Anthropic metadata has room for user_id only
        service_tier="flex",  # not an Anthropic tier
        response_format=ResponseFormat(type="json_object"),  # no Anthropic equivalent
        parallel_tool_calls=False,
        tools=[Tool(name="f", parameters={"type": "object"})],
        extra={"top_k": 5},
        dialect="openai_chat",
    )
    body = am.encode_request(req)
    assert_anthropic("CreateMessageParams", body)
    assert body == {
        "model": "m",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        "temperature": 1.0,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u1"},
    }


def test_service_tier_in_openai_terms() -> None:
    body = {"model": "m", "max_tokens": 1, "messages": [], "service_tier": "standard_only"}
    req = am.decode_request(body)
    assert req.service_tier == "default"  # what an OpenAI upstream understands
    assert am.encode_request(req)["service_tier"] == "standard_only"


def test_extra_goes_only_to_its_own_dialect() -> None:
    body = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"type": "web_search_20250305", "name": "web_search"},
            {"name": "f", "input_schema": {"type": "object"}},
        ],
        "top_k": 3,
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    }
    req = am.decode_request(body)
    assert req.extra == {
        "top_k": 3,
        "context_management": body["context_management"],
        "tools": [body["tools"][0]],
    }
    again = am.encode_request(req)
    assert again["top_k"] == 3 and again["context_management"] == body["context_management"]
    assert again["tools"] == [body["tools"][1], body["tools"][0]]
    req.dialect = "openai_chat"
    assert "top_k" not in am.encode_request(req) and len(am.encode_request(req)["tools"]) == 1


def test_media_encoding() -> None:
    req = Request(
        model="m",
        messages=[
            Message(
                role="user",
                content=[
                    Image(url="data:image/jpeg;base64,AAEC"),
                    File(data=b"%PDF", media_type="application/pdf", filename="a.pdf"),
                    File(data=b"\x89PNG", media_type="image/png"),
                ],
            )
        ],
    )
    blocks = am.encode_request(req)["messages"][0]["content"]
    assert blocks == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAEC"}},
        {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERg=="},
            "title": "a.pdf",
        },
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw=="}},
    ]
    with pytest.raises(InvalidRequestError):
        am.encode_request(Request(model="m", messages=[Message(role="user", content=[Image(file_id="f1")])]))


# ----------------------------------------------------------------------------- driver decoding


def sse(*events: dict[str, Any]) -> list[str]:
    return [orjson.dumps(e).decode() for e in events]


UPSTREAM_STREAM = sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_up",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": "claude-sonnet-4-5",
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "cache_read_input_tokens": 100, "output_tokens": 1},
        },
    },
    {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": "", "signature": ""},
    },
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "check."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "EqQB"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "redacted_thinking", "data": "RED"},
    },
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Hello"}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "citations_delta", "citation": {}}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "content_block_start",
        "index": 3,
        "content_block": {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {
        "type": "content_block_delta",
        "index": 3,
        "delta": {"type": "input_json_delta", "partial_json": '{"loc'},
    },
    {
        "type": "content_block_delta",
        "index": 3,
        "delta": {"type": "input_json_delta", "partial_json": 'ation": 1}'},
    },
    {"type": "content_block_stop", "index": 3},
    {"type": "some_future_event", "x": 1},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 89, "cache_creation_input_tokens": 10, "input_tokens": None},
    },
    {"type": "message_stop"},
)


def decode_all(lines: list[str], *, end: bool = True) -> tuple[list[StreamEvent], Response | Exception]:
    decoder = am.StreamDecoder()
    events = [e for line in lines for e in decoder.feed(line)] + (decoder.end() if end else [])
    acc = ResponseAccumulator()
    try:
        for e in events:
            acc.feed(e)
    except ModelwireError as err:
        return events, err
    return events, acc.result()


def test_stream_decoder_on_an_upstream_stream() -> None:
    _, resp = decode_all(UPSTREAM_STREAM)
    assert resp == Response(
        id="msg_up",
        model="claude-sonnet-4-5",
        content=[
            Reasoning(summary=["Let me check."], data="EqQB", dialect=DIALECT),
            Reasoning(data="RED", dialect=DIALECT, redacted=True),
            Text(text="Hello"),
            ToolCall(id="toolu_1", name="get_weather", arguments='{"location": 1}'),
        ],
        stop_reason="tool_calls",
        usage=Usage(input_tokens=135, cached_input_tokens=100, cache_write_tokens=10, output_tokens=89),
    )


def test_stream_decoder_streams_incrementally() -> None:
    decoder = am.StreamDecoder()
    per_line = [decoder.feed(line) for line in UPSTREAM_STREAM]
    assert isinstance(per_line[0][0], Start)
    assert per_line[3] == [BlockDelta(index=0, text="Let me ", summary_index=0)]
    assert per_line[15] == [BlockDelta(index=3, text='{"loc')]


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("overloaded_error", UpstreamUnavailableError),
        ("rate_limit_error", RateLimitError),
        ("api_error", UpstreamUnavailableError),
        ("invalid_request_error", InvalidRequestError),
    ],
)
def test_stream_decoder_error_event(kind: str, cls: type[ModelwireError]) -> None:
    lines = [*UPSTREAM_STREAM[:5], *sse({"type": "error", "error": {"type": kind, "message": "boom"}})]
    events, err = decode_all(lines)
    assert isinstance(events[-1], StreamError) and isinstance(err, cls) and err.message == "boom"
    assert not [e for e in events if isinstance(e, Finish)]


def test_stream_decoder_cut_short_or_garbled() -> None:
    _, err = decode_all(UPSTREAM_STREAM[:-1])
    assert isinstance(err, ProtocolError)
    _, err = decode_all([*UPSTREAM_STREAM[:-1], "[DONE]"], end=False)
    assert isinstance(err, ProtocolError)
    _, err = decode_all([UPSTREAM_STREAM[0], "not json"], end=False)
    assert isinstance(err, ProtocolError)


def test_stream_decoder_takes_tool_input_given_whole() -> None:
    lines = [
        UPSTREAM_STREAM[0],
        *sse(
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
            },
            {"type": "content_block_stop", "index": 0},
            {"type": "message_stop"},
        ),
    ]
    _, resp = decode_all(lines)
    assert isinstance(resp, Response) and resp.content == [
        ToolCall(id="toolu_1", name="f", arguments='{"a":1}')
    ]


def test_decode_response_usage_stop_sequence_and_server_blocks() -> None:
    body = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-opus-4-6",
        "content": [
            {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
            {"type": "text", "text": "Done", "citations": None},
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "###",
        "usage": {
            "input_tokens": 25,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 50,
            "output_tokens": 9,
            "service_tier": "priority",
        },
    }
    resp = am.decode_response(body)
    assert resp.usage == Usage(
        input_tokens=175, cached_input_tokens=100, cache_write_tokens=50, output_tokens=9
    )
    assert (resp.stop_reason, resp.stop_sequence, resp.service_tier) == ("stop", "###", "priority")
    assert resp.content[0].data == body["content"][0]  # type: ignore[union-attr]
    # A server block goes back to an Anthropic upstream verbatim, and nowhere else.
    req = Request(model="m", messages=[Message(role="user", content=[Text(text="q")]), resp.message()])
    assert am.encode_request(req)["messages"][1]["content"][0] == body["content"][0]
    with pytest.raises(RateLimitError):
        am.decode_response({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})


# ----------------------------------------------------------------------------- surface decoding


def claude_code_tools() -> list[dict[str, Any]]:
    names = [
        "Task",
        "Bash",
        "Glob",
        "Grep",
        "LS",
        "Read",
        "Edit",
        "MultiEdit",
        "Write",
        "WebFetch",
        "TodoWrite",
        "WebSearch",
    ]
    return [
        {
            "name": name,
            "description": f"The {name} tool.",
            "input_schema": {
                "type": "object",
                "properties": {"arg": {"type": "string"}},
                "required": ["arg"],
                "additionalProperties": False,
                "$schema": "http://json-schema.org/draft-07/schema#",
            },
        }
        for name in names
    ]


def claude_code_body() -> dict[str, Any]:
    tools = claude_code_tools()
    tools[-1]["cache_control"] = EPHEMERAL
    return {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 32000,
        "stream": True,
        "system": [
            {"type": "text", "text": "You are Claude Code.", "cache_control": EPHEMERAL},
            {"type": "text", "text": "Environment: linux."},
        ],
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "fix the bug", "cache_control": EPHEMERAL}],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Look first.", "signature": "sig1"},
                    {"type": "text", "text": "Reading."},
                    {"type": "tool_use", "id": "toolu_01", "name": "Read", "input": {"arg": "a.py"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "Grep", "input": {"arg": "bug"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "print(1)"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_02",
                        "content": [
                            {"type": "text", "text": "no match"},
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": "AAEC"},
                            },
                        ],
                        "is_error": True,
                    },
                    {"type": "text", "text": "also check b.py"},
                ],
            },
            {"role": "system", "content": "The user switched to plan mode."},
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "REDACTED"},
                    {"type": "tool_use", "id": "toolu_03", "name": "Edit", "input": {"arg": "b.py"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_03", "content": "ok"}],
            },
        ],
        "tools": tools,
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "user_abc_account_x_session_y"},
        "thinking": {"type": "adaptive"},
        "output_config": {"effort": "high"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "temperature": 1,
    }


def test_claude_code_request() -> None:
    req = am.decode_request(claude_code_body())
    expected_tools = [
        Tool(name=t["name"], description=t["description"], parameters=t["input_schema"])
        for t in claude_code_tools()
    ]
    expected_tools[-1].cache_control = EPHEMERAL
    assert req == Request(
        model="claude-sonnet-4-5-20250929",
        messages=[
            Message(
                role="system",
                content=[
                    Text(text="You are Claude Code.", cache_control=EPHEMERAL),
                    Text(text="Environment: linux."),
                ],
            ),
            Message(role="user", content=[Text(text="fix the bug", cache_control=EPHEMERAL)]),
            Message(
                role="assistant",
                content=[
                    Reasoning(summary=["Look first."], data="sig1", dialect=DIALECT),
                    Text(text="Reading."),
                    ToolCall(id="toolu_01", name="Read", arguments='{"arg":"a.py"}'),
                    ToolCall(id="toolu_02", name="Grep", arguments='{"arg":"bug"}'),
                ],
            ),
            Message(
                role="tool",
                content=[
                    ToolResult(call_id="toolu_01", content=[Text(text="print(1)")]),
                    ToolResult(
                        call_id="toolu_02",
                        content=[Text(text="no match"), Image(data=b"\x00\x01\x02", media_type="image/png")],
                        is_error=True,
                    ),
                ],
            ),
            Message(role="user", content=[Text(text="also check b.py")]),
            Message(role="system", content=[Text(text="The user switched to plan mode.")]),
            Message(
                role="assistant",
                content=[
                    Reasoning(data="REDACTED", dialect=DIALECT, redacted=True),
                    ToolCall(id="toolu_03", name="Edit", arguments='{"arg":"b.py"}'),
                ],
            ),
            Message(role="tool", content=[ToolResult(call_id="toolu_03", content=[Text(text="ok")])]),
        ],
        tools=expected_tools,
        tool_choice="auto",
        max_output_tokens=32000,
        temperature=1.0,
        reasoning_effort="high",
        reasoning_summary="auto",
        user="user_abc_account_x_session_y",
        stream=True,
        extra={"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}},
        dialect=DIALECT,
    )
    # Back to an Anthropic upstream it is a valid (beta: context_management) request with the
    # thinking blocks in place.
    body = am.encode_request(req)
    assert_anthropic("BetaCreateMessageParams", body)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 24576}
    assert body["messages"][-2]["content"][0] == {"type": "redacted_thinking", "data": "REDACTED"}


def test_forwarded_claude_code_body_has_its_system_messages_lifted() -> None:
    """The fast path forwards Claude Code's own body; its in-``messages`` system messages join the
    top-level ``system`` (blocks after blocks, a string as a block), and the rest is untouched."""
    body = claude_code_body()
    messages = body["messages"]
    am.fit_forwarded(body, None, True)
    assert_anthropic("BetaCreateMessageParams", body)
    assert body["messages"] == [m for m in messages if m["role"] != "system"]
    assert body["system"] == [
        *claude_code_body()["system"],
        {"type": "text", "text": "The user switched to plan mode."},
    ]
    plain = {
        "model": "m",
        "max_tokens": 5,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "q"}],
    }
    am.fit_forwarded(plain, None, False)
    assert plain["system"] == "Be brief."  # nothing to lift: left as it came
    only = {**plain, "messages": [{"role": "system", "content": ""}, *plain["messages"]]}
    am.fit_forwarded(only, None, False)
    assert only["system"] == [{"type": "text", "text": "Be brief."}] and only["messages"] == plain["messages"]


@pytest.mark.parametrize(
    ("thinking", "output_config", "effort", "summary"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, None, "low", "auto"),
        ({"type": "enabled", "budget_tokens": 4096}, None, "medium", "auto"),
        ({"type": "enabled", "budget_tokens": 16384}, None, "high", "auto"),
        ({"type": "adaptive"}, None, "medium", "auto"),
        ({"type": "adaptive", "display": "omitted"}, {"effort": "low"}, "low", None),
        ({"type": "disabled"}, {"effort": "high"}, None, None),
        (None, {"effort": "max"}, "max", None),
    ],
)
def test_thinking_settings(
    thinking: dict[str, Any] | None,
    output_config: dict[str, Any] | None,
    effort: str | None,
    summary: str | None,
) -> None:
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 20000,
        "messages": [{"role": "user", "content": "hi"}],
    }
    if thinking:
        body["thinking"] = thinking
    if output_config:
        body["output_config"] = output_config
    req = am.decode_request(body)
    assert (req.reasoning_effort, req.reasoning_summary) == (effort, summary)


def test_structured_output_and_documents() -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {"type": "text", "media_type": "text/plain", "data": "notes"},
                    },
                    {
                        "type": "document",
                        "source": {"type": "url", "url": "https://x.test/a.pdf"},
                        "title": "A",
                    },
                    {
                        "type": "document",
                        "source": {"type": "content", "content": [{"type": "text", "text": "c"}]},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/i.png"}},
                ],
            }
        ],
    }
    req = am.decode_request(body)
    assert req.response_format == ResponseFormat(
        type="json_schema", name="response", schema={"type": "object"}
    )
    assert req.messages[0].content == [
        File(data=b"notes", media_type="text/plain"),
        File(url="https://x.test/a.pdf", filename="A"),
        File(data=b"c", media_type="text/plain"),
        Image(url="https://x.test/i.png"),
    ]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": "100"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"model": 5}, "model"),
        ({"messages": {}}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": "!"}}],
                    }
                ]
            },
            "messages[0].content[0].source.data",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "thinking"}]}
                        ],
                    }
                ]
            },
            "messages[0].content[0].content[0].type",
        ),
        ({"system": 5}, "system"),
        ({"system": [{"type": "image", "source": {"type": "url", "url": "u"}}]}, "system[0].type"),
        ({"tools": [{"description": "no name"}]}, "tools[0].name"),
        ({"tools": [{"name": "f", "input_schema": "x"}]}, "tools[0].input_schema"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens"),
        ({"thinking": {"type": "maybe"}}, "thinking.type"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
        ({"stop_sequences": ["a", 1]}, "stop_sequences"),
        ({"temperature": "hot"}, "temperature"),
        ({"metadata": {"user_id": 7}}, "metadata.user_id"),
    ],
)
def test_bad_input_names_the_field(change: dict[str, Any], param: str) -> None:
    body: dict[str, Any] = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(InvalidRequestError) as info:
        am.decode_request(body)
    assert info.value.param == param
    assert info.value.message.startswith(param + ":")


# -------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (InvalidRequestError("bad"), 400, "invalid_request_error"),
        (AuthenticationError("who"), 401, "authentication_error"),
        (ModelwireError("pay", status=402), 402, "billing_error"),
        (PermissionDeniedError("no"), 403, "permission_error"),
        (NotFoundError("gone"), 404, "not_found_error"),
        (InvalidRequestError("big", status=413), 413, "request_too_large"),
        (InvalidRequestError("odd", status=422), 422, "invalid_request_error"),
        (RateLimitError("slow"), 429, "rate_limit_error"),
        (ModelwireError("oops"), 500, "api_error"),
        (UpstreamUnavailableError("down"), 529, "overloaded_error"),
        (UpstreamUnavailableError("busy", status=503), 529, "overloaded_error"),
        (UpstreamUnavailableError("busy", status=529), 529, "overloaded_error"),
        (ProtocolError("garbage"), 502, "api_error"),
        (TimeoutError("late"), 504, "timeout_error"),
    ],
)
def test_render_error(err: ModelwireError, status: int, kind: str) -> None:
    got_status, body = am.render_error(err)
    assert (got_status, body) == (
        status,
        {"type": "error", "error": {"type": kind, "message": err.message}, "request_id": None},
    )
    if kind != "request_too_large":  # documented by Anthropic but missing from the spec's ErrorType
        assert_anthropic("ErrorResponse", body)
