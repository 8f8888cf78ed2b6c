"""A scripted stand-in for the OpenAI (and Azure OpenAI), Anthropic and Gemini HTTP APIs.

Why it exists: modelwire talks to vendors over HTTP, so its tests need an upstream that answers
exactly like the real one, including its failure modes (rate limits, HTML error pages, broken
streams). This fake is a real aiohttp server on 127.0.0.1 running in its own thread and event
loop, so sync tests, async tests and a gateway started as a subprocess can all reach it.

One server speaks every wire, so one fake can be the upstream of every backend in a test:

* OpenAI under ``url`` (``root + "/v1"``), Azure under ``root + "/openai"``; Responses also over
  WebSocket: ``GET .../responses`` upgrades (PROTOCOLS.md 2.7, see "Responses over WebSocket");
* Anthropic Messages under ``root``: ``POST /v1/messages`` and ``/v1/messages/count_tokens``;
* Gemini under ``root``: ``POST /v1beta/models/{model}:generateContent``,
  ``:streamGenerateContent`` (``?alt=sse``, or one streamed JSON array without it) and
  ``:countTokens``, ``:embedContent`` and ``:batchEmbedContents``; the same under ``/v1/models/``
  (google-genai's default with a base URL).

It is written from ``tests/specs/`` (the vendors' specs and ``PROTOCOLS.md``) only and never
imports modelwire: if both shared code, a bug could hide on both sides of the wire.

Drift control: every JSON request body is validated against the vendor's schema (and fields the
vendor does not know are flagged), and so is every JSON payload the fake itself sends. Problems
are appended to ``FakeUpstream.violations`` instead of being raised, so the request is still
answered and the test sees what happened; the ``upstream`` fixture asserts the list is empty
after each test. Auth headers are checked per vendor too, and reasoning that comes back is
checked against what the fake signed: an Anthropic ``thinking`` block must carry
``anthropic_signature(thinking)``, a Gemini ``thoughtSignature`` must be one ``gemini_signature``
minted (both are keyed hashes with a salt private to this module, so an altered byte shows).

Scripting: ``script(*replies)`` queues ``Reply`` objects that the next requests consume in order
(every request to any endpoint takes one; per-model queues from ``for_model`` come first). A
content reply (text, tool calls, ...) is rendered in the dialect of the endpoint it lands on,
streamed or not according to the request (``stream`` flag, or Gemini's streaming method); on
endpoints that generate nothing (models, stored responses, token counts) a content reply just
means "answer normally". Failures render in the vendor's own error shape.

Responses over WebSocket: each ``response.create`` frame is recorded like a request (``socket``
numbers its connection) and answered from the same queue, its events being the SSE stream's JSON
as text frames; failures are the WebSocket ``error`` event (details nested, with ``status``), a
truncated reply drops the connection. The connection remembers its most recent response, so
``previous_response_id`` chains on it with ``store: false`` (and on stored responses); a
``function_call_output`` must answer a call in its chain or input. ``generate: false`` warms up:
a response with no output, taking no reply. ``refuse_upgrades`` answers the next handshakes with
HTTP failures, ``drop_sockets`` cuts every open connection.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import json
import math
import socket
import struct
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aiohttp import web

from tests.fake_realtime import FakeRealtime
from tests.spec import (
    anthropic_errors,
    anthropic_unknown_fields,
    gemini_errors,
    gemini_unknown_fields,
    openai_errors,
    unknown_fields,
)

DEFAULT_TEXT = "Hello from the fake upstream."
DEFAULT_MODELS = ("gpt-4o-mini", "gpt-4.1", "o4-mini", "text-embedding-3-small")
MODEL_CREATED = 1686935002
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
CLOUDFLARE_PAGE = (
    "<html>\r\n<head><title>{status} Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>{status} Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Recorded requests and scripted replies
# ---------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request as the fake received it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    raw: bytes
    peer: str = ""  # the client's address:port, to tell kept-alive connections apart
    socket: int = 0  # a WebSocket frame: the number of its connection (1, 2, ...); 0 over HTTP

    @property
    def websocket(self) -> bool:
        """Whether this was a ``response.create`` frame on a WebSocket rather than an HTTP request."""
        return self.socket > 0


@dataclass
class Reply:
    """What the fake should answer to one request; build it with the class-method constructors."""

    kind: str
    content: str | None = None
    usage: tuple[int, int] = (10, 5)
    cached: int = 0
    reasoning_tokens: int = 0
    chunks: list[str] | None = None
    chunk_delay: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)
    encrypted: str | None = None
    incomplete_reason: str | None = None
    after: int = 0
    status: int = 200
    message: str = ""
    code: str | None = None
    error_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    then: Reply | None = None

    @classmethod
    def text(
        cls,
        text: str,
        *,
        usage: tuple[int, int] = (10, 5),
        cached: int = 0,
        reasoning_tokens: int = 0,
        chunks: list[str] | None = None,
        chunk_delay: float = 0.0,
    ) -> Reply:
        """A plain answer. ``usage`` is (input, output) tokens, ``cached`` and ``reasoning_tokens``
        being subsets of them; ``chunks`` fixes how the text is streamed (default: word by word)
        and ``chunk_delay`` pauses between streamed frames. The other content constructors take
        the same keyword options.
        """
        return cls(
            kind="text",
            content=text,
            usage=usage,
            cached=cached,
            reasoning_tokens=reasoning_tokens,
            chunks=chunks,
            chunk_delay=chunk_delay,
        )

    @classmethod
    def tool_calls(cls, calls: list[tuple[str, str]], text: str | None = None, **kw: Any) -> Reply:
        """Function calls (parallel when several), each ``(name, arguments_json)``."""
        return cls(kind="tool_calls", calls=list(calls), content=text, **kw)

    @classmethod
    def reasoning(
        cls, summary: list[str], text: str = "final answer", encrypted: str = "enc-fake-reasoning", **kw: Any
    ) -> Reply:
        """Reasoning, then the answer: a reasoning item (Responses), ``reasoning_content`` (Chat), a
        signed ``thinking`` block (Anthropic) or a thought part whose ``thoughtSignature`` rides on
        the next part (Gemini). The Anthropic and Gemini forms join ``summary`` with blank lines.
        ``summary=`` works on ``tool_calls`` too.
        """
        return cls(kind="reasoning", summary=list(summary), content=text, encrypted=encrypted, **kw)

    @classmethod
    def incomplete(cls, text: str, reason: str = "max_output_tokens", **kw: Any) -> Reply:
        return cls(kind="incomplete", content=text, incomplete_reason=reason, **kw)

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "",
        code: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """An HTTP error in the endpoint's vendor shape. ``type`` is the OpenAI ``error.type``, an
        Anthropic error type (``overloaded_error``, ...) or a Google status (``UNAVAILABLE``, ...);
        left out, each vendor's usual one for ``status`` is used (Anthropic 529 is
        ``overloaded_error``, Google 429 is ``RESOURCE_EXHAUSTED``).
        """
        return cls(
            kind="error",
            status=status,
            message=message or f"Fake upstream error {status}",
            code=code if code is not None else _default_error_code(status),
            error_type=type,
            headers=dict(headers or {}),
        )

    @classmethod
    def html(cls, status: int = 502) -> Reply:
        """A proxy's HTML error page, as Cloudflare serves when the origin is down."""
        return cls(kind="html", status=status)

    @classmethod
    def truncated(cls, text: str = DEFAULT_TEXT, after: int = 2, **kw: Any) -> Reply:
        """Stream ``after`` frames then drop the connection; non-streaming: half a JSON body."""
        return cls(kind="truncated", content=text, after=after, **kw)

    @classmethod
    def garbage(cls) -> Reply:
        return cls(kind="garbage", content=DEFAULT_TEXT)

    @classmethod
    def stream_error(
        cls, text: str = DEFAULT_TEXT, after: int = 2, message: str = "server exploded", **kw: Any
    ) -> Reply:
        """Stream ``after`` frames then the dialect's in-stream error."""
        return cls(kind="stream_error", content=text, after=after, message=message, **kw)

    @classmethod
    def delay(cls, seconds: float, then: Reply | None = None) -> Reply:
        return cls(kind="delay", seconds=seconds, then=then or Reply.text(DEFAULT_TEXT))

    @classmethod
    def raw(cls, status: int, body: bytes, headers: dict[str, str] | None = None) -> Reply:
        return cls(kind="raw", status=status, body=body, headers=dict(headers or {}))

    @classmethod
    def echo(cls, **kw: Any) -> Reply:
        """Answer with text equal to the JSON body received (compact, keys sorted)."""
        return cls(kind="echo", **kw)


_HTTP_FAILURES = ("error", "html", "raw")
_STARTED = web.RequestKey("fake_upstream.started", web.StreamResponse)  # the response being streamed


def _peer(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else ""


def _default_error_type(status: int) -> str:
    if status == 429:
        return "requests"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def _default_error_code(status: int) -> str | None:
    return {429: "rate_limit_exceeded", 401: "invalid_api_key"}.get(status)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> Json:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# ---------------------------------------------------------------------------------------------
# The answer a reply stands for, independent of dialect
# ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """Dialect-neutral content of one model turn, built from a Reply and the request."""

    text: str | None
    calls: list[tuple[str, str]]
    summary: list[str]
    encrypted: str | None
    incomplete: str | None
    reply: Reply

    @classmethod
    def of(cls, reply: Reply, request_body: Any) -> Answer:
        text = reply.content
        if reply.kind == "echo":
            text = json.dumps(request_body, sort_keys=True, separators=(",", ":"))
        elif text is None and not reply.calls:
            text = DEFAULT_TEXT
        return cls(text, reply.calls, reply.summary, reply.encrypted, reply.incomplete_reason, reply)

    def pieces(self) -> list[str]:
        """How the text is streamed: the scripted chunks, or words with their spaces."""
        if self.text is None:
            return []
        if self.reply.chunks is not None:
            return list(self.reply.chunks)
        return split_words(self.text)


def split_words(text: str) -> list[str]:
    """Split on spaces keeping them, so that the pieces concatenate back to ``text``."""
    pieces = [word + " " for word in text.split(" ")]
    pieces[-1] = pieces[-1][:-1]
    return [p for p in pieces if p]


def split_arguments(arguments: str, parts: int = 3) -> list[str]:
    """Cut a JSON argument string into a few fragments, as the real API streams them."""
    size = max(1, math.ceil(len(arguments) / parts))
    return [arguments[i : i + size] for i in range(0, len(arguments), size)] or [""]


@dataclass
class Frame:
    """One SSE event: an optional ``event:`` name and a payload (a dict, or a raw string)."""

    data: Json | str
    event: str | None = None
    schema: str | None = None  # schema the payload must satisfy; None = deliberately broken
    vendor: str = "openai"  # whose spec ``schema`` is in: openai, anthropic or gemini
    newline: str = "\n"  # Google ends its SSE lines with \r\n

    def payload(self) -> bytes:
        return (self.data if isinstance(self.data, str) else _dumps(self.data)).encode()

    def encode(self) -> bytes:
        head = f"event: {self.event}{self.newline}" if self.event else ""
        return f"{head}data: ".encode() + self.payload() + (self.newline * 2).encode()


@dataclass
class Stream:
    """The frames of a streamed answer and how it ends."""

    frames: list[Frame]
    terminator: bytes | None
    error_frame: Callable[[int, str], Frame]
    garbage: Frame
    json_array: bool = False  # Gemini without ?alt=sse: the frames are elements of one JSON array

    def encode(self, index: int, frame: Frame) -> bytes:
        if self.json_array:  # as Google sends it: "[{...}" then "\r\n,{...}" ... then "]"
            return (b"[" if index == 0 else b"\r\n,") + frame.payload()
        return frame.encode()

    @property
    def content_type(self) -> str:
        return "application/json; charset=UTF-8" if self.json_array else "text/event-stream"


# ---------------------------------------------------------------------------------------------
# Chat Completions dialect (PROTOCOLS.md section 1)
# ---------------------------------------------------------------------------------------------


class ChatDialect:
    """Renders an Answer as a ``chat.completion`` object or a chunk stream."""

    def __init__(self, ids: Ids, model: str, body: Json) -> None:
        self.ids = ids
        self.model = model
        self.body = body
        self.id = ids.make("chatcmpl-fake")
        self.created = int(time.time())
        options = body.get("stream_options") or {}
        self.include_usage = bool(options.get("include_usage"))
        self.obfuscate = options.get("include_obfuscation", True) is not False
        self.call_ids: list[str] = []

    def _call_id(self, index: int) -> str:
        while len(self.call_ids) <= index:
            self.call_ids.append(self.ids.make("call_fake"))
        return self.call_ids[index]

    def finish_reason(self, answer: Answer) -> str:
        if answer.incomplete:
            return "content_filter" if answer.incomplete == "content_filter" else "length"
        return "tool_calls" if answer.calls else "stop"

    def usage(self, reply: Reply) -> Json:
        prompt, completion = reply.usage
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": reply.cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reply.reasoning_tokens,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def document(self, answer: Answer) -> Json:
        message: Json = {"role": "assistant", "content": answer.text, "refusal": None, "annotations": []}
        if answer.summary:
            message["reasoning_content"] = "\n\n".join(answer.summary)
        if answer.calls:
            message["tool_calls"] = [
                {"id": self._call_id(i), "type": "function", "function": {"name": name, "arguments": args}}
                for i, (name, args) in enumerate(answer.calls)
            ]
        choice = {
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": self.finish_reason(answer),
        }
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": self.usage(answer.reply),
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }

    def chunk(self, delta: Json, finish_reason: str | None = None) -> Frame:
        payload: Json = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            payload["usage"] = None
        if self.obfuscate:
            payload["obfuscation"] = "x" * (4 + len(json.dumps(delta)) % 7)
        return Frame(payload, schema="CreateChatCompletionStreamResponse")

    def stream(self, answer: Answer) -> Stream:
        first: Json = {"role": "assistant", "content": "" if answer.text is not None else None}
        frames = [self.chunk(first)]
        frames += [self.chunk({"reasoning_content": piece}) for piece in self._reasoning_pieces(answer)]
        frames += [self.chunk({"content": piece}) for piece in answer.pieces()]
        frames += self._tool_call_frames(answer)
        frames.append(self.chunk({}, self.finish_reason(answer)))
        if self.include_usage:
            frames.append(self._usage_frame(answer.reply))
        garbage = Frame("this is not json {")
        return Stream(frames, b"data: [DONE]\n\n", self._error_frame, garbage)

    def _reasoning_pieces(self, answer: Answer) -> list[str]:
        return [piece for part in answer.summary for piece in split_words(part)]

    def _tool_call_frames(self, answer: Answer) -> list[Frame]:
        frames = []
        for index, (name, arguments) in enumerate(answer.calls):
            head = {"index": index, "id": self._call_id(index), "type": "function"}
            head["function"] = {"name": name, "arguments": ""}
            frames.append(self.chunk({"tool_calls": [head]}))
            for fragment in split_arguments(arguments):
                part = {"index": index, "function": {"arguments": fragment}}
                frames.append(self.chunk({"tool_calls": [part]}))
        return frames

    def _usage_frame(self, reply: Reply) -> Frame:
        payload = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
            "choices": [],
            "usage": self.usage(reply),
        }
        return Frame(payload, schema="CreateChatCompletionStreamResponse")

    def _error_frame(self, _sequence: int, message: str) -> Frame:
        return Frame(error_body(message, "server_error", "server_error"), schema="ErrorResponse")


# ---------------------------------------------------------------------------------------------
# Responses dialect (PROTOCOLS.md section 2)
# ---------------------------------------------------------------------------------------------


class ResponsesDialect:
    """Renders an Answer as a ``response`` object or the Responses event stream."""

    def __init__(self, ids: Ids, model: str, body: Json) -> None:
        self.ids = ids
        self.model = model
        self.body = body
        self.id = ids.make("resp_fake")
        self.created = int(time.time())
        self.include_encrypted = "reasoning.encrypted_content" in (body.get("include") or [])
        options = body.get("stream_options") or {}
        self.obfuscate = options.get("include_obfuscation", True) is not False
        self.events: list[Frame] = []

    # -- objects -------------------------------------------------------------------------------

    def usage(self, reply: Reply) -> Json:
        prompt, completion = reply.usage
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": reply.cached, "cache_write_tokens": 0},
            "output_tokens": completion,
            "output_tokens_details": {"reasoning_tokens": reply.reasoning_tokens},
            "total_tokens": prompt + completion,
        }

    def response(self, status: str, output: list[Json], answer: Answer | None = None) -> Json:
        """The ``response`` object; request settings are echoed back as the real API does."""
        body = self.body
        done = status in ("completed", "incomplete", "failed")
        incomplete = answer.incomplete if answer and status == "incomplete" else None
        response = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "background": _or(body.get("background"), False),
            "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": body.get("max_tool_calls"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": _or(body.get("parallel_tool_calls"), True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": _or(body.get("reasoning"), {"effort": None, "summary": None}),
            "service_tier": "default",
            "store": _or(body.get("store"), True),
            "temperature": _or(body.get("temperature"), 1.0),
            "text": _or(body.get("text"), {"format": {"type": "text"}, "verbosity": "medium"}),
            "tool_choice": _or(body.get("tool_choice"), "auto"),
            "tools": _or(body.get("tools"), []),
            "top_p": _or(body.get("top_p"), 1.0),
            "truncation": _or(body.get("truncation"), "disabled"),
            "metadata": _or(body.get("metadata"), {}),
        }
        if answer and done:  # the spec's ``usage`` is not nullable: absent until the end
            response["usage"] = self.usage(answer.reply)
        return response

    def items(self, answer: Answer) -> list[Json]:
        """Final output items: reasoning, then the message, then function calls."""
        status = "incomplete" if answer.incomplete else "completed"
        items = []
        if answer.summary:
            items.append(self._reasoning_item(answer, done=True))
        if answer.text is not None:
            items.append(self._message_item(answer.text, status))
        items += [self._call_item(i, name, args, "completed") for i, (name, args) in enumerate(answer.calls)]
        return items

    def final_status(self, answer: Answer) -> str:
        return "incomplete" if answer.incomplete else "completed"

    def document(self, answer: Answer) -> Json:
        return self.response(self.final_status(answer), self.items(answer), answer)

    def failed(self, message: str) -> Json:
        response = self.response("failed", [])
        response["error"] = {"code": "server_error", "message": message}
        return response

    def _item_id(self, prefix: str, index: int) -> str:
        return f"{prefix}_{self.id.removeprefix('resp_')}_{index}"

    def _message_item(self, text: str, status: str) -> Json:
        return {
            "id": self._item_id("msg", 0),
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": [_output_text(text)],
        }

    def _call_item(self, index: int, name: str, arguments: str, status: str) -> Json:
        return {
            "id": self._item_id("fc", index),
            "type": "function_call",
            "status": status,
            "arguments": arguments,
            "call_id": f"call_{self.id.removeprefix('resp_')}_{index}",
            "name": name,
        }

    def _reasoning_item(self, answer: Answer, done: bool) -> Json:
        item: Json = {"id": self._item_id("rs", 0), "type": "reasoning", "summary": []}
        if done:
            item["summary"] = [{"type": "summary_text", "text": part} for part in answer.summary]
            if self.include_encrypted:
                item["encrypted_content"] = answer.encrypted
        return item

    # -- stream --------------------------------------------------------------------------------

    def emit(self, type_: str, **fields: Any) -> None:
        payload = {"type": type_, "sequence_number": len(self.events), **fields}
        self.events.append(Frame(payload, event=type_, schema="ResponseStreamEvent"))

    def stream(self, answer: Answer) -> Stream:
        self.events = []
        self.emit("response.created", response=self.response("in_progress", []))
        self.emit("response.in_progress", response=self.response("in_progress", []))
        final = self.items(answer)
        for index, item in enumerate(final):
            self.emit("response.output_item.added", output_index=index, item=self._opening(item))
            self._stream_item_body(index, item, answer)
            self.emit("response.output_item.done", output_index=index, item=item)
        status = self.final_status(answer)
        self.emit(f"response.{status}", response=self.response(status, final, answer))
        garbage = Frame("this is not json {", event="response.output_text.delta")
        return Stream(self.events, None, self._error_frame, garbage)

    def _opening(self, item: Json) -> Json:
        """The item as announced by ``output_item.added``: in progress and still empty."""
        if item["type"] == "message":
            return {**item, "status": "in_progress", "content": []}
        if item["type"] == "function_call":
            return {**item, "status": "in_progress", "arguments": ""}
        return {"id": item["id"], "type": "reasoning", "summary": []}

    def _stream_item_body(self, index: int, item: Json, answer: Answer) -> None:
        if item["type"] == "message":
            self._stream_text(index, item["id"], item["content"][0]["text"], answer)
        elif item["type"] == "function_call":
            self._stream_arguments(index, item)
        else:
            self._stream_summary(index, item)

    def _stream_text(self, index: int, item_id: str, text: str, answer: Answer) -> None:
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        self.emit("response.content_part.added", **where, part=_output_text(""))
        for piece in answer.pieces():
            extra = {"obfuscation": "x" * (3 + len(piece) % 5)} if self.obfuscate else {}
            self.emit("response.output_text.delta", **where, delta=piece, logprobs=[], **extra)
        self.emit("response.output_text.done", **where, text=text, logprobs=[])
        self.emit("response.content_part.done", **where, part=_output_text(text))

    def _stream_arguments(self, index: int, item: Json) -> None:
        where = {"item_id": item["id"], "output_index": index}
        for fragment in split_arguments(item["arguments"]):
            self.emit("response.function_call_arguments.delta", **where, delta=fragment)
        self.emit(
            "response.function_call_arguments.done", **where, name=item["name"], arguments=item["arguments"]
        )

    def _stream_summary(self, index: int, item: Json) -> None:
        for summary_index, part in enumerate(item["summary"]):
            where = {"item_id": item["id"], "output_index": index, "summary_index": summary_index}
            self.emit(
                "response.reasoning_summary_part.added", **where, part={"type": "summary_text", "text": ""}
            )
            for piece in split_words(part["text"]):
                self.emit("response.reasoning_summary_text.delta", **where, delta=piece)
            self.emit("response.reasoning_summary_text.done", **where, text=part["text"])
            self.emit("response.reasoning_summary_part.done", **where, part=dict(part))

    def _error_frame(self, sequence: int, message: str) -> Frame:
        payload = {"type": "response.failed", "sequence_number": sequence, "response": self.failed(message)}
        return Frame(payload, event="response.failed", schema="ResponseStreamEvent")


def _output_text(text: str) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


# ---------------------------------------------------------------------------------------------
# Signatures and token counts shared by the Anthropic and Gemini dialects
# ---------------------------------------------------------------------------------------------

# Not a secret: it only lets the fake tell its own signatures from altered or invented ones.
_SIGNING_KEY = b"fake-upstream signing salt; private to tests/fake_upstream.py"
_GEMINI_SIGNATURE_TAG = b"\x12\x20"


def _mac(purpose: bytes, data: bytes) -> bytes:
    return hmac.new(_SIGNING_KEY, purpose + b"\0" + data, hashlib.sha256).digest()


def anthropic_signature(thinking: str) -> str:
    """The ``signature`` the fake gives a ``thinking`` block: base64 of a keyed hash of its text."""
    return base64.b64encode(_mac(b"anthropic-thinking", thinking.encode())).decode()


def gemini_signature(thought: str) -> str:
    """The ``thoughtSignature`` the fake mints for a thought: base64 of a tag, a digest of the
    thought and a keyed hash of that digest, so that the fake can recognise it later on its own."""
    digest = hashlib.sha256(thought.encode()).digest()[:16]
    return base64.b64encode(_GEMINI_SIGNATURE_TAG + digest + _mac(b"gemini-thought", digest)[:16]).decode()


def gemini_signature_is_minted(signature: Any) -> bool:
    """Whether ``signature`` is, byte for byte, one that ``gemini_signature`` produced."""
    if not isinstance(signature, str):
        return False
    # proto3 JSON ``bytes`` may be standard or URL-safe base64 (google-genai re-encodes URL-safe)
    standard = signature.replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(standard, validate=True)
    except ValueError:
        return False
    tag, digest, mac = raw[:2], raw[2:18], raw[18:]
    return (
        len(raw) == 34
        and tag == _GEMINI_SIGNATURE_TAG
        and hmac.compare_digest(mac, _mac(b"gemini-thought", digest)[:16])
        and base64.b64encode(raw).decode() == standard  # no stray padding or bits
    )


def count_tokens(value: Any) -> int:
    """The fake's deterministic token count: a quarter of the compact, key-sorted JSON, at least 1."""
    return max(1, math.ceil(len(json.dumps(value, sort_keys=True, separators=(",", ":"))) / 4))


def arguments_object(arguments: str) -> Json:
    """A scripted call's arguments as the object Anthropic (``input``) and Gemini (``args``) send."""
    value = json.loads(arguments) if arguments.strip() else {}
    if not isinstance(value, dict):
        raise ValueError(f"tool call arguments {arguments!r} are not a JSON object")
    return value


# ---------------------------------------------------------------------------------------------
# Anthropic Messages dialect (PROTOCOLS.md section 5)
# ---------------------------------------------------------------------------------------------

ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def anthropic_error_type(status: int, requested: str | None = None) -> str:
    """``requested`` if it is an Anthropic error type, else the one Anthropic uses for ``status``."""
    if requested is not None and requested in ANTHROPIC_ERROR_TYPES.values():
        return requested
    return ANTHROPIC_ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def anthropic_error_body(message: str, type_: str, request_id: str | None) -> Json:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}


class AnthropicDialect:
    """Renders an Answer as a ``message`` object or the Messages event stream.

    ``beta`` (the request went to ``?beta=true`` or carried ``anthropic-beta``) selects the
    ``Beta*`` schemas, which add ``context_management`` and usage ``iterations``/``speed``.
    """

    def __init__(self, ids: Ids, model: str, body: Json, request_id: str, beta: bool = False) -> None:
        self.ids = ids
        self.model = model
        self.body = body
        self.request_id = request_id
        self.beta = beta
        self.prefix = "Beta" if beta else ""
        self.id = ids.make("msg_fake")
        self.tool_ids: list[str] = []

    def _tool_id(self, index: int) -> str:
        while len(self.tool_ids) <= index:
            self.tool_ids.append(self.ids.make("toolu_fake"))
        return self.tool_ids[index]

    def usage(self, reply: Reply, output_tokens: int | None = None) -> Json:
        """``input_tokens`` counts only uncached input: the Reply's ``cached`` is read from the cache."""
        prompt, completion = reply.usage
        usage: Json = {
            "input_tokens": max(0, prompt - reply.cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": reply.cached,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": completion if output_tokens is None else output_tokens,
            "server_tool_use": None,
            "service_tier": "standard",
            "inference_geo": None,
        }
        if self.beta:
            usage |= {"iterations": None, "speed": None}
        return usage

    def delta_usage(self, reply: Reply) -> Json:
        """``message_delta.usage``: cumulative counts (``output_tokens`` replaces the running value)."""
        prompt, completion = reply.usage
        usage: Json = {
            "input_tokens": max(0, prompt - reply.cached),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": reply.cached,
            "output_tokens": completion,
            "server_tool_use": None,
        }
        if self.beta:
            usage["iterations"] = None
        return usage

    def stop_reason(self, answer: Answer) -> str:
        if answer.incomplete:
            return "refusal" if answer.incomplete == "content_filter" else "max_tokens"
        return "tool_use" if answer.calls else "end_turn"

    def stop_details(self, answer: Answer) -> Json | None:
        if self.stop_reason(answer) == "refusal":
            return {"type": "refusal", "category": None, "explanation": None}
        return None

    def blocks(self, answer: Answer) -> list[Json]:
        """Final content blocks: signed thinking, then text, then tool_use."""
        blocks: list[Json] = []
        if answer.summary:
            thinking = "\n\n".join(answer.summary)
            blocks.append(
                {"type": "thinking", "thinking": thinking, "signature": anthropic_signature(thinking)}
            )
        if answer.text is not None and (answer.text or not answer.calls):
            blocks.append({"type": "text", "text": answer.text, "citations": None})
        for index, (name, arguments) in enumerate(answer.calls):
            block = {"type": "tool_use", "id": self._tool_id(index), "name": name}
            blocks.append({**block, "input": arguments_object(arguments), "caller": {"type": "direct"}})
        return blocks

    def message(self, content: list[Json], answer: Answer | None, usage: Json) -> Json:
        message: Json = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason(answer) if answer else None,
            "stop_sequence": None,
            "stop_details": self.stop_details(answer) if answer else None,
            "container": None,
            "usage": usage,
        }
        if self.beta:
            message["context_management"] = None
        return message

    def document(self, answer: Answer) -> Json:
        return self.message(self.blocks(answer), answer, self.usage(answer.reply))

    def count(self, body: Json) -> Json:
        counted = {key: body[key] for key in ("system", "messages", "tools") if key in body}
        document: Json = {"input_tokens": count_tokens(counted)}
        if self.beta:
            document["context_management"] = None
        return document

    def error(self, message: str, type_: str) -> Json:
        return anthropic_error_body(message, type_, self.request_id)

    # -- stream --------------------------------------------------------------------------------

    def event(self, type_: str, **fields: Any) -> Frame:
        # The vendored spec has ``Ping`` in MessageStreamEvent only, not in the Beta union (SOURCES.md).
        schema = "Ping" if type_ == "ping" else f"{self.prefix}MessageStreamEvent"
        return Frame({"type": type_, **fields}, event=type_, schema=schema, vendor="anthropic")

    def stream(self, answer: Answer) -> Stream:
        start = self.message([], None, self.usage(answer.reply, output_tokens=1))
        frames = [self.event("message_start", message=start)]
        blocks = self.blocks(answer)
        for index, block in enumerate(blocks):
            frames.append(self.event("content_block_start", index=index, content_block=self._opening(block)))
            if index == 0:
                frames.append(self.event("ping"))
            frames += [
                self.event("content_block_delta", index=index, delta=d) for d in self._deltas(block, answer)
            ]
            frames.append(self.event("content_block_stop", index=index))
        if not blocks:
            frames.append(self.event("ping"))
        delta = {
            "stop_reason": self.stop_reason(answer),
            "stop_sequence": None,
            "stop_details": self.stop_details(answer),
            "container": None,
        }
        extra = {"context_management": None} if self.beta else {}
        frames.append(self.event("message_delta", delta=delta, usage=self.delta_usage(answer.reply), **extra))
        frames.append(self.event("message_stop"))
        garbage = Frame("this is not json {", event="content_block_delta", vendor="anthropic")
        return Stream(frames, None, self._error_frame, garbage)

    def _opening(self, block: Json) -> Json:
        """The block as ``content_block_start`` announces it: empty, to be filled by deltas."""
        if block["type"] == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        if block["type"] == "text":
            return {**block, "text": ""}
        return {**block, "input": {}}

    def _deltas(self, block: Json, answer: Answer) -> list[Json]:
        if block["type"] == "thinking":
            deltas = [{"type": "thinking_delta", "thinking": p} for p in split_words(block["thinking"])]
            return [*deltas, {"type": "signature_delta", "signature": block["signature"]}]
        if block["type"] == "text":
            return [{"type": "text_delta", "text": piece} for piece in answer.pieces()]
        index = self.tool_ids.index(block["id"])
        arguments = answer.calls[index][1]
        return [{"type": "input_json_delta", "partial_json": part} for part in split_arguments(arguments)]

    def _error_frame(self, _sequence: int, message: str) -> Frame:
        payload = self.error(message, "api_error")
        return Frame(payload, event="error", schema=f"{self.prefix}ErrorResponse", vendor="anthropic")


# ---------------------------------------------------------------------------------------------
# Gemini dialect (PROTOCOLS.md section 6)
# ---------------------------------------------------------------------------------------------

GOOGLE_ERROR = "google.rpc.Status"  # pseudo-schema name: Google's error envelope (PROTOCOLS.md 6.5)
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
GOOGLE_CANONICAL = frozenset(
    {
        *GOOGLE_STATUSES.values(),
        "UNKNOWN",
        "ALREADY_EXISTS",
        "FAILED_PRECONDITION",
        "OUT_OF_RANGE",
        "DATA_LOSS",
    }
)


def google_status(status: int, requested: str | None = None) -> str:
    """``requested`` if it is a canonical Google status, else the one Google uses for ``status``."""
    if requested in GOOGLE_CANONICAL:
        return requested
    return GOOGLE_STATUSES.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")


def google_error_body(status: int, message: str, status_name: str) -> Json:
    return {"error": {"code": status, "message": message, "status": status_name}}


def google_error_problems(body: Any, http_status: int | None = None) -> list[str]:
    """Why ``body`` is not Google's error envelope (no spec file describes it; PROTOCOLS.md 6.5)."""
    error = body.get("error") if isinstance(body, dict) and set(body) == {"error"} else None
    if not isinstance(error, dict):
        return ['$: not {"error": {...}}']
    problems = [
        f"$.error.{key}: unexpected" for key in error if key not in ("code", "message", "status", "details")
    ]
    if not isinstance(error.get("code"), int) or (http_status is not None and error["code"] != http_status):
        problems.append(f"$.error.code: {error.get('code')!r} is not the HTTP status {http_status}")
    if not isinstance(error.get("message"), str):
        problems.append("$.error.message: not a string")
    if error.get("status") not in GOOGLE_CANONICAL:
        problems.append(f"$.error.status: {error.get('status')!r} is not a canonical status")
    if "details" in error and not isinstance(error["details"], list):
        problems.append("$.error.details: not a list")
    return problems


class GeminiDialect:
    """Renders an Answer as a ``GenerateContentResponse`` or a stream of them.

    A thought becomes ``{"text": ..., "thought": true}`` and its ``thoughtSignature`` rides on the
    next part (the answer's text, or its first ``functionCall``; an empty text part if neither).
    Function calls arrive whole, without ``id`` (as the Developer API sends them), and end with
    ``finishReason: STOP`` like any answer.
    """

    def __init__(self, ids: Ids, model: str, body: Json, sse: bool = True) -> None:
        self.ids = ids
        self.model = model
        self.body = body
        self.sse = sse
        self.response_id = ids.make("fake-gemini-")

    def usage(self, reply: Reply, final: bool = True) -> Json:
        """``promptTokenCount`` includes cached tokens; thoughts are counted apart from candidates.
        Chunks before the last carry only the prompt's part, as Google streams it."""
        prompt, output = reply.usage
        usage: Json = {"promptTokenCount": prompt}
        if final:
            usage["candidatesTokenCount"] = max(0, output - reply.reasoning_tokens)
            usage["totalTokenCount"] = prompt + output
            if reply.reasoning_tokens:
                usage["thoughtsTokenCount"] = reply.reasoning_tokens
        else:
            usage["totalTokenCount"] = prompt
        if reply.cached:
            usage["cachedContentTokenCount"] = reply.cached
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        return usage

    def finish_reason(self, answer: Answer) -> str:
        if answer.incomplete:
            return "SAFETY" if answer.incomplete == "content_filter" else "MAX_TOKENS"
        return "STOP"

    def thought(self, answer: Answer) -> str | None:
        return "\n\n".join(answer.summary) if answer.summary else None

    def parts(self, answer: Answer) -> list[Json]:
        thought = self.thought(answer)
        parts: list[Json] = [{"text": thought, "thought": True}] if thought is not None else []
        if answer.text is not None and (answer.text or not answer.calls):
            parts.append({"text": answer.text})
        parts += self._calls(answer)
        if thought is not None:
            self._sign(parts, 1, thought)
        return parts

    def _calls(self, answer: Answer) -> list[Json]:
        return [{"functionCall": {"name": n, "args": arguments_object(a)}} for n, a in answer.calls]

    def _sign(self, parts: list[Json], index: int, thought: str) -> None:
        if len(parts) <= index:
            parts.append({"text": ""})
        parts[index]["thoughtSignature"] = gemini_signature(thought)

    def response(self, parts: list[Json], usage: Json, answer: Answer | None = None) -> Json:
        candidate: Json = {"content": {"parts": parts, "role": "model"}}
        if answer is not None:
            candidate["finishReason"] = self.finish_reason(answer)
        candidate["index"] = 0
        return {
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": self.response_id,
        }

    def document(self, answer: Answer) -> Json:
        return self.response(self.parts(answer), self.usage(answer.reply), answer)

    def count(self, body: Json) -> Json:
        """``{contents}`` or ``{generateContentRequest}`` (either spelling) -> ``{totalTokens}``."""
        request = body.get("generateContentRequest", body.get("generate_content_request"))
        if isinstance(request, dict):
            keys = ("contents", "systemInstruction", "system_instruction", "tools")
            counted = {key: request[key] for key in keys if key in request}
        else:
            counted = {"contents": body.get("contents", [])}
        return {"totalTokens": count_tokens(counted)}

    def stream(self, answer: Answer) -> Stream:
        """One chunk per thought word, per text piece, then one with every function call; the last
        chunk carries ``finishReason`` and the full usage."""
        thought = self.thought(answer)
        chunks: list[list[Json]] = []
        if thought is not None:
            chunks += [[{"text": piece, "thought": True}] for piece in split_words(thought)]
        answer_start = len(chunks)
        chunks += [[{"text": piece}] for piece in answer.pieces()]
        calls = self._calls(answer)
        if calls:
            chunks.append(calls)
        if len(chunks) == answer_start:  # nothing after the thought (or nothing at all)
            chunks.append([{"text": ""}])
        if thought is not None:
            self._sign(chunks[answer_start], 0, thought)
        last = len(chunks) - 1
        frames = [
            self._frame(
                self.response(parts, self.usage(answer.reply, final=i == last), answer if i == last else None)
            )
            for i, parts in enumerate(chunks)
        ]
        garbage = Frame("this is not json {", vendor="gemini", newline="\r\n")
        return Stream(frames, None, self._error_frame, garbage, json_array=not self.sse)

    def _frame(self, payload: Json) -> Frame:
        return Frame(payload, schema="GenerateContentResponse", vendor="gemini", newline="\r\n")

    def _error_frame(self, _sequence: int, message: str) -> Frame:
        payload = google_error_body(500, message, "INTERNAL")
        return Frame(payload, schema=GOOGLE_ERROR, vendor="gemini", newline="\r\n")


# ---------------------------------------------------------------------------------------------
# Embeddings and models (PROTOCOLS.md sections 3 and 4)
# ---------------------------------------------------------------------------------------------


def embedding_for(text: str, dimensions: int = 8) -> list[float]:
    """The fake's deterministic unit vector for ``text``, exactly representable as float32."""
    raw = []
    for i in range(dimensions):
        digest = hashlib.sha256(f"{i}:{text}".encode()).digest()
        raw.append(int.from_bytes(digest[:4], "little") / 2**31 - 1.0)
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    floats = [x / norm for x in raw]
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *floats)))


def embedding_inputs(value: Any) -> list[str]:
    """Each input of an embeddings request as text (token arrays are embedded by their JSON)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [json.dumps(value)]
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return [json.dumps(value)]


def embeddings_document(body: Json, model: str) -> Json:
    dimensions = body.get("dimensions") or 8
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(embedding_inputs(body.get("input"))):
        vector: Any = embedding_for(text, dimensions)
        if as_base64:
            vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(max(1, len(text.split())) for text in embedding_inputs(body.get("input")))
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def gemini_embedding(request: Json) -> list[float]:
    """The vector for one ``EmbedContentRequest``: its texts' (joined by newlines), at its
    ``outputDimensionality`` (8 by default)."""
    content = request.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    text = "\n".join(p["text"] for p in parts or [] if isinstance(p, dict) and isinstance(p.get("text"), str))
    return embedding_for(text, request.get("outputDimensionality") or 8)


def decoded_embeddings(document: Json) -> Json:
    """The spec only knows float arrays, so base64 vectors are checked in their decoded form."""
    data = []
    for item in document.get("data", []):
        vector = item.get("embedding")
        if isinstance(vector, str):
            raw = base64.b64decode(vector)
            vector = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        data.append({**item, "embedding": vector})
    return {**document, "data": data}


def model_object(model_id: str) -> Json:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": "openai"}


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class Ids:
    """Counter-based ids (``call_fake0003``): no randomness, yet never reused while the server
    lives, so a long-lived gateway cannot confuse one test's ``resp_...`` with another's."""

    def __init__(self) -> None:
        self.counter = 0
        self.lock = threading.Lock()

    def make(self, prefix: str) -> str:
        with self.lock:
            self.counter += 1
            return f"{prefix}{self.counter:04d}"


@dataclass
class Call:
    """One request being handled: what arrived, where, and for which model."""

    request: web.Request
    recorded: Recorded
    endpoint: str
    model: str | None = None
    request_id: str = ""  # Anthropic's ``request-id`` header (and ``request_id`` in errors)

    @property
    def body(self) -> Any:
        return self.recorded.body

    @property
    def streaming(self) -> bool:
        if self.endpoint == "gemini_stream":
            return True
        return isinstance(self.body, dict) and self.body.get("stream") is True

    @property
    def vendor(self) -> str:
        return VENDORS.get(self.endpoint, "openai")

    @property
    def beta(self) -> bool:
        """An Anthropic beta request: the SDK's ``beta.messages`` (``?beta=true``) or beta flags."""
        return self.recorded.query.get("beta") == "true" or "anthropic-beta" in self.recorded.headers


@dataclass
class Connection:
    """One WebSocket connection's own state: its number and the response it remembers (its most
    recent), with the call ids that response's chain holds."""

    number: int
    recent: tuple[str, frozenset[str]] | None = None

    def remember(self, response: Json, chain_calls: frozenset[str] | None) -> None:
        made = {i["call_id"] for i in response["output"] if i.get("type") == "function_call"}
        self.recent = (response["id"], (chain_calls or frozenset()) | made)


@dataclass
class SocketRefusal:
    """Why a ``response.create`` is answered with an error event before generating."""

    status: int
    message: str
    code: str | None
    param: str | None


def metadata_problems(metadata: Any) -> list[str]:
    """The limits the spec states in words (``Metadata``): at most 16 pairs, keys of at most 64
    characters, values strings of at most 512."""
    if not isinstance(metadata, dict):
        return []
    problems = [f"metadata has {len(metadata)} keys; at most 16 are allowed"] if len(metadata) > 16 else []
    for key, value in metadata.items():
        if len(key) > 64:
            problems.append(f"metadata key {key[:20]!r}... is longer than 64 characters")
        if not isinstance(value, str) or len(value) > 512:
            problems.append(f"metadata value of {key!r} is not a string of at most 512 characters")
    return problems


REQUEST_SCHEMAS = {
    "chat": "CreateChatCompletionRequest",
    "responses": "CreateResponse",
    "embeddings": "CreateEmbeddingRequest",
    "messages": "CreateMessageParams",
    "count_tokens": "CountMessageTokensParams",
    "gemini_generate": "GenerateContentRequest",
    "gemini_stream": "GenerateContentRequest",
    "gemini_count": "CountTokensRequest",
    "gemini_embed": "EmbedContentRequest",
    "gemini_batch_embed": "BatchEmbedContentsRequest",
    "compact": "CompactResponseMethodPublicBody",
}
VENDORS = {
    "messages": "anthropic",
    "count_tokens": "anthropic",
    "gemini_generate": "gemini",
    "gemini_stream": "gemini",
    "gemini_count": "gemini",
    "gemini_embed": "gemini",
    "gemini_batch_embed": "gemini",
}


class NativeBackground:
    """What a native upstream keeps of its background responses: whole ones waiting to finish (at
    their first poll), and the events of streamed ones (for ``GET …?stream=true&starting_after=N``)."""

    def __init__(self) -> None:
        self.pending: dict[str, Json] = {}
        self.events: dict[str, list[Frame]] = {}

    def finish(self, response_id: str, stored: dict[str, Json]) -> None:
        final = self.pending.pop(response_id, None)
        if final is not None:
            stored[response_id] = final

    def cancel(self, response_id: str, stored: dict[str, Json]) -> Json | None:
        """The response cancelled if still running; finished ones stay as they are (as the API does)."""
        response = stored.get(response_id)
        if response is not None and self.pending.pop(response_id, None) is not None:
            response = stored[response_id] = {**response, "status": "cancelled"}
        return response


class FakeUpstream:
    """The fake OpenAI server. ``start()`` it, point a client at ``url``, ``stop()`` it."""

    def __init__(self, models: list[str] | None = None, base: str = "/v1") -> None:
        self.models = list(models if models is not None else DEFAULT_MODELS)
        self.base = "/" + base.strip("/")
        self.requests: list[Recorded] = []
        self.violations: list[str] = []
        self.stored: dict[str, Json] = {}
        self.background = NativeBackground()
        self.extra_fields: set[str] = set()  # vendor extensions an OpenAI-compatible server accepts
        self.url = ""
        self.root = ""
        self._queue: deque[Reply] = deque()
        self._model_queues: dict[str, deque[Reply]] = {}
        self._refusals: deque[Reply] = deque()  # answers to the next WebSocket handshakes
        self._socket_numbers = itertools.count(1)
        self._sockets: dict[int, web.Request] = {}  # open connections' upgrades (server thread only)
        self._lock = threading.Lock()
        self._ids = Ids()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.realtime = FakeRealtime(self._lock, self.violations)  # the Realtime API (fake_realtime.py)
        from tests.fake_media import FakeMedia  # the media endpoints (its own module; it imports this one)

        self.media = FakeMedia(self)

    # -- scripting API -------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests, in order, whatever endpoint they hit."""
        with self._lock:
            self._queue.extend(replies)

    def for_model(self, model: str, *replies: Reply) -> None:
        """Queue replies for requests naming ``model`` (body ``model``, Azure deployment, or the
        model in a Gemini path, without ``models/``)."""
        with self._lock:
            self._model_queues.setdefault(model, deque()).extend(replies)

    def reset(self) -> None:
        """Forget everything a test did: queues, recorded requests, violations, stored responses."""
        with self._lock:
            self._queue.clear()
            self._model_queues.clear()
            self.requests.clear()
            self.violations.clear()
            self.stored.clear()
            self.background = NativeBackground()
            self.extra_fields.clear()
            self._refusals.clear()
            self.media.reset()
        self.realtime.reset()
        self.drop_sockets()  # a socket left open by one test must not serve the next

    def refuse_upgrades(self, *replies: Reply) -> None:
        """Answer the next WebSocket handshakes with these HTTP failures (``Reply.error``,
        ``Reply.html``, ``Reply.raw``) instead of switching protocols."""
        with self._lock:
            self._refusals.extend(replies)

    def drop_sockets(self) -> int:
        """Cut every open WebSocket connection, without a close frame (as a network fault or a load
        balancer's idle timeout would); returns how many there were."""
        loop = self._loop
        if loop is None or not loop.is_running():
            return 0

        async def cut() -> int:
            upgrades = list(self._sockets.values())
            self._sockets.clear()
            for upgrade in upgrades:
                if upgrade.transport is not None:
                    upgrade.transport.close()
            return len(upgrades)

        return asyncio.run_coroutine_threadsafe(cut(), loop).result(timeout=10)

    @property
    def sockets(self) -> list[int]:
        """The numbers of the WebSocket connections that sent frames, in order of their first frame."""
        return list(dict.fromkeys(r.socket for r in self.requests if r.socket))

    @property
    def last(self) -> Recorded:
        """The most recent request (handy in assertions)."""
        return self.requests[-1]

    @staticmethod
    def anthropic_signature(thinking: str) -> str:
        """The signature the fake puts on (and expects back with) a ``thinking`` block of this text."""
        return anthropic_signature(thinking)

    @staticmethod
    def gemini_signature(thought: str) -> str:
        """The ``thoughtSignature`` the fake mints for this thought text (any minted one is accepted back)."""
        return gemini_signature(thought)

    def _next_reply(self, model: str | None) -> Reply:
        with self._lock:
            queue = self._model_queues.get(model or "")
            if queue:
                return queue.popleft()
            if self._queue:
                return self._queue.popleft()
        return Reply.text(DEFAULT_TEXT)

    def _violation(self, call: Call, message: str) -> None:
        with self._lock:
            self.violations.append(f"{call.recorded.method} {call.recorded.path}: {message}")

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Start the server thread; returns once the port is listening."""
        started: list[BaseException | None] = []
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(ready, started), name="fake-upstream", daemon=True
        )
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("fake upstream did not start within 30 s")
        if started and started[0] is not None:
            raise RuntimeError("fake upstream failed to start") from started[0]
        return self

    def stop(self) -> None:
        """Stop the loop, close every socket, and join the thread."""
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop = None
        self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self, ready: threading.Event, started: list[BaseException | None]) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve())
            started.append(None)
        except BaseException as exc:
            started.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + self.base

    def _add_routes(self, app: web.Application) -> None:
        self.realtime.mount(app, self.base)
        for prefix in (self.base, "/openai/v1"):
            app.router.add_post(f"{prefix}/chat/completions", self._endpoint("chat"))
            app.router.add_post(f"{prefix}/responses", self._endpoint("responses"))
            app.router.add_post(f"{prefix}/embeddings", self._endpoint("embeddings"))
            app.router.add_get(f"{prefix}/responses/{{id}}", self._endpoint("get_response"))
            app.router.add_delete(f"{prefix}/responses/{{id}}", self._endpoint("delete_response"))
            app.router.add_get(f"{prefix}/models", self._endpoint("models"))
            app.router.add_get(f"{prefix}/models/{{id}}", self._endpoint("model"))
            app.router.add_get(f"{prefix}/responses", self._serve_socket)
            app.router.add_post(f"{prefix}/responses/compact", self._endpoint("compact"))
            app.router.add_post(f"{prefix}/responses/{{id}}/cancel", self._endpoint("cancel_response"))
        self.media.add_routes(app, (self.base, "/openai/v1"))
        deployments = "/openai/deployments/{deployment}"
        app.router.add_post(f"{deployments}/chat/completions", self._endpoint("chat"))
        app.router.add_post(f"{deployments}/embeddings", self._endpoint("embeddings"))
        app.router.add_post("/openai/responses", self._endpoint("responses"))
        app.router.add_get("/openai/responses", self._serve_socket)
        app.router.add_post("/v1/messages", self._endpoint("messages"))
        app.router.add_post("/v1/messages/count_tokens", self._endpoint("count_tokens"))
        for version in ("v1beta", "v1"):  # google-genai 3.6 defaults to v1 once base_url is set
            gemini = f"/{version}/models/{{model:[^/:]+}}"
            app.router.add_post(f"{gemini}:generateContent", self._endpoint("gemini_generate"))
            app.router.add_post(f"{gemini}:streamGenerateContent", self._endpoint("gemini_stream"))
            app.router.add_post(f"{gemini}:countTokens", self._endpoint("gemini_count"))
            app.router.add_post(f"{gemini}:embedContent", self._endpoint("gemini_embed"))
            app.router.add_post(f"{gemini}:batchEmbedContents", self._endpoint("gemini_batch_embed"))

    @web.middleware
    async def _guard(self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]) -> Any:
        """A bug in the fake itself becomes a violation (and a 500), never a silent hang.

        A client that hangs up mid-stream is normal and not reported. Once a stream has started
        no 500 can be sent any more, so the connection is dropped instead.
        """
        try:
            return await handler(request)
        except (web.HTTPException, asyncio.CancelledError):
            raise
        except Exception as exc:
            if not isinstance(exc, ConnectionError):
                with self._lock:
                    self.violations.append(
                        f"{request.method} {request.path}: fake crashed\n{traceback.format_exc()}"
                    )
            started = request.get(_STARTED)
            if started is None:
                return web.json_response(_crash_body(request.path), status=500)
            if request.transport is not None:
                request.transport.close()
            return started

    # -- request handling -----------------------------------------------------------------------

    def _endpoint(self, endpoint: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            call = await self._receive(request, endpoint)
            if call.recorded.raw and call.body is None:
                self._violation(call, "request body is not valid JSON")
                return self._error(call, 400, "We could not parse the JSON body.")
            self._check_request(call)
            reply = self._next_reply(call.model)
            return await self._answer(call, reply)

        return handle

    async def _receive(self, request: web.Request, endpoint: str) -> Call:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        recorded = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            raw=raw,
            peer=_peer(request),
        )
        with self._lock:
            self.requests.append(recorded)
        path_model = request.match_info.get("deployment") or request.match_info.get("model")
        model = path_model or (body.get("model") if isinstance(body, dict) else None)
        call = Call(request, recorded, endpoint, model if isinstance(model, str) else None)
        if call.vendor == "anthropic":
            call.request_id = self._ids.make("req_fake")
        return call

    def _check_request(self, call: Call) -> None:
        """Record every way the request departs from what the real API accepts."""
        if call.vendor == "anthropic":
            self._check_anthropic_request(call)
            return
        if call.vendor == "gemini":
            self._check_gemini_request(call)
            return
        self._check_auth(call)
        schema = REQUEST_SCHEMAS.get(call.endpoint)
        if schema is None:
            return
        body = call.body
        if call.request.match_info.get("deployment") and isinstance(body, dict) and "model" not in body:
            body = {**body, "model": call.model}  # classic Azure names the model in the path
        for message in openai_errors(schema, body):
            self._violation(call, f"request not a valid {schema}: {message}")
        for name in set(unknown_fields(schema, body)) - self.extra_fields:
            self._violation(call, f"request field {name!r} is not in {schema}")
        if (
            isinstance(body, dict)
            and body.get("stream_options") is not None
            and body.get("stream") is not True
        ):
            self._violation(call, "stream_options is only allowed when stream is true")
        for problem in metadata_problems(body.get("metadata") if isinstance(body, dict) else None):
            self._violation(call, problem)

    def _check_auth(self, call: Call) -> None:
        headers = call.recorded.headers
        bearer = headers.get("authorization", "").startswith("Bearer ")
        path = call.recorded.path
        if path.startswith("/openai/") and not path.startswith("/openai/v1/"):
            if "api-version" not in call.recorded.query:
                self._violation(call, "Azure request without the api-version query parameter")
            if not (bearer or headers.get("api-key")):
                self._violation(call, "Azure request without an api-key header or bearer token")
        elif not (bearer or headers.get("api-key")):
            self._violation(call, "request without Authorization: Bearer")

    def _check_anthropic_request(self, call: Call) -> None:
        """Auth headers, the (Beta) request schema, and the signatures of thinking sent back."""
        headers = call.recorded.headers
        # The key goes in x-api-key (PROTOCOLS.md 5.1); the anthropic SDK 2.x sends it as a bearer
        # token instead, which the API takes too. Tests that care assert on ``last.headers``.
        if not (headers.get("x-api-key") or headers.get("authorization", "").startswith("Bearer ")):
            self._violation(call, "Anthropic request without an x-api-key header (or bearer token)")
        if not headers.get("anthropic-version"):
            self._violation(call, "Anthropic request without an anthropic-version header")
        schema = ("Beta" if call.beta else "") + REQUEST_SCHEMAS[call.endpoint]
        body = call.body
        unknown = set(anthropic_unknown_fields(schema, body)) - self.extra_fields
        for name in unknown:
            self._violation(call, f"request field {name!r} is not in {schema}")
        if isinstance(body, dict):  # unknown fields are reported once, above
            body = {k: v for k, v in body.items() if k not in unknown and k not in self.extra_fields}
        for message in anthropic_errors(schema, body):
            self._violation(call, f"request not a valid {schema}: {message}")
        messages = body.get("messages") if isinstance(body, dict) else None
        for i, message in enumerate(messages if isinstance(messages, list) else []):
            content = message.get("content") if isinstance(message, dict) else None
            for j, block in enumerate(content if isinstance(content, list) else []):
                if not (isinstance(block, dict) and block.get("type") == "thinking"):
                    continue
                if block.get("signature") != anthropic_signature(str(block.get("thinking"))):
                    self._violation(
                        call,
                        f"thinking block $.messages[{i}].content[{j}]: its signature is not the one the "
                        "fake gave this thinking text (altered thinking or signature)",
                    )

    def _check_gemini_request(self, call: Call) -> None:
        """Auth, the OpenAPI shape, names the protos do not know, and thought signatures."""
        if not (call.recorded.headers.get("x-goog-api-key") or call.recorded.query.get("key")):
            self._violation(call, "Gemini request without an x-goog-api-key header or key query parameter")
        alt = call.recorded.query.get("alt")
        if alt not in (None, "sse", "json"):
            self._violation(call, f"unsupported alt={alt!r}")
        schema = REQUEST_SCHEMAS[call.endpoint]
        body = call.body
        for message in gemini_errors(schema, body):
            self._violation(call, f"request not a valid {schema}: {message}")
        for path in gemini_unknown_fields(schema, body):
            if path.rsplit(".", 1)[-1] not in self.extra_fields:
                self._violation(call, f"request field {path} is not in the {schema} protos")
        request = body if isinstance(body, dict) else {}
        inner = request.get("generateContentRequest", request.get("generate_content_request"))
        where = "$.generateContentRequest" if isinstance(inner, dict) else "$"
        contents = (inner if isinstance(inner, dict) else request).get("contents")
        for i, content in enumerate(contents if isinstance(contents, list) else []):
            parts = content.get("parts") if isinstance(content, dict) else None
            for j, part in enumerate(parts if isinstance(parts, list) else []):
                if not isinstance(part, dict):
                    continue
                signature = part.get("thoughtSignature", part.get("thought_signature"))
                if signature is not None and not gemini_signature_is_minted(signature):
                    self._violation(
                        call,
                        f"thoughtSignature at {where}.contents[{i}].parts[{j}] is not one the fake minted",
                    )

    async def _answer(self, call: Call, reply: Reply) -> web.StreamResponse:
        if reply.kind == "delay":
            await asyncio.sleep(reply.seconds)
            return await self._answer(call, reply.then or Reply.text(DEFAULT_TEXT))
        if reply.kind in _HTTP_FAILURES:
            return self._http_failure(call, reply)
        handler: Callable[[Call, Reply], Awaitable[web.StreamResponse]]
        handler = getattr(self, f"_answer_{call.endpoint}")
        return await handler(call, reply)

    def _http_failure(self, call: Call, reply: Reply) -> web.StreamResponse:
        if reply.kind == "html":
            page = CLOUDFLARE_PAGE.format(status=reply.status)
            headers = {"Content-Type": "text/html; charset=UTF-8", "Server": "cloudflare"}
            return web.Response(status=reply.status, text=page, headers=headers)
        if reply.kind == "raw":
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
        return self._error(call, reply.status, reply.message, reply.error_type, reply.code, reply.headers)

    def _error(
        self,
        call: Call,
        status: int,
        message: str,
        type_: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> web.Response:
        """An HTTP error in the shape of the endpoint's vendor (``type_`` may be left to the status)."""
        body: Json
        if call.vendor == "anthropic":
            body = anthropic_error_body(message, anthropic_error_type(status, type_), call.request_id)
        elif call.vendor == "gemini":
            body = google_error_body(status, message, google_status(status, type_))
        else:
            body = error_body(message, type_ or _default_error_type(status), code)
        return self._json(call, body, status, headers)

    def _json(
        self,
        call: Call,
        body: Json,
        status: int = 200,
        headers: dict[str, str] | None = None,
        schema: str = "",
    ) -> web.Response:
        """Send a JSON body after checking it against ``schema`` (the vendor's error shape for errors)."""
        if status >= 400 and not schema:
            schema = {"anthropic": self._anthropic_schema(call, "ErrorResponse"), "gemini": GOOGLE_ERROR}.get(
                call.vendor, "ErrorResponse"
            )
        if schema:
            for message in self._payload_problems(call.vendor, schema, body, status):
                self._violation(call, f"fake sent an invalid {schema}: {message}")
        if call.request_id:
            headers = {"request-id": call.request_id, **(headers or {})}
        return web.json_response(body, status=status, headers=headers, dumps=_dumps)

    def _anthropic_schema(self, call: Call, name: str) -> str:
        return ("Beta" if call.beta else "") + name

    def _payload_problems(
        self, vendor: str, schema: str, payload: Any, status: int | None = None
    ) -> list[str]:
        """Why a payload the fake is about to send is not what the vendor's spec describes."""
        if vendor == "anthropic":
            return anthropic_errors(schema, payload)
        if vendor == "gemini":
            if schema == GOOGLE_ERROR:
                return google_error_problems(payload, status)
            unknown = [
                f"{path}: not a field of the protos" for path in gemini_unknown_fields(schema, payload)
            ]
            return gemini_errors(schema, payload) + unknown
        checked = decoded_embeddings(payload) if schema == "CreateEmbeddingResponse" else payload
        return openai_errors(schema, checked)

    async def _document(self, call: Call, reply: Reply, body: Json, schema: str) -> web.StreamResponse:
        """A non-streamed success, or its deliberately broken variants."""
        if reply.kind == "garbage":
            return web.Response(status=200, text="<<this is not JSON>>", content_type="application/json")
        if reply.kind == "truncated":
            return await self._half_body(call, _dumps(body).encode())
        return self._json(call, body, schema=schema)

    async def _half_body(self, call: Call, data: bytes) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(data)
        await self._start(call, response)
        await response.write(data[: len(data) // 2])
        self._drop_connection(call)
        return response

    async def _start(self, call: Call, response: web.StreamResponse) -> None:
        call.request[_STARTED] = response
        await response.prepare(call.request)

    def _drop_connection(self, call: Call) -> None:
        """Close the socket mid-body: the client sees an incomplete chunked read / short body."""
        transport = call.request.transport
        if transport is not None:
            transport.close()

    async def _send_stream(self, call: Call, reply: Reply, stream: Stream) -> web.StreamResponse:
        headers = {**SSE_HEADERS, "Content-Type": stream.content_type}
        if call.request_id:
            headers["request-id"] = call.request_id
        response = web.StreamResponse(status=200, headers=headers)
        await self._start(call, response)
        frames, ending = stream.frames, stream.terminator
        if reply.kind in ("truncated", "stream_error", "garbage"):
            frames = frames[: reply.after if reply.kind != "garbage" else 1]
        if reply.kind == "stream_error":
            frames = [*frames, stream.error_frame(len(frames), reply.message)]
            ending = None
        if reply.kind == "garbage":
            frames = [*frames, stream.garbage]
        for index, frame in enumerate(frames):
            if index and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            self._check_frame(call, index, frame)
            await response.write(stream.encode(index, frame))
        if reply.kind == "truncated":
            self._drop_connection(call)
            return response
        if stream.json_array:  # the array is closed even after an error element
            ending = b"]" if frames else b"[]"
        if ending:
            await response.write(ending)
        await response.write_eof()
        return response

    def _check_frame(self, call: Call, index: int, frame: Frame) -> None:
        if frame.schema is None or isinstance(frame.data, str):
            return
        for message in self._payload_problems(frame.vendor, frame.schema, frame.data, 500):
            self._violation(call, f"fake sent an invalid {frame.schema} (event #{index}): {message}")
        if frame.event is not None and frame.data.get("type") != frame.event:
            self._violation(
                call, f"event #{index}: event name {frame.event!r} != type {frame.data.get('type')!r}"
            )

    # -- endpoints -----------------------------------------------------------------------------

    async def _answer_chat(self, call: Call, reply: Reply) -> web.StreamResponse:
        body = call.body if isinstance(call.body, dict) else {}
        dialect = ChatDialect(self._ids, call.model or "unknown", body)
        answer = Answer.of(reply, call.body)
        if call.streaming:
            return await self._send_stream(call, reply, dialect.stream(answer))
        if reply.kind == "stream_error":
            return self._json(call, error_body(reply.message, "server_error", "server_error"), 500)
        return await self._document(call, reply, dialect.document(answer), "CreateChatCompletionResponse")

    async def _answer_responses(self, call: Call, reply: Reply) -> web.StreamResponse:
        body = call.body if isinstance(call.body, dict) else {}
        previous = body.get("previous_response_id")
        if previous and previous not in self.stored:
            message = f"Previous response with id '{previous}' not found."
            error = error_body(
                message, "invalid_request_error", "previous_response_not_found", "previous_response_id"
            )
            return self._json(call, error, 404)
        dialect = ResponsesDialect(self._ids, call.model or "unknown", body)
        answer = Answer.of(reply, call.body)
        failed = reply.kind == "stream_error"
        document = dialect.failed(reply.message) if failed else dialect.document(answer)
        self._store(body, document)
        if body.get("background") is True:
            return await self._answer_background(call, reply, dialect, answer, document)
        if call.streaming:
            return await self._send_stream(call, reply, dialect.stream(answer))
        if failed:  # a model failure on a non-streamed request: 200 with status "failed"
            return self._json(call, document, schema="Response")
        return await self._document(call, reply, document, "Response")

    def _store(self, body: Json, response: Json) -> None:
        if body.get("store") is not False:
            with self._lock:
                self.stored[response["id"]] = response

    async def _answer_get_response(self, call: Call, reply: Reply) -> web.StreamResponse:
        response_id = call.request.match_info["id"]
        if call.recorded.query.get("stream") == "true":
            return await self._resume_background(call, reply, response_id)
        with self._lock:
            self.background.finish(response_id, self.stored)
        response = self.stored.get(response_id)
        if response is None:
            return self._not_found(call, "Response", call.request.match_info["id"])
        return await self._document(call, reply, response, "Response")

    async def _answer_delete_response(self, call: Call, reply: Reply) -> web.StreamResponse:
        response_id = call.request.match_info["id"]
        with self._lock:
            found = self.stored.pop(response_id, None)
        if found is None:
            return self._not_found(call, "Response", response_id)
        return await self._document(
            call, reply, {"id": response_id, "object": "response", "deleted": True}, ""
        )

    # -- background responses, cancel and compaction (OpenAI) --------------------------------------

    async def _answer_background(
        self, call: Call, reply: Reply, dialect: ResponsesDialect, answer: Answer, document: Json
    ) -> web.StreamResponse:
        """Streamed: the events as usual, kept for a resume. Whole: the response queued, finishing
        at its first poll (or cancelled before it)."""
        if call.streaming:
            stream = dialect.stream(answer)
            with self._lock:
                self.background.events[document["id"]] = stream.frames
            return await self._send_stream(call, reply, stream)
        queued = dialect.response("queued", [])
        with self._lock:
            self.background.pending[document["id"]] = document
            self.stored[document["id"]] = queued
        return self._json(call, queued, schema="Response")

    async def _resume_background(self, call: Call, reply: Reply, response_id: str) -> web.StreamResponse:
        frames = self.background.events.get(response_id)
        if frames is None:
            return self._not_found(call, "Response", response_id)
        after = int(call.recorded.query.get("starting_after", "-1"))
        rest = [f for f in frames if isinstance(f.data, dict) and f.data["sequence_number"] > after]
        broken = Frame("this is not json {")  # a resumed stream is never scripted to break
        stream = Stream(rest, None, lambda _seq, _msg: broken, broken)
        return await self._send_stream(call, reply, stream)

    async def _answer_cancel_response(self, call: Call, reply: Reply) -> web.StreamResponse:
        response_id = call.request.match_info["id"]
        with self._lock:
            response = self.background.cancel(response_id, self.stored)
        if response is None:
            return self._not_found(call, "Response", response_id)
        return await self._document(call, reply, response, "Response")

    async def _answer_compact(self, call: Call, reply: Reply) -> web.StreamResponse:
        body = call.body if isinstance(call.body, dict) else {}
        compacted = {"id": self._ids.make("cmp_fake"), "type": "compaction", "encrypted_content": "gAAAA-x"}
        document = {
            "id": self._ids.make("resp_fake"),
            "object": "response.compaction",
            "created_at": int(time.time()),
            "output": [compacted],
            "usage": ResponsesDialect(self._ids, call.model or "unknown", body).usage(reply),
        }
        return await self._document(call, reply, document, "CompactResource")

    async def _answer_embeddings(self, call: Call, reply: Reply) -> web.StreamResponse:
        body = call.body if isinstance(call.body, dict) else {}
        document = embeddings_document(body, call.model or "unknown")
        return await self._document(call, reply, document, "CreateEmbeddingResponse")

    async def _answer_models(self, call: Call, reply: Reply) -> web.StreamResponse:
        document = {"object": "list", "data": [model_object(m) for m in self.models]}
        return await self._document(call, reply, document, "ListModelsResponse")

    async def _answer_model(self, call: Call, reply: Reply) -> web.StreamResponse:
        model_id = call.request.match_info["id"]
        if model_id not in self.models:
            message = f"The model '{model_id}' does not exist or you do not have access to it."
            return self._json(call, error_body(message, "invalid_request_error", "model_not_found"), 404)
        return await self._document(call, reply, model_object(model_id), "Model")

    def _not_found(self, call: Call, what: str, ident: str) -> web.Response:
        message = f"{what} with id '{ident}' not found."
        return self._json(call, error_body(message, "invalid_request_error", None), 404)

    # -- Responses over WebSocket (PROTOCOLS.md 2.7) ---------------------------------------------

    async def _serve_socket(self, request: web.Request) -> web.StreamResponse:
        """``GET .../responses`` with an upgrade: a WebSocket whose ``response.create`` frames are
        answered one at a time, in order, as the guide says a connection without lanes does."""
        handshake = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=None,
            raw=b"",
            peer=_peer(request),
        )
        call = Call(request, handshake, "socket")
        self._check_auth(call)
        with self._lock:
            refusal = self._refusals.popleft() if self._refusals else None
        if refusal is not None:
            return self._http_failure(call, refusal)
        ws = web.WebSocketResponse(max_msg_size=64 * 1024 * 1024)
        if not ws.can_prepare(request).ok:
            return self._error(call, 400, "This endpoint answers POST, or GET with a WebSocket upgrade.")
        await ws.prepare(request)
        request[_STARTED] = ws  # a crash from here on drops the connection (see _guard)
        connection = Connection(next(self._socket_numbers))
        self._sockets[connection.number] = request
        try:
            async for message in ws:
                if message.type == web.WSMsgType.TEXT:
                    await self._socket_frame(call, ws, connection, message.data)
                elif message.type == web.WSMsgType.BINARY:
                    self._violation(call, "binary WebSocket frame (the API takes text frames of JSON)")
                    await self._socket_error(call, ws, None, 400, "Frames must be text.", None, None)
        finally:
            self._sockets.pop(connection.number, None)
        return ws

    async def _socket_frame(
        self, upgrade: Call, ws: web.WebSocketResponse, connection: Connection, data: str
    ) -> None:
        raw = data.encode()
        try:
            body = json.loads(data)
        except ValueError:
            body = None
        recorded = replace(upgrade.recorded, body=body, raw=raw, socket=connection.number)
        with self._lock:
            self.requests.append(recorded)
        model = body.get("model") if isinstance(body, dict) else None
        call = Call(upgrade.request, recorded, "socket", model if isinstance(model, str) else None)
        if not isinstance(body, dict):
            self._violation(call, "WebSocket frame is not a JSON object")
            await self._socket_error(call, ws, None, 400, "We could not parse the JSON frame.", None, None)
            return
        self._check_socket_frame(call, body)
        if body.get("generate") is False:
            await self._warm_up(call, ws, connection, body)
            return
        reply = self._next_reply(call.model)
        while reply.kind == "delay":
            await asyncio.sleep(reply.seconds)
            reply = reply.then or Reply.text(DEFAULT_TEXT)
        await self._answer_socket(call, ws, connection, body, reply)

    def _check_socket_frame(self, call: Call, body: Json) -> None:
        """The frame must be a ``ResponsesClientEventResponseCreate``: a CreateResponse body plus
        ``type`` and ``stream_id``, without ``stream`` or ``background``. ``generate`` is not in
        the spec's schema but the guide documents it (PROTOCOLS.md 2.7), so it is taken as a bool."""
        schema = "ResponsesClientEventResponseCreate"
        checked = {k: v for k, v in body.items() if k != "generate"}
        for message in openai_errors(schema, checked):
            self._violation(call, f"frame not a valid {schema}: {message}")
        for name in set(unknown_fields(schema, checked)) - self.extra_fields:
            self._violation(call, f"frame field {name!r} is not in {schema}")
        for name, why in (("stream", "is implied and must not be sent"), ("background", "is not supported")):
            if name in body:
                self._violation(call, f"{name!r} {why} over WebSocket")
        if "generate" in body and not isinstance(body["generate"], bool):
            self._violation(call, "'generate' must be a boolean")
        for problem in metadata_problems(body.get("metadata")):
            self._violation(call, problem)

    async def _answer_socket(
        self, call: Call, ws: web.WebSocketResponse, connection: Connection, body: Json, reply: Reply
    ) -> None:
        refused = self._resolve_chain(connection, body)
        if isinstance(refused, SocketRefusal):
            await self._socket_error(
                call, ws, body, refused.status, refused.message, refused.code, refused.param
            )
            return
        if reply.kind == "error":
            await self._socket_error(
                call, ws, body, reply.status, reply.message, reply.code, None, reply.error_type, reply.headers
            )
            if reply.code == "websocket_connection_limit_reached":
                await ws.close()
            return
        if reply.kind == "html":  # a proxy in front failing: the connection just goes
            self._drop_connection(call)
            return
        if reply.kind == "raw":
            await ws.send_str(reply.body.decode())
            return
        dialect = ResponsesDialect(self._ids, call.model or "unknown", body)
        answer = Answer.of(reply, body)
        stream = dialect.stream(answer)
        if await self._send_socket_frames(call, ws, body, reply, stream):
            document = (
                dialect.failed(reply.message) if reply.kind == "stream_error" else dialect.document(answer)
            )
            self._store(body, document)
            if document["status"] != "failed":
                connection.remember(document, refused)

    async def _send_socket_frames(
        self, call: Call, ws: web.WebSocketResponse, body: Json, reply: Reply, stream: Stream
    ) -> bool:
        """The stream's events as text frames; False when the reply cut the connection instead."""
        frames = stream.frames
        if reply.kind in ("truncated", "stream_error", "garbage"):
            frames = frames[: reply.after if reply.kind != "garbage" else 1]
        if reply.kind == "stream_error":
            frames = [*frames, stream.error_frame(len(frames), reply.message)]
        if reply.kind == "garbage":
            frames = [*frames, stream.garbage]
        lane = {"stream_id": body["stream_id"]} if "stream_id" in body else {}
        for index, frame in enumerate(frames):
            if index and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            self._check_frame(call, index, frame)
            text = frame.data if isinstance(frame.data, str) else _dumps({**frame.data, **lane})
            await ws.send_str(text)
        if reply.kind == "truncated":
            self._drop_connection(call)
            return False
        return True

    def _resolve_chain(self, connection: Connection, body: Json) -> SocketRefusal | frozenset[str] | None:
        """Where the request's ``previous_response_id`` leads: the call ids its chain holds (None when
        it chains onto a stored response whose calls the fake did not keep), or why it is refused."""
        previous = body.get("previous_response_id")
        known: set[str] | None = set()
        if previous:
            if connection.recent is not None and connection.recent[0] == previous:
                known = set(connection.recent[1])
            elif previous in self.stored:
                known = None
            else:
                message = f"Previous response with id '{previous}' not found."
                return SocketRefusal(404, message, "previous_response_not_found", "previous_response_id")
        items = body.get("input") if isinstance(body.get("input"), list) else []
        calls = {i.get("call_id") for i in items if isinstance(i, dict) and i.get("type") == "function_call"}
        if known is None:
            return None
        known |= {c for c in calls if isinstance(c, str)}
        for item in items:
            if not isinstance(item, dict) or item.get("type") != "function_call_output":
                continue
            if item.get("call_id") not in known:
                message = f"No tool call found for function call output with call_id {item.get('call_id')}."
                return SocketRefusal(400, message, None, "input")
        return frozenset(known)

    async def _warm_up(
        self, call: Call, ws: web.WebSocketResponse, connection: Connection, body: Json
    ) -> None:
        """``generate: false``: a response with no output, which the next request may chain onto."""
        refused = self._resolve_chain(connection, body)
        if isinstance(refused, SocketRefusal):
            await self._socket_error(
                call, ws, body, refused.status, refused.message, refused.code, refused.param
            )
            return
        dialect = ResponsesDialect(self._ids, call.model or "unknown", body)
        nothing = Answer.of(Reply.text("", usage=(0, 0)), body)
        document = dialect.response("completed", [], nothing)
        dialect.emit("response.created", response=dialect.response("in_progress", []))
        dialect.emit("response.completed", response=document)
        lane = {"stream_id": body["stream_id"]} if "stream_id" in body else {}
        for index, frame in enumerate(dialect.events):
            self._check_frame(call, index, frame)
            assert isinstance(frame.data, dict)
            await ws.send_str(_dumps({**frame.data, **lane}))
        self._store(body, document)
        connection.remember(document, refused)

    async def _socket_error(
        self,
        call: Call,
        ws: web.WebSocketResponse,
        body: Json | None,
        status: int,
        message: str,
        code: str | None,
        param: str | None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The WebSocket ``error`` event (``ResponseWsError``): details nested, with the HTTP status."""
        error: Json = {
            "type": type_ or _default_error_type(status),
            "code": code,
            "message": message,
            "param": param,
        }
        if headers:
            error["headers"] = dict(headers)
        event: Json = {"type": "error", "status": status, "error": error}
        if body and "stream_id" in body:
            event["stream_id"] = body["stream_id"]
        for problem in openai_errors("ResponseWsError", event):
            self._violation(call, f"fake sent an invalid ResponseWsError: {problem}")
        await ws.send_str(_dumps(event))

    # -- Anthropic and Gemini endpoints ---------------------------------------------------------

    def _anthropic(self, call: Call) -> AnthropicDialect:
        body = call.body if isinstance(call.body, dict) else {}
        return AnthropicDialect(self._ids, call.model or "unknown", body, call.request_id, call.beta)

    async def _answer_messages(self, call: Call, reply: Reply) -> web.StreamResponse:
        dialect = self._anthropic(call)
        answer = Answer.of(reply, call.body)
        if call.streaming:
            return await self._send_stream(call, reply, dialect.stream(answer))
        if reply.kind == "stream_error":
            return self._error(call, 500, reply.message)
        schema = self._anthropic_schema(call, "Message")
        return await self._document(call, reply, dialect.document(answer), schema)

    async def _answer_count_tokens(self, call: Call, reply: Reply) -> web.StreamResponse:
        dialect = self._anthropic(call)
        schema = self._anthropic_schema(call, "CountMessageTokensResponse")
        return await self._document(call, reply, dialect.count(dialect.body), schema)

    def _gemini(self, call: Call) -> GeminiDialect:
        body = call.body if isinstance(call.body, dict) else {}
        sse = call.recorded.query.get("alt") == "sse"
        return GeminiDialect(self._ids, call.model or "unknown", body, sse)

    async def _answer_gemini_generate(self, call: Call, reply: Reply) -> web.StreamResponse:
        answer = Answer.of(reply, call.body)
        if reply.kind == "stream_error":
            return self._error(call, 500, reply.message)
        return await self._document(
            call, reply, self._gemini(call).document(answer), "GenerateContentResponse"
        )

    async def _answer_gemini_stream(self, call: Call, reply: Reply) -> web.StreamResponse:
        return await self._send_stream(call, reply, self._gemini(call).stream(Answer.of(reply, call.body)))

    async def _answer_gemini_count(self, call: Call, reply: Reply) -> web.StreamResponse:
        dialect = self._gemini(call)
        return await self._document(call, reply, dialect.count(dialect.body), "CountTokensResponse")

    async def _answer_gemini_embed(self, call: Call, reply: Reply) -> web.StreamResponse:
        body = call.body if isinstance(call.body, dict) else {}
        document = {"embedding": {"values": gemini_embedding(body)}}
        return await self._document(call, reply, document, "EmbedContentResponse")

    async def _answer_gemini_batch_embed(self, call: Call, reply: Reply) -> web.StreamResponse:
        """One vector per request; each request must name the URL's model, as the API insists."""
        body = call.body if isinstance(call.body, dict) else {}
        requests = [r for r in body.get("requests") or [] if isinstance(r, dict)]
        for i, request in enumerate(requests):
            if request.get("model") != f"models/{call.model}":
                self._violation(
                    call, f"requests[{i}].model {request.get('model')!r} is not models/{call.model}"
                )
        document = {"embeddings": [{"values": gemini_embedding(r)} for r in requests]}
        return await self._document(call, reply, document, "BatchEmbedContentsResponse")


def _crash_body(path: str) -> Json:
    """The 500 for a bug in the fake, in the shape of the vendor the path belongs to."""
    message = "fake upstream crashed"
    if path.startswith("/v1/messages"):
        return anthropic_error_body(message, "api_error", None)
    if path.startswith(("/v1beta/", "/v1/models/")):
        return google_error_body(500, message, "INTERNAL")
    return error_body(message, "server_error")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


__all__ = [
    "DEFAULT_TEXT",
    "FakeUpstream",
    "Recorded",
    "Reply",
    "anthropic_signature",
    "count_tokens",
    "embedding_for",
    "gemini_embedding",
    "gemini_signature",
]
