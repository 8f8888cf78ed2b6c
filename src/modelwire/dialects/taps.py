"""Light taps on forwarded streams: pass the upstream's bytes on, learn usage from them.

A tap splits the byte stream at event boundaries and looks closely (parses JSON) only at the few
events that matter: the one carrying usage, the terminal one, an error. Everything else goes to the
client as it came. Each tap also knows how to end its dialect's stream with an error event when the
upstream cut it short, and whatever closes the stream (the JSON-array form of Gemini needs ``]``).
One tap per wire; :mod:`modelwire.wires` says which.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from ..errors import ModelwireError
from ..types import Usage
from . import anthropic_messages, gemini, openai_chat, openai_responses


class StreamTap(Protocol):
    """Reads one forwarded stream; built per request from the client's body and two flags: drop
    content-filter-only chunks (``filter_chunks``), write a JSON array (``json_array``)."""

    @property
    def usage(self) -> Usage | None: ...
    @property
    def finished(self) -> bool:
        """The upstream's terminal event came."""

    @property
    def errored(self) -> bool:
        """The upstream said an error in the stream."""

    @property
    def response(self) -> dict[str, Any] | None:
        """The final answer document, where the dialect sends one (Responses)."""

    def feed(self, chunk: bytes) -> bytes: ...
    def fail(self, err: ModelwireError) -> bytes: ...
    def end(self) -> bytes: ...


class _EventSplitter:
    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def split(self, chunk: bytes) -> list[bytes]:
        data = self._rest + chunk if self._rest else chunk
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        if data.endswith(b"\n\n"):
            self._rest = b""
            return data[:-2].split(b"\n\n")
        events = data.split(b"\n\n")
        self._rest = events.pop()
        return events


def _data(event: bytes) -> bytes | None:
    """The ``data:`` payload of one event (single-line, as every vendor writes them)."""
    at = event.find(b"data:")
    if at == -1:
        return None
    payload = event[at + 5 :]
    return payload[1:] if payload.startswith(b" ") else payload


class ChatTap:
    """A Chat Completions stream. It can hide the usage chunk a client did not ask for (the gateway
    asks for it on the client's behalf, to account for tokens), and the chunks that carry only a
    content-filter verdict (Azure's), which clients expecting ``choices[0].delta`` trip over."""

    __slots__ = ("_split", "errored", "filter_chunks", "finished", "strip_usage", "usage")
    response = None

    def __init__(
        self, body: dict[str, Any], *, filter_chunks: bool = False, json_array: bool = False
    ) -> None:
        self._split = _EventSplitter()
        self.strip_usage = not openai_chat.include_usage(body)
        self.filter_chunks = filter_chunks
        self.usage: Usage | None = None
        self.finished = False
        self.errored = False

    def feed(self, chunk: bytes) -> bytes:
        events = self._split.split(chunk)
        out = [e for e in events if self._keep(e)]
        return b"\n\n".join(out) + b"\n\n" if out else b""

    def _keep(self, event: bytes) -> bool:
        if b"[DONE]" in event:
            self.finished = True
            return True
        if event.startswith(b'data: {"error"'):
            self.errored = True
            return True
        if b'"finish_reason":"' in event or b'"finish_reason": "' in event:
            self.finished = True
        if b'"usage":{' in event or b'"usage": {' in event or self.filter_chunks:
            return self._inspect(event)
        return True

    def _inspect(self, event: bytes) -> bool:
        doc = _parse(_data(event))
        if doc is None:
            return True
        choices = doc.get("choices")
        if doc.get("usage"):
            self.usage = openai_chat.decode_usage(doc["usage"])
            if self.strip_usage and not choices:
                return False
        if self.filter_chunks:
            if not choices and not doc.get("usage"):
                return False
            if choices and not all(isinstance(c, dict) and "delta" in c for c in choices):
                return False
        return True

    def fail(self, err: ModelwireError) -> bytes:
        return b"data: " + orjson.dumps({"error": openai_chat.error_object(err)}) + b"\n\n"

    def end(self) -> bytes:
        return b""


class ResponsesTap:
    """A Responses stream; keeps the final response (for usage, and for storing it)."""

    __slots__ = ("_last", "_split", "errored", "finished", "response", "usage")

    def __init__(
        self, body: dict[str, Any], *, filter_chunks: bool = False, json_array: bool = False
    ) -> None:
        self._split = _EventSplitter()
        self.usage: Usage | None = None
        self.response: dict[str, Any] | None = None
        self.finished = False
        self.errored = False
        self._last = b""

    def feed(self, chunk: bytes) -> bytes:
        events = self._split.split(chunk)
        if not events:
            return b""
        for event in events:
            head = event[:80]
            if b"response.completed" in head or b"response.incomplete" in head or b"response.failed" in head:
                self._terminal(event)
            elif b"event: error" in head or b'"type":"error"' in head:
                self.errored = True
        self._last = events[-1]
        return b"\n\n".join(events) + b"\n\n"

    def _terminal(self, event: bytes) -> None:
        doc = _parse(_data(event))
        self.finished = True
        if doc is None:
            return
        response = doc.get("response")
        if isinstance(response, dict):
            self.response = response
            self.usage = openai_responses.decode_usage(response.get("usage"))
            if response.get("status") == "failed":
                self.errored = True

    def fail(self, err: ModelwireError) -> bytes:
        """An error event continuing the upstream's own sequence numbers."""
        doc = _parse(_data(self._last)) if self._last else None
        number = doc.get("sequence_number") if doc else None
        event = {
            "type": "error",
            "code": err.code or "upstream_error",
            "message": err.message,
            "param": None,
            "sequence_number": number + 1 if isinstance(number, int) else 0,
        }
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"

    def end(self) -> bytes:
        return b""


class AnthropicTap:
    """A Messages stream: input tokens come in ``message_start``, the output count (cumulative) in
    ``message_delta``, and ``message_stop`` ends it."""

    __slots__ = ("_split", "_usage", "errored", "finished")
    response = None

    def __init__(
        self, body: dict[str, Any], *, filter_chunks: bool = False, json_array: bool = False
    ) -> None:
        self._split = _EventSplitter()
        self._usage: dict[str, Any] = {}
        self.finished = False
        self.errored = False

    @property
    def usage(self) -> Usage | None:
        return anthropic_messages.decode_usage(self._usage) if self._usage else None

    def feed(self, chunk: bytes) -> bytes:
        events = self._split.split(chunk)
        if not events:
            return b""
        for event in events:
            head = event[:40]
            if b"message_start" in head or b"message_delta" in head:
                self._count(event)
            elif b"message_stop" in head:
                self.finished = True
            elif b"event: error" in head:
                self.errored = True
        return b"\n\n".join(events) + b"\n\n"

    def _count(self, event: bytes) -> None:
        doc = _parse(_data(event))
        if doc is None:
            return
        message = doc.get("message")
        usage = message.get("usage") if isinstance(message, dict) else doc.get("usage")
        if isinstance(usage, dict):  # counts are running totals: a later one replaces an earlier
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    def fail(self, err: ModelwireError) -> bytes:
        _, error = anthropic_messages.error_object(err)
        return b"event: error\ndata: " + orjson.dumps({"type": "error", "error": error}) + b"\n\n"

    def end(self) -> bytes:
        return b""


class GeminiTap:
    """A ``streamGenerateContent?alt=sse`` stream: every chunk may carry ``usageMetadata`` (the last
    one counts, parsed only when asked for); a ``finishReason`` ends the answer. With ``json_array``
    the client asked for the JSON-array form: each event's payload becomes an array element."""

    __slots__ = ("_opened", "_split", "_usage_event", "errored", "finished", "json_array")
    response = None

    def __init__(
        self, body: dict[str, Any], *, filter_chunks: bool = False, json_array: bool = False
    ) -> None:
        self._split = _EventSplitter()
        self._usage_event: bytes | None = None
        self._opened = False
        self.json_array = json_array
        self.finished = False
        self.errored = False

    @property
    def usage(self) -> Usage | None:
        doc = _parse(_data(self._usage_event)) if self._usage_event else None
        return gemini.decode_usage(doc.get("usageMetadata")) if doc else None

    def feed(self, chunk: bytes) -> bytes:
        events = self._split.split(chunk)
        if not events:
            return b""
        for event in events:
            if b'"usageMetadata"' in event:
                self._usage_event = event
            if b'"finishReason"' in event:
                self.finished = True
            elif b'{"error"' in event[:16]:
                self.errored = True
        if not self.json_array:
            return b"\r\n\r\n".join(events) + b"\r\n\r\n"
        return self._elements([p for p in map(_data, events) if p is not None])

    def _elements(self, payloads: list[bytes]) -> bytes:
        if not payloads:
            return b""
        joined = b",\r\n".join(payloads)
        if self._opened:
            return b",\r\n" + joined
        self._opened = True
        return b"[" + joined

    def fail(self, err: ModelwireError) -> bytes:
        payload = orjson.dumps({"error": gemini.error_object(err)})
        if self.json_array:
            return self._elements([payload]) + self.end()
        return b"data: " + payload + b"\r\n\r\n"

    def end(self) -> bytes:
        """The array's close (and its open, when no element came)."""
        if not self.json_array:
            return b""
        if self._opened:
            return b"]"
        self._opened = True
        return b"[]"


def _parse(payload: bytes | None) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
