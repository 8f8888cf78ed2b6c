"""The stream taps: the bytes a client gets, and the usage and end they read, do not depend on how
the upstream's stream was cut into reads (every split point is tried), and text that merely
mentions an event's name is not taken for that event."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from modelwire.dialects.taps import AnthropicTap, ChatTap, GeminiTap, ResponsesTap, StreamTap
from modelwire.errors import ModelwireError


def sse(*docs: dict[str, Any], events: tuple[str, ...] = (), sep: str = "\n\n") -> bytes:
    names = events or ("",) * len(docs)
    lines = [
        (f"event: {n}\n" if n else "") + "data: " + json.dumps(d, separators=(",", ":"))
        for n, d in zip(names, docs, strict=True)
    ]
    return (sep.join(lines) + sep).encode()


def chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


USAGE = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}
# A token that mentions the markers the taps look for, to be passed on untouched.
MENTION = 'the "usage": {x} of [DONE]? response.completed message_stop'
CHAT = sse(chunk("Hi"), chunk(MENTION), chunk(None, "stop"), USAGE) + b"data: [DONE]\n\n"


def feed_split(make: Any, stream: bytes, cuts: list[int]) -> tuple[bytes, StreamTap]:
    tap = make()
    out, last = [], 0
    for cut in [*cuts, len(stream)]:
        out.append(tap.feed(stream[last:cut]))
        last = cut
    out.append(tap.end())
    return b"".join(out), tap


def every_split(make: Any, stream: bytes) -> tuple[bytes, StreamTap]:
    """Feed whole, at every single split point and at random multi-splits; all must agree."""
    whole, tap = feed_split(make, stream, [])
    rng = random.Random(7)
    splits = [[i] for i in range(1, len(stream))]
    splits += [sorted(rng.sample(range(1, len(stream)), 12)) for _ in range(200)]
    for cuts in splits:
        out, other = feed_split(make, stream, cuts)
        assert out == whole, cuts
        seen = (other.usage, other.finished, other.closed, other.errored)
        assert seen == (tap.usage, tap.finished, tap.closed, tap.errored), cuts
    return whole, tap


def test_chat_stream_hides_the_usage_chunk_the_client_did_not_ask_for() -> None:
    out, tap = every_split(lambda: ChatTap({"stream": True}), CHAT)
    assert out == sse(chunk("Hi"), chunk(MENTION), chunk(None, "stop")) + b"data: [DONE]\n\n"
    assert tap.usage is not None and (tap.usage.input_tokens, tap.usage.output_tokens) == (7, 3)
    assert tap.finished and not tap.errored


def test_chat_stream_keeps_the_usage_chunk_when_asked_and_reads_crlf() -> None:
    body = {"stream": True, "stream_options": {"include_usage": True}}
    out, tap = every_split(lambda: ChatTap(body), CHAT.replace(b"\n", b"\r\n"))
    assert out == CHAT
    assert tap.usage is not None and tap.usage.output_tokens == 3


def test_chat_stream_is_closed_only_by_done() -> None:
    """With two choices the first may finish while the second still streams: the stream has
    finished an answer but is closed (nothing more to pass on at once) only at ``[DONE]``."""
    tap = ChatTap({"stream": True})
    first_done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    tap.feed(sse(first_done))
    assert tap.finished and not tap.closed
    tap.feed(sse(chunk("still going")))
    assert not tap.closed
    tap.feed(b"data: [DONE]\n\n")
    assert tap.closed
    for other in (ResponsesTap({}), AnthropicTap({}), GeminiTap({})):
        assert other.closed == other.finished  # their terminal event is their last


def test_chat_stream_mentions_alone_neither_end_nor_strip() -> None:
    out, tap = every_split(lambda: ChatTap({"stream": True}), sse(chunk(MENTION)))
    assert out == sse(chunk(MENTION))
    assert not tap.finished and tap.usage is None


def test_chat_stream_in_the_spaced_spelling() -> None:
    """Some OpenAI-compatible servers put a space after each colon: the tap reads their end and
    usage alike, whatever read first shows the spelling, and text mentioning the compact markers
    (escaped in JSON, so never taken for them) changes nothing."""
    mention = 'the "finish_reason":"stop" and "usage":{x} of data:[DONE]'
    docs = (chunk("Hi"), chunk(mention), chunk(None, "stop"), USAGE)
    stream = b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs) + b"data: [DONE]\n\n"
    assert b'"finish_reason": null' in stream
    body = {"stream": True, "stream_options": {"include_usage": True}}
    out, tap = every_split(lambda: ChatTap(body), b": keep-alive\n\n" + stream)
    assert out == b": keep-alive\n\n" + stream
    assert tap.finished and tap.closed and tap.usage is not None and tap.usage.output_tokens == 3
    out, tap = every_split(lambda: ChatTap(body), stream.removesuffix(b"data: [DONE]\n\n"))
    assert tap.finished and not tap.closed


def test_chat_stream_filter_drops_verdict_only_chunks() -> None:
    verdict = {"choices": [{"index": 0, "content_filter_results": {}}]}
    empty: dict[str, Any] = {"choices": [], "prompt_filter_results": []}
    stream = sse(empty, chunk("Hi"), verdict, chunk(None, "stop"), USAGE) + b"data: [DONE]\n\n"
    out, tap = every_split(lambda: ChatTap({"stream": True}, filter_chunks=True), stream)
    assert out == sse(chunk("Hi"), chunk(None, "stop")) + b"data: [DONE]\n\n"
    assert tap.usage is not None and tap.finished


def test_chat_stream_error_event_is_seen_and_passed_on() -> None:
    stream = sse(chunk("Hi"), {"error": {"message": "overloaded"}})
    out, tap = every_split(lambda: ChatTap({"stream": True}), stream)
    assert out == stream and tap.errored and not tap.finished
    # Servers that close with [DONE] after the error (vLLM) are read alike.
    out, tap = every_split(lambda: ChatTap({"stream": True}), stream + b"data: [DONE]\n\n")
    assert tap.errored and tap.closed


def test_chat_stream_error_with_usage_or_after_it_is_seen_and_kept() -> None:
    """An error event is never dropped as a usage-only chunk (nor its usage counted), and an error
    after the usage chunk is seen although the usage chunk is found first."""
    stream = sse(chunk("Hi"), {"error": {"message": "overloaded"}, **USAGE}) + b"data: [DONE]\n\n"
    out, tap = every_split(lambda: ChatTap({"stream": True}), stream)
    assert out == stream and tap.errored and tap.usage is None
    cut = {"error": {"message": "cut"}}
    stream = sse(chunk("Hi"), chunk(None, "stop"), USAGE, cut) + b"data: [DONE]\n\n"
    out, tap = every_split(lambda: ChatTap({"stream": True}), stream)
    assert out == sse(chunk("Hi"), chunk(None, "stop"), cut) + b"data: [DONE]\n\n"
    assert tap.errored and tap.usage is not None and tap.usage.output_tokens == 3


def test_chat_stream_error_mentioned_in_text_is_no_error() -> None:
    stream = sse(chunk('\n\ndata: {"error": no'), chunk(None, "stop")) + b"data: [DONE]\n\n"
    _, tap = every_split(lambda: ChatTap({"stream": True}), stream)
    assert tap.finished and not tap.errored


RESPONSE = {
    "id": "resp_1",
    "status": "completed",
    "usage": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
}
RESPONSES = sse(
    {"type": "response.created", "sequence_number": 0},
    {
        "type": "response.output_text.delta",
        "sequence_number": 1,
        "item_id": "msg_" + "x" * 80,
        "delta": MENTION,
    },
    {"type": "response.completed", "sequence_number": 2, "response": RESPONSE},
    events=("response.created", "response.output_text.delta", "response.completed"),
)


def test_responses_stream_reads_the_final_response_once() -> None:
    out, tap = every_split(lambda: ResponsesTap({}), RESPONSES)
    assert out == RESPONSES
    assert tap.response == RESPONSE and tap.usage is not None and tap.usage.output_tokens == 2
    assert tap.finished and not tap.errored


def test_responses_stream_mention_is_not_an_end_and_fail_continues_the_numbers() -> None:
    cut = RESPONSES[: RESPONSES.index(b"event: response.completed")]
    out, tap = every_split(lambda: ResponsesTap({}), cut)
    assert out == cut and not tap.finished
    error = json.loads(tap.fail(ModelwireError("cut")).split(b"data: ", 1)[1])
    assert error["sequence_number"] == 2


def test_responses_stream_without_event_lines_and_its_error() -> None:
    stream = sse({"type": "response.created"}, {"type": "error", "code": "server_error", "message": "x"})
    out, tap = every_split(lambda: ResponsesTap({}), stream)
    assert out == stream and tap.errored and not tap.finished


ANTHROPIC = sse(
    {"type": "message_start", "message": {"usage": {"input_tokens": 9, "output_tokens": 1}}},
    {"type": "content_block_delta", "delta": {"type": "text_delta", "text": MENTION}},
    {"type": "message_delta", "usage": {"output_tokens": 4}},
    {"type": "message_delta", "usage": {"output_tokens": 6}},
    {"type": "message_stop"},
    events=("message_start", "content_block_delta", "message_delta", "message_delta", "message_stop"),
)


def test_anthropic_stream_keeps_the_last_running_total() -> None:
    out, tap = every_split(lambda: AnthropicTap({}), ANTHROPIC)
    assert out == ANTHROPIC
    assert tap.usage is not None and (tap.usage.input_tokens, tap.usage.output_tokens) == (9, 6)
    assert tap.finished and not tap.errored


def test_anthropic_stream_error_and_a_mention_that_is_not_a_stop() -> None:
    stream = ANTHROPIC[: ANTHROPIC.index(b"event: message_stop")]
    stream += sse({"type": "error", "error": {"type": "overloaded_error"}}, events=("error",))
    out, tap = every_split(lambda: AnthropicTap({}), stream)
    assert out == stream and tap.errored and not tap.finished


def gemini_chunk(text: str, finish: str | None = None, tokens: int = 1) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": tokens},
    }


GEMINI = sse(
    gemini_chunk("Hi"),
    gemini_chunk('say {"error" and "finishReason"', tokens=2),
    gemini_chunk("", "STOP", 3),
    sep="\r\n\r\n",
)


def test_gemini_stream_reads_the_last_usage_and_writes_crlf() -> None:
    out, tap = every_split(lambda: GeminiTap({}), GEMINI)
    assert out == GEMINI
    assert tap.usage is not None and tap.usage.output_tokens == 3
    assert tap.finished and not tap.errored


@pytest.mark.parametrize("finished", [True, False])
def test_gemini_stream_as_a_json_array(finished: bool) -> None:
    stream = GEMINI if finished else GEMINI[: GEMINI.rindex(b"data:")]
    out, tap = every_split(lambda: GeminiTap({}, json_array=True), stream)
    docs = json.loads(out)
    assert [d["usageMetadata"]["candidatesTokenCount"] for d in docs] == ([1, 2, 3] if finished else [1, 2])
    assert tap.finished is finished


def test_gemini_stream_error() -> None:
    stream = sse(gemini_chunk("Hi"), {"error": {"code": 503, "message": "x"}})
    out, tap = every_split(lambda: GeminiTap({}), stream)
    assert out == stream.replace(b"\n\n", b"\r\n\r\n") and tap.errored
