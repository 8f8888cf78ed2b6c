"""The fake upstream, driven by the official ``openai``, ``anthropic`` and ``google-genai`` SDKs and
by plain HTTP, plus the spec helpers it relies on.

If the SDKs parse what the fake sends into the objects we scripted, and the fake's own output
passes the vendors' schemas, then tests that use the fake are testing against the real wire
format rather than against our own idea of it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync import client as ws_client

from tests.fake_upstream import (
    DEFAULT_TEXT,
    Answer,
    AnthropicDialect,
    ChatDialect,
    FakeUpstream,
    GeminiDialect,
    Ids,
    Reply,
    ResponsesDialect,
    anthropic_signature,
    count_tokens,
    embedding_for,
    gemini_signature,
    gemini_signature_is_minted,
    google_error_problems,
)
from tests.spec import (
    ANTHROPIC,
    GEMINI,
    GEMINI_PROTOS,
    OPENAI,
    anthropic_errors,
    assert_anthropic,
    assert_gemini,
    assert_openai,
    gemini_errors,
    gemini_unknown_fields,
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
# Responses over WebSocket (PROTOCOLS.md 2.7)
# ---------------------------------------------------------------------------------------------

_ENDS = ("response.completed", "response.incomplete", "response.failed", "error")


def ws_url(upstream: FakeUpstream, path: str = "/v1/responses") -> str:
    return upstream.root.replace("http://", "ws://") + path


def turns(socket: ws_client.ClientConnection, *frames: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Send each frame on ``socket`` and collect its events, up to the one that ends it."""
    answers = []
    for frame in frames:
        socket.send(json.dumps(frame))
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] not in _ENDS:
            events.append(json.loads(socket.recv(timeout=10)))
        answers.append(events)
    return answers


def open_socket(
    upstream: FakeUpstream, path: str = "/v1/responses", **headers: str
) -> ws_client.ClientConnection:
    return ws_client.connect(
        ws_url(upstream, path), additional_headers=headers or {"Authorization": "Bearer sk-test"}
    )


def create_frame(**fields: Any) -> dict[str, Any]:
    return {"type": "response.create", "model": "gpt-4.1", "store": False, "input": "hi", **fields}


# openai's connect() opens its websockets connection in a way websockets 17.1+ deprecates.
@pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
def test_socket_serves_the_official_sdk(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("Hello over a socket"))
    with client.responses.connect() as connection:
        connection.response.create(model="gpt-4.1", input="hi", store=False)
        events = []
        for event in connection:
            events.append(event)
            if event.type == "response.completed":
                break
    assert events[-1].response.output_text == "Hello over a socket"  # type: ignore[union-attr]
    frame = upstream.last
    assert frame.websocket and frame.socket > 0 and frame.method == "GET" and frame.path == "/v1/responses"
    assert frame.body["type"] == "response.create" and "stream" not in frame.body
    assert frame.headers["authorization"] == "Bearer sk-test"
    assert json.loads(frame.raw) == frame.body


def test_socket_events_are_the_sse_events_as_text_frames(upstream: FakeUpstream) -> None:
    reply = Reply.tool_calls(CALLS[:1], text="Let me check.", summary=["thinking"], usage=(12, 7))
    upstream.script(reply, reply)
    status, raw = post_raw(
        upstream.url + "/responses", json.dumps({"model": "gpt-4.1", "input": "hi", "stream": True}).encode()
    )
    assert status == 200
    over_http = [json.loads(data) for _, data in sse_events(raw)]
    with open_socket(upstream) as socket:
        [over_socket] = turns(socket, create_frame(store=True))

    def shape(events: list[dict[str, Any]]) -> list[Any]:
        # Ids and timestamps differ between two responses; everything else must be the same.
        text = re.sub(r'"(resp|msg|fc|rs|call)_fake\w+"', '"ID"', json.dumps(events))
        return json.loads(re.sub(r'"(created_at|completed_at)": \d+', r'"\1": 0', text))

    assert len(over_socket) == len(over_http) > 10
    assert shape(over_socket) == shape(over_http)
    for event in over_socket:
        assert_openai("ResponsesServerEvent", event)


def test_socket_chains_on_its_most_recent_response_even_unstored(upstream: FakeUpstream) -> None:
    with open_socket(upstream) as socket, open_socket(upstream) as other:
        [first], [second] = turns(socket, create_frame()), turns(socket, create_frame(input="more"))
        first_id, second_id = first[-1]["response"]["id"], second[-1]["response"]["id"]
        [chained] = turns(socket, create_frame(previous_response_id=second_id, input="again"))
        assert chained[-1]["response"]["previous_response_id"] == second_id
        # Only the most recent response is remembered, and only on its own connection.
        [older] = turns(socket, create_frame(previous_response_id=first_id))
        [elsewhere] = turns(other, create_frame(previous_response_id=chained[-1]["response"]["id"]))
    for (error,) in (older, elsewhere):
        assert_openai("ResponseWsError", error)
        assert error["status"] == 404 and error["error"]["code"] == "previous_response_not_found"
        assert error["error"]["param"] == "previous_response_id"
    assert len(upstream.sockets) == 2 and upstream.requests[-1].socket == upstream.sockets[1]


def test_socket_chains_on_stored_responses_from_anywhere(upstream: FakeUpstream) -> None:
    with open_socket(upstream) as socket, open_socket(upstream) as other:
        [stored] = turns(socket, create_frame(store=True))
        turns(socket, create_frame())
        [chained] = turns(other, create_frame(previous_response_id=stored[-1]["response"]["id"]))
    assert chained[-1]["type"] == "response.completed"
    assert stored[-1]["response"]["id"] in upstream.stored


def test_socket_tool_output_must_answer_a_call_in_its_chain(upstream: FakeUpstream) -> None:
    upstream.script(Reply.tool_calls(CALLS[:1]), Reply.text("sunny"), Reply.tool_calls(CALLS[:1]))
    with open_socket(upstream) as socket:
        [first] = turns(socket, create_frame())
        call = first[-1]["response"]["output"][0]
        output = {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"}
        [answered] = turns(
            socket, create_frame(previous_response_id=first[-1]["response"]["id"], input=[output])
        )
        [orphan] = turns(socket, create_frame(input=[{**output, "call_id": "call_unknown"}]))
        replayed = [{k: v for k, v in call.items() if k != "status"}, output]
        [whole] = turns(socket, create_frame(input=replayed))
    assert answered[-1]["response"]["output"][0]["content"][0]["text"] == "sunny"
    assert orphan[-1]["status"] == 400 and "call_unknown" in orphan[-1]["error"]["message"]
    assert whole[-1]["type"] == "response.completed"


def test_socket_warm_up_generates_nothing_and_takes_no_reply(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("the real answer"))
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": None}]
    with open_socket(upstream) as socket:
        [warm] = turns(socket, create_frame(generate=False, input=[], tools=tools, instructions="Be brief."))
        warm_id = warm[-1]["response"]["id"]
        [real] = turns(socket, create_frame(previous_response_id=warm_id, tools=tools))
    assert [e["type"] for e in warm] == ["response.created", "response.completed"]
    done = warm[-1]["response"]
    assert done["output"] == [] and done["usage"]["input_tokens"] == done["usage"]["output_tokens"] == 0
    assert done["instructions"] == "Be brief."
    assert real[-1]["response"]["output"][0]["content"][0]["text"] == "the real answer"


def test_socket_failures(upstream: FakeUpstream) -> None:
    upstream.script(
        Reply.error(429, "slow down", headers={"retry-after": "2"}),
        Reply.stream_error(after=3, message="exploded"),
        Reply.text("still here"),
        Reply.error(400, "too old", code="websocket_connection_limit_reached"),
    )
    with open_socket(upstream) as socket:
        limited, failed, fine, ended = turns(socket, *[create_frame(stream_id="lane.1")] * 4)
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
    assert_openai("ResponseWsError", limited[0])
    assert limited[0] == {
        "type": "error",
        "status": 429,
        "stream_id": "lane.1",
        "error": {
            "type": "requests",
            "code": "rate_limit_exceeded",
            "message": "slow down",
            "param": None,
            "headers": {"retry-after": "2"},
        },
    }
    assert len(failed) == 4 and failed[-1]["response"]["error"]["message"] == "exploded"
    assert fine[-1]["response"]["output"][0]["content"][0]["text"] == "still here"
    assert all(e["stream_id"] == "lane.1" for e in [*failed, *fine])
    assert ended[0]["error"]["code"] == "websocket_connection_limit_reached"


def test_socket_truncated_reply_drops_the_connection(upstream: FakeUpstream) -> None:
    upstream.script(Reply.truncated(after=2))
    with open_socket(upstream) as socket:
        socket.send(json.dumps(create_frame()))
        received = [json.loads(socket.recv(timeout=10)) for _ in range(2)]
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
    assert [e["type"] for e in received] == ["response.created", "response.in_progress"]


def test_socket_frames_are_checked_against_the_spec(upstream: FakeUpstream) -> None:
    metadata = {f"key{i}": "v" for i in range(17)}
    with open_socket(upstream) as socket:
        turns(socket, create_frame(stream=True, background=False, metadata=metadata, surprise=1))
        socket.send("not json {")
        assert json.loads(socket.recv(timeout=10))["status"] == 400
        turns(socket, create_frame(type="response.cancel"))
    violations = "\n".join(upstream.violations)
    upstream.violations.clear()
    assert "'stream' is implied and must not be sent over WebSocket" in violations
    assert "'background' is not supported over WebSocket" in violations
    assert "metadata has 17 keys; at most 16 are allowed" in violations
    assert "frame field 'surprise' is not in ResponsesClientEventResponseCreate" in violations
    assert "WebSocket frame is not a JSON object" in violations
    assert "'response.cancel' is not one of ['response.create']" in violations
    assert upstream.requests[-2].raw == b"not json {" and upstream.requests[-2].body is None


def test_socket_handshakes(upstream: FakeUpstream) -> None:
    upstream.refuse_upgrades(Reply.error(503, "down for a moment"))
    with pytest.raises(InvalidStatus) as refused:
        open_socket(upstream)
    assert refused.value.response.status_code == 503
    for path, headers in (
        ("/openai/v1/responses", {"Authorization": "Bearer azure-key"}),
        ("/openai/responses?api-version=2025-04-01-preview", {"api-key": "azure-key"}),
    ):
        with open_socket(upstream, path, **headers) as socket:
            [events] = turns(socket, create_frame())
        assert events[-1]["type"] == "response.completed"
        assert upstream.last.path == path.partition("?")[0]
    with open_socket(upstream, **{"X-Nothing": "1"}) as socket:
        turns(socket, create_frame())
    assert upstream.violations == ["GET /v1/responses: request without Authorization: Bearer"]
    upstream.violations.clear()
    status, _ = post_raw(upstream.url + "/responses", b"{}")  # HTTP POST still answers there
    upstream.violations.clear()
    assert status == 200


def test_drop_sockets_cuts_open_connections(upstream: FakeUpstream) -> None:
    with open_socket(upstream) as socket:
        turns(socket, create_frame())
        assert upstream.drop_sockets() == 1
        with pytest.raises(ConnectionClosed):
            socket.recv(timeout=10)
    assert upstream.drop_sockets() == 0


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


# =============================================================================================
# Anthropic Messages and Gemini, served by the same fake
# =============================================================================================

CLAUDE = "claude-fake-1"
GEMINI_MODEL = "gemini-fake-flash"
ANTHROPIC_HEADERS = {"x-api-key": "sk-ant-test", "anthropic-version": "2023-06-01"}
GEMINI_HEADERS = {"x-goog-api-key": "gk-test"}
CLAUDE_MESSAGES: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
GEMINI_CONTENTS = [{"role": "user", "parts": [{"text": "What is the weather in Paris?"}]}]


@pytest.fixture
def claude(upstream: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=upstream.root, api_key="sk-ant-test", max_retries=0) as sdk:
        yield sdk


@pytest.fixture
def gemini(upstream: FakeUpstream) -> Iterator[genai.Client]:
    options = genai_types.HttpOptions(
        base_url=upstream.root,
        api_version="v1beta",
        retry_options=genai_types.HttpRetryOptions(attempts=1),
    )
    sdk = genai.Client(api_key="gk-test", http_options=options)
    yield sdk
    sdk.close()


def http_post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """POST with exactly these headers (plus Content-Type); returns status, lower-cased headers, body."""
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **headers}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def create(claude: anthropic.Anthropic, **kw: Any) -> Any:
    return claude.messages.create(
        model=CLAUDE, max_tokens=2048, messages=kw.pop("messages", CLAUDE_MESSAGES), **kw
    )


def gemini_url(upstream: FakeUpstream, method: str, model: str = GEMINI_MODEL) -> str:
    return f"{upstream.root}/v1beta/models/{model}:{method}"


def gemini_sse_chunks(raw: bytes) -> list[Any]:
    """Split a Gemini SSE body as Google frames it: ``data: <json>\\r\\n\\r\\n``, nothing else."""
    assert raw.endswith(b"\r\n\r\n"), raw[-20:]
    blocks = raw.decode().split("\r\n\r\n")[:-1]
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks), blocks
    return [json.loads(block.removeprefix("data: ")) for block in blocks]


def chunk_parts(chunk: Any) -> list[Any]:
    return list(chunk["candidates"][0].get("content", {}).get("parts", []))


# ---------------------------------------------------------------------------------------------
# spec.py: the Anthropic and Gemini sources
# ---------------------------------------------------------------------------------------------

ANTHROPIC_SCHEMAS = [
    "CreateMessageParams",
    "CountMessageTokensParams",
    "CountMessageTokensResponse",
    "Message",
    "MessageStreamEvent",
    "ErrorResponse",
]


@pytest.mark.parametrize("name", [*ANTHROPIC_SCHEMAS, *(f"Beta{n}" for n in ANTHROPIC_SCHEMAS)])
def test_spec_anthropic_schema_names_exist(name: str) -> None:
    assert ANTHROPIC.schema(name)


@pytest.mark.parametrize(
    "name", ["GenerateContentRequest", "GenerateContentResponse", "CountTokensRequest", "CountTokensResponse"]
)
def test_spec_gemini_names_exist_in_the_openapi_and_the_protos(name: str) -> None:
    assert GEMINI.schema(name)
    assert GEMINI_PROTOS.message(name)


def test_spec_gemini_protos_are_read_whole() -> None:
    """oneof members, nested messages, maps and free JSON all come out of the .proto reader."""
    part = GEMINI_PROTOS.message("Part")
    assert {"text", "functionCall", "function_call", "thoughtSignature", "thought_signature"} <= set(part)
    assert part["functionCall"].message == "google.ai.generativelanguage.v1beta.FunctionCall"
    assert GEMINI_PROTOS.message("FunctionCall")["args"].message is None  # google.protobuf.Struct
    properties = GEMINI_PROTOS.message("Schema")["properties"]
    assert properties.is_map and properties.message == "google.ai.generativelanguage.v1beta.Schema"
    usage = GEMINI_PROTOS.message("GenerateContentResponse")["usageMetadata"].message
    assert usage == "google.ai.generativelanguage.v1beta.GenerateContentResponse.UsageMetadata"
    assert "thinkingLevel" in GEMINI_PROTOS.message("ThinkingConfig")  # live field the protos lack
    with pytest.raises(KeyError, match=r"\.proto"):
        GEMINI_PROTOS.message("NoSuchMessage")


def test_spec_gemini_unknown_fields_at_any_depth_in_either_spelling() -> None:
    request = {
        "contents": [
            {"role": "user", "parts": [{"text": "hi", "bogus": 1}]},
            {"role": "model", "parts": [{"function_call": {"name": "f", "args": {"free": {"form": 1}}}}]},
        ],
        "generation_config": {"thinkingConfig": {"include_thoughts": True, "thinking_level": "LOW", "x": 1}},
        "tools": [
            {
                "functionDeclarations": [
                    {
                        "name": "f",
                        "parameters": {"type": "OBJECT", "properties": {"a": {"type": "STRING", "zz": 1}}},
                        "parametersJsonSchema": {"anything": {"goes": True}},
                    }
                ]
            }
        ],
        "toplevel": True,
    }
    assert gemini_unknown_fields("GenerateContentRequest", request) == [
        "$.contents[0].parts[0].bogus",
        "$.generation_config.thinkingConfig.x",
        "$.tools[0].functionDeclarations[0].parameters.properties.a.zz",
        "$.toplevel",
    ]


def test_spec_gemini_types_are_checked_in_either_spelling() -> None:
    request = {"contents": [{"parts": [{"text": 1}]}], "generation_config": {"temperature": "hot"}}
    assert gemini_errors("GenerateContentRequest", request) == [
        "$.contents[0].parts[0].text: 1 is not of type 'string'",
        "$.generationConfig.temperature: 'hot' is not of type 'number'",
    ]
    assert gemini_errors("GenerateContentRequest", {}) == ["$: 'contents' is a required property"]
    with pytest.raises(AssertionError, match="unknown field"):
        assert_gemini("GenerateContentRequest", {"contents": [], "nope": 1})


# ---------------------------------------------------------------------------------------------
# The fake's Anthropic and Gemini output passes the specs (without HTTP, for every reply shape)
# ---------------------------------------------------------------------------------------------

CLAUDE_REQUEST = {"model": CLAUDE, "max_tokens": 64, "messages": CLAUDE_MESSAGES}


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
@pytest.mark.parametrize("kind", list(CONTENT_REPLIES))
def test_fake_anthropic_output_is_valid_against_the_spec(kind: str, beta: bool) -> None:
    prefix = "Beta" if beta else ""
    answer = Answer.of(CONTENT_REPLIES[kind], CLAUDE_REQUEST)
    dialect = AnthropicDialect(Ids(), CLAUDE, CLAUDE_REQUEST, "req_1", beta)
    assert_anthropic(f"{prefix}Message", dialect.document(answer))
    stream = AnthropicDialect(Ids(), CLAUDE, CLAUDE_REQUEST, "req_1", beta).stream(answer)
    for frame in stream.frames:
        expected = "Ping" if frame.event == "ping" else f"{prefix}MessageStreamEvent"
        assert frame.schema == expected and frame.event == frame.data["type"]  # type: ignore[index]
        assert_anthropic(frame.schema, frame.data)
    error = stream.error_frame(9, "boom")
    assert error.event == "error" and error.schema == f"{prefix}ErrorResponse"
    assert_anthropic(error.schema, error.data)
    assert_anthropic(f"{prefix}CountMessageTokensResponse", dialect.count(CLAUDE_REQUEST))


@pytest.mark.parametrize("kind", list(CONTENT_REPLIES))
def test_fake_gemini_output_is_valid_against_the_spec_and_protos(kind: str) -> None:
    body = {"contents": GEMINI_CONTENTS}
    answer = Answer.of(CONTENT_REPLIES[kind], body)
    assert_gemini("GenerateContentResponse", GeminiDialect(Ids(), GEMINI_MODEL, body).document(answer))
    stream = GeminiDialect(Ids(), GEMINI_MODEL, body).stream(answer)
    for frame in stream.frames:
        assert frame.schema == "GenerateContentResponse" and frame.newline == "\r\n"
        assert_gemini("GenerateContentResponse", frame.data)
    assert google_error_problems(stream.error_frame(3, "boom").data, 500) == []
    assert_gemini("CountTokensResponse", GeminiDialect(Ids(), GEMINI_MODEL, body).count(body))


def test_google_error_check_rejects_other_shapes() -> None:
    assert (
        google_error_problems({"error": {"code": 429, "message": "m", "status": "RESOURCE_EXHAUSTED"}}, 429)
        == []
    )
    assert google_error_problems({"error": {"code": 429, "message": "m", "status": "SLOW_DOWN"}}, 500) == [
        "$.error.code: 429 is not the HTTP status 500",
        "$.error.status: 'SLOW_DOWN' is not a canonical status",
    ]
    assert google_error_problems({"type": "error", "error": {}}) == ['$: not {"error": {...}}']


def test_anthropic_stream_blocks_are_in_order_and_one_at_a_time() -> None:
    """The SDK appends a block on ``content_block_start`` and looks deltas up by ``index``."""
    reply = Reply.tool_calls(CALLS, text="Checking.", summary=["Think first."])
    frames = AnthropicDialect(Ids(), CLAUDE, CLAUDE_REQUEST, "req_1").stream(Answer.of(reply, {})).frames
    events: list[Any] = [f.data for f in frames]
    assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
    assert events[-2]["type"] == "message_delta" and events[-2]["delta"]["stop_reason"] == "tool_use"
    open_block = None
    starts = []
    for event in events[1:-2]:
        if event["type"] == "content_block_start":
            assert open_block is None
            open_block = event["index"]
            starts.append((event["index"], event["content_block"]["type"]))
        elif event["type"] in ("content_block_delta", "content_block_stop"):
            assert event["index"] == open_block
            if event["type"] == "content_block_stop":
                open_block = None
    assert starts == [(0, "thinking"), (1, "text"), (2, "tool_use"), (3, "tool_use")]
    deltas = [e["delta"]["type"] for e in events if e["type"] == "content_block_delta" and e["index"] == 0]
    assert deltas[-1] == "signature_delta" and set(deltas[:-1]) == {"thinking_delta"}


@settings(max_examples=30, deadline=None)
@given(text=st.text(min_size=1, max_size=60), tokens=st.integers(0, 10**6))
def test_any_text_streams_back_exactly_in_anthropic_and_gemini(text: str, tokens: int) -> None:
    reply = Reply.text(text, usage=(tokens, tokens))
    claude_frames = AnthropicDialect(Ids(), CLAUDE, CLAUDE_REQUEST, "r").stream(Answer.of(reply, {})).frames
    deltas = [f.data["delta"]["text"] for f in claude_frames if f.data["type"] == "content_block_delta"]  # type: ignore[index]
    assert "".join(deltas) == text
    gemini_frames = GeminiDialect(Ids(), GEMINI_MODEL, {}).stream(Answer.of(reply, {})).frames
    assert "".join(chunk_parts(f.data)[0]["text"] for f in gemini_frames) == text
    assert gemini_frames[-1].data["usageMetadata"]["totalTokenCount"] == 2 * tokens  # type: ignore[index]


def test_signatures_are_deterministic_and_bound_to_their_text() -> None:
    assert (
        anthropic_signature("a thought")
        == anthropic_signature("a thought")
        != anthropic_signature("a thought.")
    )
    minted = gemini_signature("a thought")
    assert minted == gemini_signature("a thought") != gemini_signature("another")
    assert gemini_signature_is_minted(minted)
    assert gemini_signature_is_minted(minted.replace("+", "-").replace("/", "_"))  # URL-safe alphabet
    forged = minted[:-6] + ("AAAA" if minted[-6:-2] != "AAAA" else "BBBB") + minted[-2:]
    assert not gemini_signature_is_minted(forged)
    assert not gemini_signature_is_minted("bm90IG91cnM=") and not gemini_signature_is_minted("%%%")


# ---------------------------------------------------------------------------------------------
# Anthropic Messages over plain HTTP: the wire itself
# ---------------------------------------------------------------------------------------------


def test_anthropic_stream_wire_format(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("Hello big world", usage=(12, 3)))
    body = {**CLAUDE_REQUEST, "stream": True}
    status, headers, raw = http_post(
        upstream.root + "/v1/messages", json.dumps(body).encode(), ANTHROPIC_HEADERS
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert headers["request-id"].startswith("req_")
    events = sse_events(raw)
    assert all(name == json.loads(data)["type"] for name, data in events), "every event is named"
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(data) for _, data in events]
    assert payloads[0]["message"]["usage"]["input_tokens"] == 12
    assert payloads[0]["message"]["content"] == [] and payloads[0]["message"]["stop_reason"] is None
    assert payloads[1]["content_block"] == {"type": "text", "text": "", "citations": None}
    assert [p["delta"]["text"] for p in payloads[3:6]] == ["Hello ", "big ", "world"]
    assert payloads[-2]["usage"]["output_tokens"] == 3
    assert upstream.last.path == "/v1/messages" and upstream.last.body == body


def test_anthropic_document_and_request_id(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("Bonjour.", usage=(20, 4), cached=5))
    status, headers, raw = http_post(
        upstream.root + "/v1/messages", json.dumps(CLAUDE_REQUEST).encode(), ANTHROPIC_HEADERS
    )
    message = json.loads(raw)
    assert status == 200 and message["id"].startswith("msg_") and headers["request-id"].startswith("req_")
    assert message["content"] == [{"type": "text", "text": "Bonjour.", "citations": None}]
    assert message["stop_reason"] == "end_turn" and message["model"] == CLAUDE
    usage = message["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["output_tokens"]) == (15, 5, 4)


def test_anthropic_auth_headers_are_checked(upstream: FakeUpstream) -> None:
    data = json.dumps(CLAUDE_REQUEST).encode()
    status, _, _ = http_post(upstream.root + "/v1/messages", data, {})
    assert status == 200
    assert upstream.violations == [
        "POST /v1/messages: Anthropic request without an x-api-key header (or bearer token)",
        "POST /v1/messages: Anthropic request without an anthropic-version header",
    ]
    upstream.violations.clear()
    http_post(upstream.root + "/v1/messages", data, {"x-api-key": "k"})
    assert upstream.violations == ["POST /v1/messages: Anthropic request without an anthropic-version header"]
    upstream.violations.clear()
    http_post(
        upstream.root + "/v1/messages/count_tokens",
        json.dumps({"model": CLAUDE, "messages": []}).encode(),
        {
            "anthropic-version": "2023-06-01",
            "anthropic-beta": "token-counting-2024-11-01",
            "x-api-key": "k",
        },
    )
    assert upstream.violations == []
    assert upstream.last.headers["anthropic-beta"] == "token-counting-2024-11-01"


def test_anthropic_invalid_requests_are_recorded_but_answered(upstream: FakeUpstream) -> None:
    body = {"model": CLAUDE, "messages": CLAUDE_MESSAGES, "temperature": "warm", "n": 2}
    status, _, raw = http_post(upstream.root + "/v1/messages", json.dumps(body).encode(), ANTHROPIC_HEADERS)
    assert status == 200 and json.loads(raw)["type"] == "message"
    assert upstream.violations == [
        "POST /v1/messages: request field 'n' is not in CreateMessageParams",
        "POST /v1/messages: request not a valid CreateMessageParams: $: 'max_tokens' is a required property",
        "POST /v1/messages: request not a valid CreateMessageParams: "
        "$.temperature: 'warm' is not of type 'number'",
    ]
    upstream.violations.clear()
    counted = {"model": CLAUDE, "messages": CLAUDE_MESSAGES, "max_tokens": 5}  # not a count_tokens field
    http_post(upstream.root + "/v1/messages/count_tokens", json.dumps(counted).encode(), ANTHROPIC_HEADERS)
    assert upstream.violations == [
        "POST /v1/messages/count_tokens: request field 'max_tokens' is not in CountMessageTokensParams"
    ]
    upstream.violations.clear()


def test_anthropic_extra_fields_are_accepted_when_declared(upstream: FakeUpstream) -> None:
    upstream.extra_fields.add("vendor_knob")
    body = {**CLAUDE_REQUEST, "vendor_knob": 1}
    http_post(upstream.root + "/v1/messages", json.dumps(body).encode(), ANTHROPIC_HEADERS)
    assert upstream.violations == []


def test_anthropic_beta_fields_need_a_beta_request(upstream: FakeUpstream) -> None:
    body = {**CLAUDE_REQUEST, "context_management": {"edits": []}}
    _, _, raw = http_post(upstream.root + "/v1/messages", json.dumps(body).encode(), ANTHROPIC_HEADERS)
    assert "context_management" not in json.loads(raw)
    assert upstream.violations == [
        "POST /v1/messages: request field 'context_management' is not in CreateMessageParams"
    ]
    upstream.violations.clear()
    _, _, raw = http_post(
        upstream.root + "/v1/messages?beta=true", json.dumps(body).encode(), ANTHROPIC_HEADERS
    )
    assert json.loads(raw)["context_management"] is None  # BetaMessage requires the key
    assert upstream.violations == [] and upstream.last.query == {"beta": "true"}


def test_anthropic_body_that_is_not_json(upstream: FakeUpstream) -> None:
    status, headers, raw = http_post(upstream.root + "/v1/messages", b"{not json", ANTHROPIC_HEADERS)
    assert status == 400
    body = json.loads(raw)
    assert_anthropic("ErrorResponse", body)
    assert body["error"]["type"] == "invalid_request_error" and body["request_id"] == headers["request-id"]
    assert upstream.violations == ["POST /v1/messages: request body is not valid JSON"]
    upstream.violations.clear()


def test_anthropic_count_tokens_is_deterministic(upstream: FakeUpstream) -> None:
    body = {"model": CLAUDE, "messages": CLAUDE_MESSAGES, "system": "Be brief."}
    results = [
        json.loads(
            http_post(
                upstream.root + "/v1/messages/count_tokens", json.dumps(body).encode(), ANTHROPIC_HEADERS
            )[2]
        )
        for _ in range(2)
    ]
    expected = count_tokens({"messages": CLAUDE_MESSAGES, "system": "Be brief."})
    assert results == [{"input_tokens": expected}] * 2 and expected > 1


def test_a_bug_in_the_fake_is_a_violation_in_the_vendors_shape(upstream: FakeUpstream) -> None:
    """Anthropic needs tool arguments that are a JSON object; anything else is a scripting bug."""
    upstream.script(Reply.tool_calls([("f", "[1, 2]")]))
    status, _, raw = http_post(
        upstream.root + "/v1/messages", json.dumps(CLAUDE_REQUEST).encode(), ANTHROPIC_HEADERS
    )
    assert status == 500 and json.loads(raw)["error"]["type"] == "api_error"
    assert len(upstream.violations) == 1 and "fake crashed" in upstream.violations[0]
    assert "not a JSON object" in upstream.violations[0]
    upstream.violations.clear()


# ---------------------------------------------------------------------------------------------
# Anthropic Messages through the official SDK
# ---------------------------------------------------------------------------------------------


def test_anthropic_sdk_text(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.text("Bonjour.", usage=(30, 9), cached=10))
    message = create(claude, system="Be brief.", stop_sequences=["END"])
    assert [(b.type, b.text) for b in message.content] == [("text", "Bonjour.")]
    assert message.stop_reason == "end_turn" and message.model == CLAUDE
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (20, 10, 9)
    assert upstream.last.path == "/v1/messages"
    assert upstream.last.body["system"] == "Be brief." and upstream.last.headers["anthropic-version"]


def test_anthropic_sdk_streamed_text(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.text("Hello", chunks=["He", "l", "lo"], usage=(7, 2)))
    with claude.messages.stream(model=CLAUDE, max_tokens=64, messages=CLAUDE_MESSAGES) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert pieces == ["He", "l", "lo"]
    assert final.content[0].type == "text" and final.content[0].text == "Hello"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (7, 2)
    assert upstream.last.body["stream"] is True


def test_anthropic_sdk_tool_calls(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.tool_calls(CALLS, text="Checking."))
    message = create(claude)
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text" and message.content[0].text == "Checking."
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [(n, json.loads(a)) for n, a in CALLS]
    assert all(u.id.startswith("toolu_") for u in uses) and len({u.id for u in uses}) == 2


def test_anthropic_sdk_streamed_tool_arguments(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.tool_calls(CALLS))
    events = list(create(claude, stream=True))
    for index, (_name, arguments) in enumerate(CALLS):
        fragments = [
            e.delta.partial_json
            for e in events
            if e.type == "content_block_delta" and e.index == index and e.delta.type == "input_json_delta"
        ]
        assert len(fragments) > 1 and "".join(fragments) == arguments
    starts = [e.content_block for e in events if e.type == "content_block_start"]
    assert [(b.type, b.name, b.input) for b in starts] == [("tool_use", n, {}) for n, _ in CALLS]
    assert [e.delta.stop_reason for e in events if e.type == "message_delta"] == ["tool_use"]


def test_anthropic_thinking_round_trip(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    """A thinking block sent back byte-exact passes; one whose text or signature changed does not."""
    upstream.script(Reply.reasoning(["Let me think.", "Paris is in France."], text="Sunny."))
    with claude.messages.stream(
        model=CLAUDE,
        max_tokens=2048,
        messages=CLAUDE_MESSAGES,
        thinking={"type": "enabled", "budget_tokens": 1024},
    ) as stream:
        first = stream.get_final_message()
    thinking = first.content[0]
    assert thinking.type == "thinking" and thinking.thinking == "Let me think.\n\nParis is in France."
    assert thinking.signature == upstream.anthropic_signature(thinking.thinking)
    assert first.content[1].type == "text" and first.content[1].text == "Sunny."

    def follow_up(blocks: list[Any]) -> None:
        history = [
            *CLAUDE_MESSAGES,
            {"role": "assistant", "content": blocks},
            {"role": "user", "content": "And?"},
        ]
        create(claude, messages=history, thinking={"type": "enabled", "budget_tokens": 1024})

    good = [block.model_dump() for block in first.content]
    follow_up(good)
    assert upstream.violations == [] and upstream.last.body["messages"][1]["content"] == good
    follow_up([{**good[0], "signature": good[0]["signature"][:-4] + "AAA="}, good[1]])
    follow_up([{**good[0], "thinking": good[0]["thinking"] + " "}, good[1]])
    assert (
        upstream.violations
        == [
            "POST /v1/messages: thinking block $.messages[1].content[0]: its signature is not the one "
            "the fake gave this thinking text (altered thinking or signature)"
        ]
        * 2
    )
    upstream.violations.clear()


@pytest.mark.parametrize(
    ("status", "exception", "error_type"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.OverloadedError, "overloaded_error"),
    ],
)
def test_anthropic_errors(
    upstream: FakeUpstream,
    claude: anthropic.Anthropic,
    status: int,
    exception: type[Exception],
    error_type: str,
) -> None:
    upstream.script(Reply.error(status, "Nope.", headers={"retry-after": "3"}))
    with pytest.raises(exception) as caught:
        create(claude)
    error: Any = caught.value
    assert error.status_code == status
    assert error.body == {
        "type": "error",
        "error": {"type": error_type, "message": "Nope."},
        "request_id": error.response.headers["request-id"],
    }
    assert error.response.headers["retry-after"] == "3"


def test_anthropic_error_type_can_be_chosen(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(
        Reply.error(503, "busy", type="overloaded_error"), Reply.error(503, "busy", type="requests")
    )
    with pytest.raises(anthropic.InternalServerError) as caught:
        create(claude)
    assert caught.value.status_code == 503 and caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError) as caught:
        create(claude)
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]  # an OpenAI type is ignored


def test_anthropic_mid_stream_error(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(
        Reply.stream_error("one two three", after=4, message="server exploded"), Reply.stream_error()
    )
    received = []
    with pytest.raises(anthropic.APIStatusError, match="server exploded") as caught:
        for event in create(claude, stream=True):
            received.append(event.type)
    assert received == ["message_start", "content_block_start", "content_block_delta"]  # ping is skipped
    assert caught.value.body["error"]["type"] == "api_error"  # type: ignore[index]
    with pytest.raises(anthropic.InternalServerError):
        create(claude)


def test_anthropic_incomplete_answers(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.incomplete("cut sh"), Reply.incomplete("", reason="content_filter"))
    cut = create(claude)
    assert cut.stop_reason == "max_tokens" and cut.content[0].text == "cut sh"
    refused = list(create(claude, stream=True))
    delta = next(e for e in refused if e.type == "message_delta")
    assert delta.delta.stop_reason == "refusal" and delta.delta.stop_details.type == "refusal"


def test_anthropic_broken_transports(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.html(502), Reply.garbage(), Reply.truncated())
    with pytest.raises(anthropic.InternalServerError) as caught:
        create(claude)
    assert caught.value.status_code == 502 and "cloudflare" in caught.value.response.text
    with pytest.raises(json.JSONDecodeError):
        create(claude)
    with pytest.raises(anthropic.APIConnectionError):
        create(claude)


def test_anthropic_sdk_count_tokens_and_echo(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    counted = claude.messages.count_tokens(model=CLAUDE, messages=CLAUDE_MESSAGES)
    assert counted.input_tokens == count_tokens({"messages": CLAUDE_MESSAGES})
    assert upstream.last.path == "/v1/messages/count_tokens"
    upstream.script(Reply.echo())
    echoed = create(claude, stop_sequences=["END"]).content[0]
    assert json.loads(echoed.text) == {
        "model": CLAUDE,
        "max_tokens": 2048,
        "messages": CLAUDE_MESSAGES,
        "stop_sequences": ["END"],
    }


def test_anthropic_sdk_beta_messages(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.text("beta hi"))
    message = claude.beta.messages.create(
        model=CLAUDE, max_tokens=64, messages=CLAUDE_MESSAGES, betas=["context-management-2025-06-27"]
    )
    assert message.content[0].text == "beta hi" and message.context_management is None  # type: ignore[union-attr]
    assert upstream.last.headers["anthropic-beta"] == "context-management-2025-06-27"


def test_anthropic_per_model_queue(upstream: FakeUpstream, claude: anthropic.Anthropic) -> None:
    upstream.script(Reply.text("global"))
    upstream.for_model("claude-backup", Reply.error(529))
    with pytest.raises(anthropic.OverloadedError):
        claude.messages.create(model="claude-backup", max_tokens=8, messages=CLAUDE_MESSAGES)
    assert create(claude).content[0].text == "global"


# ---------------------------------------------------------------------------------------------
# Gemini over plain HTTP: the wire itself
# ---------------------------------------------------------------------------------------------


def test_gemini_sse_wire_format(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("Hello big world", usage=(12, 3)))
    url = gemini_url(upstream, "streamGenerateContent") + "?alt=sse"
    status, headers, raw = http_post(url, json.dumps({"contents": GEMINI_CONTENTS}).encode(), GEMINI_HEADERS)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert b"event:" not in raw and b"[DONE]" not in raw
    chunks = gemini_sse_chunks(raw)
    assert [chunk_parts(c) for c in chunks] == [[{"text": "Hello "}], [{"text": "big "}], [{"text": "world"}]]
    assert [c["candidates"][0].get("finishReason") for c in chunks] == [None, None, "STOP"]
    assert [c["usageMetadata"].get("candidatesTokenCount") for c in chunks] == [None, None, 3]
    assert all(c["usageMetadata"]["promptTokenCount"] == 12 for c in chunks), "prompt usage in every chunk"
    assert len({(c["responseId"], c["modelVersion"]) for c in chunks}) == 1
    assert chunks[0]["modelVersion"] == GEMINI_MODEL
    assert upstream.last.query == {"alt": "sse"}


def test_gemini_stream_without_alt_sse_is_one_json_array(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("a b"))
    url = gemini_url(upstream, "streamGenerateContent")
    status, headers, raw = http_post(url, json.dumps({"contents": GEMINI_CONTENTS}).encode(), GEMINI_HEADERS)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert raw.startswith(b"[{") and b"}\r\n,{" in raw and raw.endswith(b"}]")
    assert [chunk_parts(c)[0]["text"] for c in json.loads(raw)] == ["a ", "b"]


def test_gemini_document(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("Ciao!", usage=(30, 9), cached=10, reasoning_tokens=4))
    body = {"contents": GEMINI_CONTENTS}
    status, _, raw = http_post(
        gemini_url(upstream, "generateContent"), json.dumps(body).encode(), GEMINI_HEADERS
    )
    response = json.loads(raw)
    assert status == 200
    assert response["candidates"][0]["content"] == {"parts": [{"text": "Ciao!"}], "role": "model"}
    assert response["usageMetadata"] == {
        "promptTokenCount": 30,
        "candidatesTokenCount": 5,
        "totalTokenCount": 39,
        "thoughtsTokenCount": 4,
        "cachedContentTokenCount": 10,
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 30}],
    }


def test_gemini_auth_is_checked(upstream: FakeUpstream) -> None:
    data = json.dumps({"contents": GEMINI_CONTENTS}).encode()
    http_post(gemini_url(upstream, "generateContent"), data, {})
    assert upstream.violations == [
        f"POST /v1beta/models/{GEMINI_MODEL}:generateContent: "
        "Gemini request without an x-goog-api-key header or key query parameter"
    ]
    upstream.violations.clear()
    http_post(gemini_url(upstream, "generateContent") + "?key=gk-test", data, {})
    assert upstream.violations == [] and upstream.last.query == {"key": "gk-test"}


def test_gemini_invalid_and_unknown_fields_are_recorded(upstream: FakeUpstream) -> None:
    body = {
        "contents": [{"role": "user", "parts": [{"text": "hi", "cache_control": {"type": "ephemeral"}}]}],
        "generation_config": {"temperature": "hot", "max_output_tokens": 5},
        "max_tokens": 5,
    }
    status, _, _ = http_post(
        gemini_url(upstream, "generateContent"), json.dumps(body).encode(), GEMINI_HEADERS
    )
    assert status == 200
    where = f"POST /v1beta/models/{GEMINI_MODEL}:generateContent"
    assert upstream.violations == [
        f"{where}: request not a valid GenerateContentRequest: "
        "$.generationConfig.temperature: 'hot' is not of type 'number'",
        f"{where}: request field $.contents[0].parts[0].cache_control "
        "is not in the GenerateContentRequest protos",
        f"{where}: request field $.max_tokens is not in the GenerateContentRequest protos",
    ]
    upstream.violations.clear()


def test_gemini_body_that_is_not_json(upstream: FakeUpstream) -> None:
    status, _, raw = http_post(gemini_url(upstream, "countTokens"), b"{not json", GEMINI_HEADERS)
    assert status == 400
    assert json.loads(raw) == {
        "error": {"code": 400, "message": "We could not parse the JSON body.", "status": "INVALID_ARGUMENT"}
    }
    assert upstream.violations == [
        f"POST /v1beta/models/{GEMINI_MODEL}:countTokens: request body is not valid JSON"
    ]
    upstream.violations.clear()


def test_gemini_count_tokens_both_request_forms(upstream: FakeUpstream) -> None:
    url = gemini_url(upstream, "countTokens")
    _, _, plain = http_post(url, json.dumps({"contents": GEMINI_CONTENTS}).encode(), GEMINI_HEADERS)
    assert json.loads(plain) == {"totalTokens": count_tokens({"contents": GEMINI_CONTENTS})}
    wrapped = {
        "generateContentRequest": {
            "model": f"models/{GEMINI_MODEL}",
            "contents": GEMINI_CONTENTS,
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
        }
    }
    _, _, raw = http_post(url, json.dumps(wrapped).encode(), GEMINI_HEADERS)
    expected = count_tokens(
        {"contents": GEMINI_CONTENTS, "systemInstruction": {"parts": [{"text": "Be brief."}]}}
    )
    assert json.loads(raw) == {"totalTokens": expected} and expected > json.loads(plain)["totalTokens"]


# ---------------------------------------------------------------------------------------------
# Gemini through the official google-genai SDK
# ---------------------------------------------------------------------------------------------


def test_gemini_sdk_text(upstream: FakeUpstream, gemini: genai.Client) -> None:
    upstream.script(Reply.text("Ciao!", usage=(11, 2)))
    config = genai_types.GenerateContentConfig(
        system_instruction="Be brief.", max_output_tokens=64, temperature=0.3
    )
    response = gemini.models.generate_content(model=GEMINI_MODEL, contents="Say hi.", config=config)
    assert response.text == "Ciao!"
    assert response.candidates and response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    usage = response.usage_metadata
    assert usage is not None and (usage.prompt_token_count, usage.candidates_token_count) == (11, 2)
    assert upstream.last.path == f"/v1beta/models/{GEMINI_MODEL}:generateContent"
    assert upstream.last.headers["x-goog-api-key"] == "gk-test"
    assert upstream.last.body["systemInstruction"]["parts"] == [{"text": "Be brief."}]


def test_gemini_sdk_stream(upstream: FakeUpstream, gemini: genai.Client) -> None:
    upstream.script(Reply.text("uno due tre", usage=(6, 3)))
    chunks = list(gemini.models.generate_content_stream(model=GEMINI_MODEL, contents="Count."))
    assert [c.text for c in chunks] == ["uno ", "due ", "tre"]
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert chunks[-1].usage_metadata and chunks[-1].usage_metadata.total_token_count == 9
    assert upstream.last.path.endswith(":streamGenerateContent") and upstream.last.query == {"alt": "sse"}


def test_gemini_sdk_tool_calls(upstream: FakeUpstream, gemini: genai.Client) -> None:
    upstream.script(Reply.tool_calls(CALLS), Reply.tool_calls(CALLS, text="Checking."))
    response = gemini.models.generate_content(model=GEMINI_MODEL, contents="Weather?")
    calls = response.function_calls or []
    assert [(c.name, c.args) for c in calls] == [(n, json.loads(a)) for n, a in CALLS]
    assert all(c.id is None for c in calls), "the Developer API sends no call ids"
    assert response.candidates and response.candidates[0].finish_reason == genai_types.FinishReason.STOP
    chunks = list(gemini.models.generate_content_stream(model=GEMINI_MODEL, contents="Weather?"))
    with_calls = [c for c in chunks if c.function_calls]
    assert len(with_calls) == 1 and len(with_calls[0].function_calls or []) == 2, "calls arrive whole"
    assert "".join(c.text or "" for c in chunks if not c.function_calls) == "Checking."


def test_gemini_thought_signature_round_trip(upstream: FakeUpstream, gemini: genai.Client) -> None:
    """Signatures come back byte-exact (in either base64 alphabet) or the fake records it."""
    upstream.script(Reply.tool_calls(CALLS[:1], summary=["Need the weather."]))
    config = genai_types.GenerateContentConfig(
        thinking_config=genai_types.ThinkingConfig(include_thoughts=True, thinking_budget=1024)
    )
    first = gemini.models.generate_content(model=GEMINI_MODEL, contents="Weather in Paris?", config=config)
    assert first.candidates and first.candidates[0].content and first.candidates[0].content.parts
    content = first.candidates[0].content
    thought, call = content.parts  # type: ignore[misc]
    assert thought.thought and thought.text == "Need the weather." and not thought.thought_signature
    assert call.function_call and call.thought_signature
    assert call.thought_signature == base64.b64decode(upstream.gemini_signature("Need the weather."))

    def follow_up(model_turn: genai_types.Content) -> None:
        answer = genai_types.Part(
            function_response=genai_types.FunctionResponse(name="get_weather", response={"t": 1})
        )
        history = [
            genai_types.Content(role="user", parts=[genai_types.Part(text="Weather in Paris?")]),
            model_turn,
            genai_types.Content(role="user", parts=[answer]),
        ]
        gemini.models.generate_content(model=GEMINI_MODEL, contents=history, config=config)

    follow_up(content)
    assert upstream.violations == []
    sent = upstream.last.body["contents"][1]["parts"][1]["thoughtSignature"]
    assert base64.urlsafe_b64decode(sent) == call.thought_signature
    tampered = bytes([call.thought_signature[0] ^ 1]) + call.thought_signature[1:]
    follow_up(
        content.model_copy(
            update={"parts": [thought, call.model_copy(update={"thought_signature": tampered})]}
        )
    )
    invented = base64.b64decode(gemini_signature("x"))[:-1] + b"?"
    follow_up(
        content.model_copy(
            update={"parts": [thought, call.model_copy(update={"thought_signature": invented})]}
        )
    )
    where = f"POST /v1beta/models/{GEMINI_MODEL}:generateContent"
    assert (
        upstream.violations
        == [f"{where}: thoughtSignature at $.contents[1].parts[1] is not one the fake minted"] * 2
    )
    upstream.violations.clear()


def test_gemini_streamed_thoughts_sign_the_first_answer_part(
    upstream: FakeUpstream, gemini: genai.Client
) -> None:
    upstream.script(Reply.reasoning(["Think hard."], text="42"))
    chunks = list(gemini.models.generate_content_stream(model=GEMINI_MODEL, contents="?"))
    parts = [p for c in chunks for p in (c.candidates[0].content.parts or [])]  # type: ignore[index, union-attr]
    assert [(p.thought, p.text, bool(p.thought_signature)) for p in parts] == [
        (True, "Think ", False),
        (True, "hard.", False),
        (None, "42", True),
    ]


@pytest.mark.parametrize(
    ("status", "exception", "status_name"),
    [
        (400, genai_errors.ClientError, "INVALID_ARGUMENT"),
        (403, genai_errors.ClientError, "PERMISSION_DENIED"),
        (404, genai_errors.ClientError, "NOT_FOUND"),
        (429, genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
        (500, genai_errors.ServerError, "INTERNAL"),
        (503, genai_errors.ServerError, "UNAVAILABLE"),
    ],
)
def test_gemini_errors(
    upstream: FakeUpstream, gemini: genai.Client, status: int, exception: type[Exception], status_name: str
) -> None:
    upstream.script(Reply.error(status, "Nope."))
    with pytest.raises(exception) as caught:
        gemini.models.generate_content(model=GEMINI_MODEL, contents="hi")
    error: Any = caught.value
    assert (error.code, error.status, error.message) == (status, status_name, "Nope.")


def test_gemini_error_status_can_be_chosen(upstream: FakeUpstream) -> None:
    upstream.script(Reply.error(400, "API key not valid.", type="FAILED_PRECONDITION"))
    data = json.dumps({"contents": GEMINI_CONTENTS}).encode()
    status, _, raw = http_post(gemini_url(upstream, "generateContent"), data, GEMINI_HEADERS)
    assert status == 400 and json.loads(raw)["error"]["status"] == "FAILED_PRECONDITION"


def test_gemini_mid_stream_error(upstream: FakeUpstream, gemini: genai.Client) -> None:
    upstream.script(Reply.stream_error("a b c d", after=2, message="server exploded"), Reply.stream_error())
    received = []
    with pytest.raises(genai_errors.ServerError, match="server exploded"):
        for chunk in gemini.models.generate_content_stream(model=GEMINI_MODEL, contents="hi"):
            received.append(chunk.text)
    assert received == ["a ", "b "]
    with pytest.raises(genai_errors.ServerError) as caught:
        gemini.models.generate_content(model=GEMINI_MODEL, contents="hi")
    assert caught.value.code == 500


def test_gemini_mid_stream_error_in_a_json_array(upstream: FakeUpstream) -> None:
    upstream.script(Reply.stream_error("a b c", after=1))
    url = gemini_url(upstream, "streamGenerateContent")
    _, _, raw = http_post(url, json.dumps({"contents": GEMINI_CONTENTS}).encode(), GEMINI_HEADERS)
    elements = json.loads(raw)  # still one well-formed array, the error as its last element
    assert len(elements) == 2 and elements[1]["error"]["status"] == "INTERNAL"


def test_gemini_incomplete_answers(upstream: FakeUpstream, gemini: genai.Client) -> None:
    upstream.script(Reply.incomplete("cut sh"), Reply.incomplete("", reason="content_filter"))
    cut = gemini.models.generate_content(model=GEMINI_MODEL, contents="Long story")
    assert cut.candidates and cut.candidates[0].finish_reason == genai_types.FinishReason.MAX_TOKENS
    assert cut.text == "cut sh"
    chunks = list(gemini.models.generate_content_stream(model=GEMINI_MODEL, contents="Bad"))
    assert chunks[-1].candidates and chunks[-1].candidates[0].finish_reason == genai_types.FinishReason.SAFETY


def test_gemini_broken_transports(upstream: FakeUpstream, gemini: genai.Client) -> None:
    upstream.script(Reply.html(503), Reply.garbage())
    with pytest.raises(genai_errors.ServerError) as caught:
        gemini.models.generate_content(model=GEMINI_MODEL, contents="hi")
    assert caught.value.code == 503
    received = []
    with pytest.raises(genai_errors.UnknownApiResponseError):
        for chunk in gemini.models.generate_content_stream(model=GEMINI_MODEL, contents="hi"):
            received.append(chunk.text)
    assert received == ["Hello "]


def test_gemini_sdk_count_tokens(upstream: FakeUpstream, gemini: genai.Client) -> None:
    counted = gemini.models.count_tokens(model=GEMINI_MODEL, contents="hello there")
    assert counted.total_tokens == count_tokens({"contents": upstream.last.body["contents"]})
    assert upstream.last.path == f"/v1beta/models/{GEMINI_MODEL}:countTokens"


def test_gemini_model_comes_from_the_path(upstream: FakeUpstream, gemini: genai.Client) -> None:
    upstream.script(Reply.text("global"))
    upstream.for_model("gemini-backup", Reply.text("from backup"))
    assert gemini.models.generate_content(model="gemini-backup", contents="hi").text == "from backup"
    assert "model" not in upstream.last.body
    assert gemini.models.generate_content(model=GEMINI_MODEL, contents="hi").text == "global"


def test_gemini_sdk_default_api_version_is_served_too(upstream: FakeUpstream) -> None:
    """google-genai talks ``/v1`` once given a base URL; the fake answers there as well."""
    sdk = genai.Client(api_key="gk-test", http_options=genai_types.HttpOptions(base_url=upstream.root))
    try:
        upstream.script(Reply.text("v1 too"))
        assert sdk.models.generate_content(model=GEMINI_MODEL, contents="hi").text == "v1 too"
    finally:
        sdk.close()
    assert upstream.last.path == f"/v1/models/{GEMINI_MODEL}:generateContent"


def test_one_reply_renders_in_every_vendor_dialect(
    upstream: FakeUpstream, client: openai.OpenAI, claude: anthropic.Anthropic, gemini: genai.Client
) -> None:
    upstream.script(*[Reply.tool_calls(CALLS[:1], text="Let me check.")] * 4)
    message = chat(client).choices[0].message
    assert message.content == "Let me check." and message.tool_calls[0].function.name == "get_weather"
    output = client.responses.create(model="gpt-4.1", input="hi").output
    assert [item.type for item in output] == ["message", "function_call"]
    blocks = create(claude).content
    assert [b.type for b in blocks] == ["text", "tool_use"]
    response = gemini.models.generate_content(model=GEMINI_MODEL, contents="hi")
    assert response.text == "Let me check." and [c.name for c in response.function_calls or []] == [
        "get_weather"
    ]
    assert [r.path for r in upstream.requests] == [
        "/v1/chat/completions",
        "/v1/responses",
        "/v1/messages",
        f"/v1beta/models/{GEMINI_MODEL}:generateContent",
    ]
