"""The fake upstream, driven by the official ``openai`` SDK, plus the spec helpers it relies on.

If the SDK parses what the fake sends into the objects we scripted, and the fake's own output
passes the official schemas, then tests that use the fake are testing against the real wire
format rather than against our own idea of it.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fake_upstream import (
    DEFAULT_TEXT,
    Answer,
    ChatDialect,
    FakeUpstream,
    Ids,
    Reply,
    ResponsesDialect,
    embedding_for,
)
from tests.spec import (
    OPENAI,
    anthropic_errors,
    assert_anthropic,
    assert_openai,
    openai_errors,
    unknown_fields,
)

MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]
CALLS = [("get_weather", '{"city":"Paris"}'), ("get_time", '{"timezone":"Europe/Paris"}')]


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def aclient(upstream: FakeUpstream) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kw)  # type: ignore[arg-type]


def post_raw(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """POST bytes with urllib, bypassing the SDK, so that malformed requests can be sent."""
    all_headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-test", **(headers or {})}
    request = urllib.request.Request(url, data=body, headers=all_headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def sse_events(raw: bytes) -> list[tuple[str | None, str]]:
    """Split an SSE body into (event name, data) pairs, strictly as PROTOCOLS.md section 0 frames them."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        event = None
        data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = line.removeprefix("data: ")
            else:
                raise AssertionError(f"unexpected SSE line {line!r}")
        assert data is not None, block
        events.append((event, data))
    return events


# ---------------------------------------------------------------------------------------------
# spec.py
# ---------------------------------------------------------------------------------------------

SCHEMA_NAMES = [
    "CreateResponse",
    "CreateChatCompletionRequest",
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "Response",
    "ResponseStreamEvent",
    "CreateEmbeddingRequest",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
]


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_spec_schema_names_exist(name: str) -> None:
    assert OPENAI.schema(name)


def test_spec_unknown_schema_name_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match=r"openai-openapi\.yml"):
        openai_errors("NoSuchSchema", {})


def test_spec_nullable_means_null_is_allowed() -> None:
    """``finish_reason`` is declared ``nullable: true``; Draft 2020-12 alone would reject null."""
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": None}],
    }
    assert openai_errors("CreateChatCompletionStreamResponse", chunk) == []
    chunk["choices"][0]["finish_reason"] = "nonsense"  # type: ignore[index]
    assert openai_errors("CreateChatCompletionStreamResponse", chunk)


def test_spec_errors_name_the_path() -> None:
    errors = openai_errors("CreateChatCompletionRequest", {"model": "m", "messages": [{"role": "tool"}]})
    assert any(e.startswith("$.messages[0]:") and "tool_call_id" in e for e in errors), errors
    with pytest.raises(AssertionError, match="tool_call_id"):
        assert_openai("CreateChatCompletionRequest", {"model": "m", "messages": [{"role": "tool"}]})


def test_spec_stream_event_errors_come_from_the_member_named_by_type() -> None:
    event = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0}
    errors = openai_errors(
        "ResponseStreamEvent", {**event, "content_index": 0, "delta": 7, "sequence_number": 1}
    )
    assert "$.delta: 7 is not of type 'string'" in errors
    assert "$: 'logprobs' is a required property" in errors
    assert all("any of the given schemas" not in e for e in errors)


def test_spec_overlapping_oneof_members_are_accepted() -> None:
    """This input item is both an EasyInputMessage and an InputMessage; the real API takes it."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    assert openai_errors("CreateResponse", {"model": "m", "input": [item]}) == []


def test_spec_unknown_fields_follow_allof_chains() -> None:
    body = {"model": "m", "input": "hi", "temperature": 0.5, "store": False, "bogus": 1, "messages": []}
    assert unknown_fields("CreateResponse", body) == ["bogus", "messages"]
    assert unknown_fields("CreateChatCompletionRequest", {"model": "m", "messages": [], "input": "x"}) == [
        "input"
    ]


def test_spec_anthropic_is_supported_too() -> None:
    valid = {"model": "claude-x", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    assert anthropic_errors("CreateMessageParams", valid) == []
    assert_anthropic("CreateMessageParams", valid)
    assert "$: 'max_tokens' is a required property" in anthropic_errors(
        "CreateMessageParams", {"model": "claude-x", "messages": []}
    )


# ---------------------------------------------------------------------------------------------
# The fake's own output passes the official schemas (without HTTP, for every reply shape)
# ---------------------------------------------------------------------------------------------

CONTENT_REPLIES = {
    "text": Reply.text("Hello there, world", usage=(30, 9), cached=10, reasoning_tokens=4),
    "tools": Reply.tool_calls(CALLS),
    "tools+text": Reply.tool_calls(CALLS[:1], text="Let me check."),
    "reasoning": Reply.reasoning(["First I think.", "Then I answer."], text="42"),
    "incomplete": Reply.incomplete("cut sh", reason="max_output_tokens"),
    "filtered": Reply.incomplete("", reason="content_filter"),
    "echo": Reply.echo(),
}
REQUESTS = {
    "chat": {"model": "m", "messages": MESSAGES, "stream_options": {"include_usage": True}},
    "responses": {"model": "m", "input": "hi", "include": ["reasoning.encrypted_content"]},
}


def all_payloads(endpoint: str, reply: Reply) -> list[tuple[str, Any]]:
    """(schema, payload) for the non-streamed document and every streamed frame of ``reply``."""
    body = REQUESTS[endpoint]
    answer = Answer.of(reply, body)
    if endpoint == "chat":
        document = ChatDialect(Ids(), "m", body).document(answer)
        payloads = [("CreateChatCompletionResponse", document)]
        stream = ChatDialect(Ids(), "m", body).stream(answer)
    else:
        document = ResponsesDialect(Ids(), "m", body).document(answer)
        payloads = [("Response", document)]
        stream = ResponsesDialect(Ids(), "m", body).stream(answer)
    payloads += [(frame.schema or "", frame.data) for frame in stream.frames]
    payloads.append((stream.error_frame(99, "boom").schema or "", stream.error_frame(99, "boom").data))
    return payloads


@pytest.mark.parametrize("endpoint", ["chat", "responses"])
@pytest.mark.parametrize("kind", list(CONTENT_REPLIES))
def test_fake_output_is_valid_against_the_spec(endpoint: str, kind: str) -> None:
    for schema, payload in all_payloads(endpoint, CONTENT_REPLIES[kind]):
        assert_openai(schema, payload)


def test_responses_stream_frames_are_well_formed() -> None:
    """Sequence numbers count from 0 and ``event:`` always equals the payload's ``type``."""
    stream = ResponsesDialect(Ids(), "m", REQUESTS["responses"]).stream(
        Answer.of(CONTENT_REPLIES["tools"], {})
    )
    assert [f.data["sequence_number"] for f in stream.frames] == list(range(len(stream.frames)))  # type: ignore[index]
    assert all(f.event == f.data["type"] for f in stream.frames)  # type: ignore[index]


@settings(max_examples=40, deadline=None)
@given(
    text=st.text(min_size=1, max_size=60), in_tokens=st.integers(0, 10**6), out_tokens=st.integers(0, 10**6)
)
def test_any_text_streams_back_exactly_and_validly(text: str, in_tokens: int, out_tokens: int) -> None:
    reply = Reply.text(text, usage=(in_tokens, out_tokens))
    chat_stream = ChatDialect(Ids(), "m", REQUESTS["chat"]).stream(Answer.of(reply, {}))
    pieces = [f.data["choices"][0]["delta"].get("content") for f in chat_stream.frames if f.data["choices"]]  # type: ignore[index]
    assert "".join(p for p in pieces if p) == text
    for frame in chat_stream.frames:
        assert_openai("CreateChatCompletionStreamResponse", frame.data)
    events = ResponsesDialect(Ids(), "m", REQUESTS["responses"]).stream(Answer.of(reply, {})).frames
    deltas = [e.data["delta"] for e in events if e.data["type"] == "response.output_text.delta"]  # type: ignore[index]
    assert "".join(deltas) == text


def test_invalid_output_would_be_caught() -> None:
    """The checks the fake applies to itself do reject a malformed payload."""
    bad_chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{}]}
    assert openai_errors("CreateChatCompletionStreamResponse", bad_chunk)
    bad_usage = {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    bad_response = {
        **ResponsesDialect(Ids(), "m", {}).document(Answer.of(Reply.text("x"), {})),
        "usage": bad_usage,
    }
    assert any("input_tokens_details" in e for e in openai_errors("Response", bad_response))


# ---------------------------------------------------------------------------------------------
# Chat Completions
# ---------------------------------------------------------------------------------------------


def test_chat_plain_default_reply(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    completion = chat(client)
    assert completion.choices[0].message.content == DEFAULT_TEXT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "gpt-4o-mini"
    assert upstream.last.path == "/v1/chat/completions"
    assert upstream.last.headers["authorization"] == "Bearer sk-test"
    assert upstream.last.body == {"model": "gpt-4o-mini", "messages": MESSAGES}


def test_chat_usage_carries_cached_and_reasoning_tokens(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    upstream.script(Reply.text("Hi", usage=(30, 9), cached=10, reasoning_tokens=4))
    usage = chat(client).usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 9, 39)
    assert usage.prompt_tokens_details.cached_tokens == 10
    assert usage.completion_tokens_details.reasoning_tokens == 4


def test_chat_stream_with_usage_frames_exactly_as_the_spec_says(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("Hello big world", usage=(3, 4)))
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    status, raw = post_raw(upstream.url + "/chat/completions", json.dumps(body).encode())
    assert status == 200
    events = sse_events(raw)
    assert events[-1] == (None, "[DONE]")
    assert all(name is None for name, _ in events), "Chat streams have no event: lines"
    chunks = [json.loads(data) for _, data in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:4]] == ["Hello ", "big ", "world"]
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 7
    assert all(c["usage"] is None for c in chunks[:-1])
    assert len({(c["id"], c["created"], c["model"]) for c in chunks}) == 1


def test_chat_stream_without_include_usage_sends_no_usage(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    chunks = list(chat(client, stream=True))
    assert all(c.choices and c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == DEFAULT_TEXT


def test_chat_stream_uses_scripted_chunks(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("Hello", chunks=["He", "l", "lo"]))
    deltas = [c.choices[0].delta.content for c in chat(client, stream=True)]
    assert deltas == ["", "He", "l", "lo", None]


def test_chat_tool_calls(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.tool_calls(CALLS))
    choice = chat(client).choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == CALLS
    assert all(c.id.startswith("call_") for c in calls) and len({c.id for c in calls}) == 2


def test_chat_tool_calls_streamed_in_fragments(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.tool_calls(CALLS, text="Checking."))
    chunks = list(chat(client, stream=True))
    fragments: dict[int, list[str]] = {}
    names = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or []:
            if call.id:
                names[call.index] = (call.id, call.function.name)
            fragments.setdefault(call.index, []).append(call.function.arguments or "")
    assert [(names[i][1], "".join(fragments[i])) for i in sorted(fragments)] == CALLS
    assert all(len([f for f in parts if f]) > 1 for parts in fragments.values()), "arguments arrive in pieces"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Checking."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_chat_incomplete_is_finish_reason_length(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.incomplete("cut sh"), Reply.incomplete("cut sh"))
    assert chat(client).choices[0].finish_reason == "length"
    assert [c.choices[0].finish_reason for c in chat(client, stream=True)][-1] == "length"


def test_chat_reasoning_content_extension(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.reasoning(["Think hard."], text="42"), Reply.reasoning(["Think hard."], text="42"))
    message = chat(client).choices[0].message
    assert message.content == "42"
    assert message.model_extra == {"reasoning_content": "Think hard."}
    deltas = [c.choices[0].delta for c in chat(client, stream=True)]
    assert "".join((d.model_extra or {}).get("reasoning_content", "") for d in deltas) == "Think hard."


def test_chat_mid_stream_error_raises_api_error(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.stream_error("one two three", after=2, message="server exploded"))
    received = []
    with pytest.raises(openai.APIError, match="server exploded"):
        for chunk in chat(client, stream=True):
            received.append(chunk)
    assert len(received) == 2


def test_chat_echo_returns_the_request(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.echo())
    assert json.loads(chat(client, temperature=0.5).choices[0].message.content) == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "temperature": 0.5,
    }


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------

TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_responses_plain(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("Bonjour!", usage=(12, 3), cached=2, reasoning_tokens=1))
    response = client.responses.create(model="gpt-4.1", input="Say hi", instructions="Be brief.")
    assert response.output_text == "Bonjour!"
    assert response.status == "completed" and response.id.startswith("resp_")
    assert response.instructions == "Be brief."
    assert response.output[0].id.startswith("msg_")
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (12, 3, 15)
    assert usage.input_tokens_details.cached_tokens == 2
    assert usage.output_tokens_details.reasoning_tokens == 1


def test_responses_stream_event_order(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("Hi there"))
    events = list(client.responses.create(model="gpt-4.1", input="Say hi", stream=True))
    assert [e.type for e in events] == TEXT_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(TEXT_EVENTS)))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == ["Hi ", "there"]
    final = events[-1].response
    assert final.output_text == "Hi there" and final.usage is not None
    assert events[0].response.status == "in_progress"


def test_responses_stream_wire_format_has_event_lines(upstream: FakeUpstream) -> None:
    body = {"model": "m", "input": "hi", "stream": True}
    status, raw = post_raw(upstream.url + "/responses", json.dumps(body).encode())
    assert status == 200
    events = sse_events(raw)
    assert all(name == json.loads(data)["type"] for name, data in events)
    assert "[DONE]" not in raw.decode()


def test_responses_tool_calls(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.tool_calls(CALLS))
    output = client.responses.create(model="gpt-4.1", input="Weather?").output
    assert [(item.type, item.name, item.arguments) for item in output] == [
        ("function_call", *c) for c in CALLS
    ]
    assert all(item.id.startswith("fc_") and item.call_id.startswith("call_") for item in output)


def test_responses_tool_calls_streamed(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.tool_calls(CALLS))
    events = list(client.responses.create(model="gpt-4.1", input="Weather?", stream=True))
    for index, (name, arguments) in enumerate(CALLS):
        deltas = [e.delta for e in events if e.type.endswith("arguments.delta") and e.output_index == index]
        assert len(deltas) > 1 and "".join(deltas) == arguments
        done = next(e for e in events if e.type.endswith("arguments.done") and e.output_index == index)
        assert (done.name, done.arguments) == (name, arguments)
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [(i.type, i.arguments, i.status) for i in added] == [("function_call", "", "in_progress")] * 2
    assert events[-1].type == "response.completed"


def test_responses_reasoning_with_encrypted_content(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    reply = Reply.reasoning(["Step one.", "Step two."], text="Done.", encrypted="enc-abc")
    upstream.script(reply)
    events = list(
        client.responses.create(
            model="o4-mini", input="Think", stream=True, store=False, include=["reasoning.encrypted_content"]
        )
    )
    types = [e.type for e in events]
    assert types[2:5] == [
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
    ]
    assert types.count("response.reasoning_summary_part.done") == 2
    added = events[2].item
    assert added.type == "reasoning" and added.summary == [] and added.encrypted_content is None
    done = next(
        e.item for e in events if e.type == "response.output_item.done" and e.item.type == "reasoning"
    )
    assert done.id.startswith("rs_") and done.encrypted_content == "enc-abc"
    assert [s.text for s in done.summary] == ["Step one.", "Step two."]
    final = events[-1].response
    assert [item.type for item in final.output] == ["reasoning", "message"] and final.output_text == "Done."


def test_responses_reasoning_without_include_has_no_encrypted_content(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    upstream.script(Reply.reasoning(["Step one."]))
    response = client.responses.create(model="o4-mini", input="Think")
    assert response.output[0].type == "reasoning"
    assert "encrypted_content" not in response.output[0].model_fields_set


def test_responses_incomplete(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.incomplete("cut sh"), Reply.incomplete("cut sh"))
    response = client.responses.create(model="gpt-4.1", input="Long story", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    events = list(client.responses.create(model="gpt-4.1", input="Long story", stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


def test_responses_failed(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.stream_error(after=3, message="server exploded"), Reply.stream_error())
    events = list(client.responses.create(model="gpt-4.1", input="hi", stream=True))
    assert [e.type for e in events] == [*TEXT_EVENTS[:3], "response.failed"]
    assert events[-1].sequence_number == 3
    assert events[-1].response.status == "failed"
    assert events[-1].response.error.message == "server exploded"
    response = client.responses.create(model="gpt-4.1", input="hi")
    assert response.status == "failed" and response.error.code == "server_error"


def test_responses_multi_turn_input_items(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """Typed input items, tools and a replayed function call all pass the request checks."""
    tool = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}
    items: Any = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    response = client.responses.create(model="gpt-4.1", input=items, tools=[tool], tool_choice="auto")
    assert response.tools[0].name == "get_weather"
    assert upstream.last.body["input"] == items


def test_responses_store_get_delete(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("Kept."))
    created = client.responses.create(model="gpt-4.1", input="hi")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == "Kept."
    client.responses.delete(created.id)
    assert upstream.last.method == "DELETE" and upstream.last.path == f"/v1/responses/{created.id}"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_responses_store_false_is_not_kept(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    created = client.responses.create(model="gpt-4.1", input="hi", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_responses_previous_response_id(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    first = client.responses.create(model="gpt-4.1", input="hi")
    second = client.responses.create(model="gpt-4.1", input="again", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="gpt-4.1", input="again", previous_response_id="resp_missing")
    assert caught.value.code == "previous_response_not_found"
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert caught.value.body["type"] == "invalid_request_error"  # type: ignore[index]


# ---------------------------------------------------------------------------------------------
# Embeddings and models
# ---------------------------------------------------------------------------------------------


def test_embeddings_float(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    result = client.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert [d.embedding for d in result.data] == [embedding_for("a b"), embedding_for("c")]
    assert len(result.data[0].embedding) == 8
    assert result.usage.prompt_tokens == result.usage.total_tokens == 3
    assert upstream.last.body["encoding_format"] == "float"


def test_embeddings_base64_is_the_sdk_default(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input="hello", dimensions=16)
    assert upstream.last.body["encoding_format"] == "base64"
    assert result.data[0].embedding == embedding_for("hello", 16)


def test_models_list_and_retrieve(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == upstream.models
    model = client.models.retrieve("gpt-4.1")
    assert (model.id, model.object, model.owned_by) == ("gpt-4.1", "model", "openai")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


def test_configurable_models() -> None:
    with FakeUpstream(models=["only-one"]) as fake, openai.OpenAI(base_url=fake.url, api_key="k") as sdk:
        assert [m.id for m in sdk.models.list()] == ["only-one"]
        assert fake.violations == []


# ---------------------------------------------------------------------------------------------
# Failures
# ---------------------------------------------------------------------------------------------


def test_rate_limit_with_retry_after(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.error(429, "Slow down", headers={"retry-after": "1"}))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.message == "Error code: 429 - Slow down"


def test_sdk_retries_honour_retry_after_ms(upstream: FakeUpstream) -> None:
    upstream.script(Reply.error(503, "busy", headers={"retry-after-ms": "20"}), Reply.text("Recovered."))
    with openai.OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=1) as sdk:
        started = time.monotonic()
        assert chat(sdk).choices[0].message.content == "Recovered."
    assert time.monotonic() - started < 1.0, "a 20 ms retry-after-ms must not wait for the default backoff"
    assert [r.headers.get("x-stainless-retry-count") for r in upstream.requests] == ["0", "1"]


def test_error_kinds_map_to_sdk_exceptions(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    cases = [
        (Reply.error(400, "bad", code="invalid_value"), openai.BadRequestError),
        (Reply.error(401), openai.AuthenticationError),
        (Reply.error(404), openai.NotFoundError),
        (Reply.error(500), openai.InternalServerError),
    ]
    for reply, exception in cases:
        upstream.script(reply)
        with pytest.raises(exception):
            chat(client)


def test_html_error_page(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.html(502))
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client)
    assert caught.value.status_code == 502
    assert caught.value.response.headers["content-type"].startswith("text/html")
    assert "cloudflare" in caught.value.response.text


def test_truncated_chat_stream_raises_connection_error(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """The SDK surfaces an incomplete chunked read as APIConnectionError, after the chunks that did arrive."""
    upstream.script(Reply.truncated("one two three four", after=3))
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in chat(client, stream=True):
            received.append(chunk)
    assert len(received) == 3 and received[-1].choices[0].finish_reason is None


def test_truncated_responses_stream_never_completes(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.truncated("one two three four", after=5))
    received = []
    with pytest.raises(openai.APIConnectionError):
        for event in client.responses.create(model="gpt-4.1", input="hi", stream=True):
            received.append(event.type)
    assert received == TEXT_EVENTS[:5]


def test_truncated_plain_body(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.truncated())
    with pytest.raises(openai.APIConnectionError):
        chat(client)


def test_garbage_bodies(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    """Not-JSON where JSON is due: the SDK lets json.JSONDecodeError escape (not an APIError)."""
    upstream.script(Reply.garbage(), Reply.garbage())
    with pytest.raises(json.JSONDecodeError):
        chat(client)
    received = []
    with pytest.raises(json.JSONDecodeError):
        for chunk in chat(client, stream=True):
            received.append(chunk)
    assert len(received) == 1


def test_raw_reply(upstream: FakeUpstream) -> None:
    upstream.script(Reply.raw(418, b"short and stout", {"X-Teapot": "yes"}))
    status, body = post_raw(
        upstream.url + "/chat/completions", json.dumps({"model": "m", "messages": MESSAGES}).encode()
    )
    assert (status, body) == (418, b"short and stout")


def test_delay_trips_client_timeout(upstream: FakeUpstream) -> None:
    upstream.script(Reply.delay(1.0, then=Reply.text("late")))
    sdk = openai.OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0, timeout=0.2)
    with sdk, pytest.raises(openai.APITimeoutError):
        chat(sdk)


def test_chunk_delay_slows_the_stream(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("a b c d", chunk_delay=0.05))
    started = time.monotonic()
    assert "".join(c.choices[0].delta.content or "" for c in chat(client, stream=True)) == "a b c d"
    assert time.monotonic() - started >= 0.25  # 6 frames, 5 gaps of 50 ms


# ---------------------------------------------------------------------------------------------
# Scripting
# ---------------------------------------------------------------------------------------------


def test_queue_order_then_default(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("one"), Reply.text("two"))
    assert [chat(client).choices[0].message.content for _ in range(3)] == ["one", "two", DEFAULT_TEXT]


def test_per_model_queues_take_precedence(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("global"))
    upstream.for_model("backup", Reply.text("from backup"))
    upstream.for_model("primary", Reply.error(503))
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="primary", messages=MESSAGES)  # type: ignore[arg-type]
    backup = client.chat.completions.create(model="backup", messages=MESSAGES)  # type: ignore[arg-type]
    assert backup.choices[0].message.content == "from backup"
    assert chat(client).choices[0].message.content == "global"


def test_one_reply_renders_in_each_dialect(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("same"), Reply.text("same"))
    assert chat(client).choices[0].message.content == "same"
    assert client.responses.create(model="gpt-4.1", input="hi").output_text == "same"


def test_reset_clears_everything(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("queued"))
    upstream.for_model("x", Reply.text("queued"))
    created = client.responses.create(model="gpt-4.1", input="hi")
    upstream.reset()
    assert upstream.requests == [] and created.id not in upstream.stored
    assert chat(client).choices[0].message.content == DEFAULT_TEXT


async def test_async_client_concurrent_streams(upstream: FakeUpstream, aclient: openai.AsyncOpenAI) -> None:
    upstream.script(*[Reply.text("slow and steady", chunk_delay=0.05) for _ in range(4)])

    async def one() -> str:
        stream = await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    started = time.monotonic()
    assert await asyncio.gather(*[one() for _ in range(4)]) == ["slow and steady"] * 4
    assert time.monotonic() - started < 0.8, "streams are served concurrently"


async def test_async_responses(upstream: FakeUpstream, aclient: openai.AsyncOpenAI) -> None:
    upstream.script(Reply.tool_calls(CALLS[:1]))
    stream = await aclient.responses.create(model="gpt-4.1", input="hi", stream=True)
    events = [event async for event in stream]
    assert events[-1].response.output[0].call_id.startswith("call_")


# ---------------------------------------------------------------------------------------------
# Azure OpenAI shapes (PROTOCOLS.md section 7)
# ---------------------------------------------------------------------------------------------


def test_azure_classic_deployment_paths(upstream: FakeUpstream) -> None:
    with openai.AzureOpenAI(
        api_key="azure-key", api_version="2024-10-21", azure_endpoint=upstream.root, max_retries=0
    ) as azure:
        upstream.script(Reply.text("from azure"))
        completion = azure.chat.completions.create(model="my-deployment", messages=MESSAGES)  # type: ignore[arg-type]
        assert completion.choices[0].message.content == "from azure"
        chat_request = upstream.last
        azure.embeddings.create(model="my-embedder", input="hi")
        embeddings_request = upstream.last
        assert azure.responses.create(model="my-deployment", input="hi").output_text == DEFAULT_TEXT
        responses_request = upstream.last
    assert chat_request.path == "/openai/deployments/my-deployment/chat/completions"
    assert embeddings_request.path == "/openai/deployments/my-embedder/embeddings"
    assert responses_request.path == "/openai/responses"
    for recorded in (chat_request, embeddings_request, responses_request):
        assert recorded.query == {"api-version": "2024-10-21"}
        assert recorded.headers["api-key"] == "azure-key"


def test_azure_v1_paths(upstream: FakeUpstream) -> None:
    with openai.OpenAI(base_url=upstream.root + "/openai/v1", api_key="azure-key", max_retries=0) as azure:
        assert chat(azure).choices[0].message.content == DEFAULT_TEXT
        assert upstream.last.path == "/openai/v1/chat/completions"
        events = list(azure.responses.create(model="my-deployment", input="hi", stream=True))
        assert events[-1].type == "response.completed"
        assert upstream.last.path == "/openai/v1/responses"
        assert upstream.last.query == {}


def test_azure_classic_request_without_api_version_is_flagged(upstream: FakeUpstream) -> None:
    url = upstream.root + "/openai/deployments/dep/chat/completions"
    status, _ = post_raw(url, json.dumps({"messages": MESSAGES}).encode(), {"api-key": "k"})
    assert status == 200
    assert upstream.violations == [
        "POST /openai/deployments/dep/chat/completions: Azure request without the api-version query parameter"
    ]
    upstream.violations.clear()


# ---------------------------------------------------------------------------------------------
# Requests the real API would reject land in ``violations``
# ---------------------------------------------------------------------------------------------


def test_invalid_request_is_recorded_but_answered(upstream: FakeUpstream) -> None:
    status, body = post_raw(upstream.url + "/chat/completions", b'{"model": 1}')
    assert status == 200 and json.loads(body)["object"] == "chat.completion"
    assert upstream.last.body == {"model": 1}
    violations = "\n".join(upstream.violations)
    assert "POST /v1/chat/completions: request not a valid CreateChatCompletionRequest" in violations
    assert "'messages' is a required property" in violations
    assert "$.model" in violations
    upstream.violations.clear()


def test_unknown_request_fields_are_recorded(upstream: FakeUpstream) -> None:
    body = {
        "model": "m",
        "input": "hi",
        "messages": MESSAGES,
        "stream_options": {"include_obfuscation": False},
    }
    post_raw(upstream.url + "/responses", json.dumps(body).encode())
    assert upstream.violations == [
        "POST /v1/responses: request field 'messages' is not in CreateResponse",
        "POST /v1/responses: stream_options is only allowed when stream is true",
    ]
    upstream.violations.clear()


def test_body_that_is_not_json_gets_a_400(upstream: FakeUpstream) -> None:
    status, body = post_raw(upstream.url + "/embeddings", b"{not json")
    assert status == 400
    assert_openai("ErrorResponse", json.loads(body))
    assert upstream.violations == ["POST /v1/embeddings: request body is not valid JSON"]
    assert upstream.last.raw == b"{not json" and upstream.last.body is None
    upstream.violations.clear()


def test_missing_auth_is_recorded(upstream: FakeUpstream) -> None:
    request = urllib.request.Request(upstream.url + "/models")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert upstream.violations == ["GET /v1/models: request without Authorization: Bearer"]
    upstream.violations.clear()


def test_own_server_lifecycle() -> None:
    fake = FakeUpstream().start()
    try:
        assert fake.url.startswith("http://127.0.0.1:") and fake.url.endswith("/v1")
        assert fake.url == fake.root + "/v1"
        status, _ = post_raw(fake.url + "/embeddings", json.dumps({"model": "e", "input": "x"}).encode())
        assert status == 200 and fake.violations == []
    finally:
        fake.stop()
    with pytest.raises(urllib.error.URLError):
        post_raw(fake.url + "/embeddings", b"{}")
