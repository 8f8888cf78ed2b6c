"""Light taps on forwarded streams: pass the upstream's bytes on, learn usage from them.

A tap splits the byte stream at event boundaries and looks closely (parses JSON) only at the few
events that matter: the one carrying usage, the terminal one, an error. Everything else goes to the
client as it came. Each tap also knows how to end its dialect's stream with an error event when the
upstream cut it short, and whatever closes the stream (the JSON-array form of Gemini needs ``]``).
One tap per wire; :mod:`modelwire.wires` says which.

Substrings are looked for with ``find``, not ``in``: on bytes, ``in`` first tries its operand as an
integer (a byte value), and raises and drops a TypeError each time (~0.5 µs).
"""

from __future__ import annotations

from collections.abc import Iterator
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
    def closed(self) -> bool:
        """Nothing more will be said: the stream's very last event came (Chat's ``[DONE]``, after
        the finish and usage chunks of every choice; the terminal event of the others)."""

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
    """Holds back an event cut across reads: what it gives is whole events, each ending in a blank
    line, as one buffer. Taps look into that buffer with a few substring searches, which run in C
    over the whole read, and slice out single events only where one of them hit; a stream of
    token deltas passes through without being split into events at all."""

    __slots__ = ("_rest",)

    def __init__(self) -> None:
        self._rest = b""

    def complete(self, chunk: bytes) -> bytes:
        data = self._rest + chunk if self._rest else chunk
        if data.find(b"\r") != -1:  # not `in`: see the module's docstring
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n") + 2
        if end == 1:  # no blank line yet
            self._rest = data
            return b""
        self._rest = data[end:]
        return data[:end]


def _events(data: bytes) -> list[bytes]:
    """A buffer of whole events, one by one (without their blank lines)."""
    return data[:-2].split(b"\n\n")


def _bounds(data: bytes, at: int) -> tuple[int, int]:
    """Where the event holding byte ``at`` starts, and where its blank line ends."""
    before = data.rfind(b"\n\n", 0, at)
    return before + 2 if before != -1 else 0, data.find(b"\n\n", at) + 2


def _find_any(data: bytes, markers: tuple[bytes, ...], start: int) -> int:
    hits = [at for at in (data.find(m, start) for m in markers) if at != -1]
    return min(hits) if hits else -1


def _rfind_any(data: bytes, markers: tuple[bytes, ...]) -> int:
    """The last place of the first marker found (spelling variants: one stream uses one)."""
    for marker in markers:
        at = data.rfind(marker)
        if at != -1:
            return at
    return -1


def _marked(data: bytes, markers: tuple[bytes, ...], within: int = 0) -> Iterator[tuple[int, int]]:
    """The bounds of each event holding one of ``markers``, in stream order; with ``within``, only
    where a marker is in the event's first ``within`` bytes (its name or type, not a mention of it
    in the text)."""
    at = _find_any(data, markers, 0)
    while at != -1:
        start, stop = _bounds(data, at)
        if not within or any(m in data[start : start + within] for m in markers):
            yield start, stop
        at = _find_any(data, markers, stop)


def _data(data: bytes, start: int = 0, stop: int | None = None) -> bytes | None:
    """The ``data:`` payload of one event (single-line, as every vendor writes them): ``data``
    itself, or the event at ``data[start:stop]`` in a read, sliced out once."""
    if stop is None:
        stop = len(data)
    if data.startswith(b"data: ", start):  # as vendors write it
        return data[start + 6 : stop]
    at = data.find(b"data:", start, stop)
    if at == -1:
        return None
    payload = data[at + 5 : stop]
    return payload[1:] if payload.startswith(b" ") else payload


# What a Chat tap looks for, in both JSON spellings until a stream shows which it uses: every
# chunk names ``finish_reason``, compact (OpenAI) or spaced, and a key can only appear in a stream
# as JSON (inside a string its quotes are escaped), so its first appearance settles the spelling.
_FINISH = (b'"finish_reason":"', b'"finish_reason": "')
_USAGE = (b'"usage":{', b'"usage": {')
_COMPACT = ((_FINISH[0],), (_USAGE[0],))
_SPACED = ((_FINISH[1],), (_USAGE[1],))
_DONE = (b"data: [DONE]\n\n", b"data:[DONE]\n\n")  # the very last event, whole
_ERROR = b'data: {"error"'  # how an error event begins (its first key)


def _ends_in_error(data: bytes, closed: bool) -> bool:
    """Whether a read's last event (before ``[DONE]``) is an error. An error ends a Chat stream,
    so only that event is looked at, not the whole read (a scan of every token delta)."""
    end = len(data) - 2
    if closed:
        end = data.rfind(b"\n\n", 0, end)
        if end == -1:
            return False
    start = data.rfind(b"\n\n", 0, end)
    return data.startswith(_ERROR, start + 2 if start != -1 else 0)


class ChatTap:
    """A Chat Completions stream. It can hide the usage chunk a client did not ask for (the gateway
    asks for it on the client's behalf, to account for tokens), and the chunks that carry only a
    content-filter verdict (Azure's), which clients expecting ``choices[0].delta`` trip over."""

    __slots__ = (
        "_markers",
        "_split",
        "closed",
        "errored",
        "filter_chunks",
        "finished",
        "strip_usage",
        "usage",
    )
    response = None

    def __init__(
        self, body: dict[str, Any], *, filter_chunks: bool = False, json_array: bool = False
    ) -> None:
        self._split = _EventSplitter()
        self.strip_usage = not openai_chat.include_usage(body)
        self.filter_chunks = filter_chunks
        self.usage: Usage | None = None
        self.finished = False
        self.closed = False
        self.errored = False
        self._markers: tuple[tuple[bytes, ...], tuple[bytes, ...]] | None = None

    def feed(self, chunk: bytes) -> bytes:
        # Searched from the end (the events that matter close a stream), in the stream's own
        # spelling: a read of token deltas costs three scans, none of them split.
        data = self._split.complete(chunk)
        if not data:
            return b""
        finish, usage = self._markers or self._spelling(data)
        closed = self.closed = self.closed or data.endswith(_DONE)
        if not self.finished:
            self.finished = closed or _rfind_any(data, finish) != -1
        if self.filter_chunks:
            self.errored = self.errored or _ends_in_error(data, closed)
            kept = [e for e in _events(data) if self._keep(e)]
            return b"\n\n".join(kept) + b"\n\n" if kept else b""
        at = _rfind_any(data, usage)
        if at == -1:
            self.errored = self.errored or _ends_in_error(data, closed)
            return data
        # Only the last usage event of a read can be usage-only: it comes just before [DONE].
        start, stop = _bounds(data, at)
        error = data.startswith(_ERROR, start)
        if error or (stop != len(data) and not data.startswith(_DONE, stop)):  # the last may be an error
            self.errored = self.errored or _ends_in_error(data, closed)
        if error:  # an error is never dropped, nor its usage counted
            return data
        doc = _parse(_data(data, start, stop - 2))
        return data if doc is None or self._counted(doc) else data[:start] + data[stop:]

    def _spelling(self, data: bytes) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        at = data.find(b'"finish_reason":')
        if at == -1:
            return _FINISH, _USAGE
        self._markers = _SPACED if data[at + 16 : at + 17] == b" " else _COMPACT
        return self._markers

    def _keep(self, event: bytes) -> bool:
        """Whether an event goes on to a client that wants only content chunks (``filter_chunks``)."""
        if event.find(b"[DONE]", 0, 12) != -1 or event.startswith(_ERROR):
            return True
        doc = _parse(_data(event))
        if doc is None:
            return True
        choices = doc.get("choices")
        if not self._counted(doc) or (not choices and not doc.get("usage")):
            return False
        return not choices or all(isinstance(c, dict) and "delta" in c for c in choices)

    def _counted(self, doc: dict[str, Any]) -> bool:
        """Takes a chunk's usage; whether the chunk stays (not when it is usage alone and the
        client did not ask for it)."""
        usage = doc.get("usage")
        if not usage:
            return True
        self.usage = openai_chat.decode_usage(usage)
        return not self.strip_usage or bool(doc.get("choices"))

    def fail(self, err: ModelwireError) -> bytes:
        return b"data: " + orjson.dumps({"error": openai_chat.error_object(err)}) + b"\n\n"

    def end(self) -> bytes:
        return b""


_TERMINAL = (b"response.completed", b"response.incomplete", b"response.failed")


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

    @property
    def closed(self) -> bool:
        return self.finished  # its terminal event is its last

    def feed(self, chunk: bytes) -> bytes:
        data = self._split.complete(chunk)
        if not data:
            return b""
        for start, stop in _marked(data, _TERMINAL, 80):
            self._terminal(data[start : stop - 2])
        if any(_marked(data, (b"event: error", b'"type":"error"'), 80)):
            self.errored = True
        self._last = data
        return data

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
        doc = _parse(_data(_events(self._last)[-1])) if self._last else None
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

    @property
    def closed(self) -> bool:
        return self.finished  # its terminal event is its last

    def feed(self, chunk: bytes) -> bytes:
        data = self._split.complete(chunk)
        if not data:
            return b""
        for start, stop in _marked(data, (b"message_start", b"message_delta"), 40):
            self._count(data[start : stop - 2])
        if any(_marked(data, (b"message_stop",), 40)):
            self.finished = True
        if any(_marked(data, (b"event: error",), 40)):
            self.errored = True
        return data

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

    @property
    def closed(self) -> bool:
        return self.finished  # its terminal event is its last

    def feed(self, chunk: bytes) -> bytes:
        data = self._split.complete(chunk)
        if not data:
            return b""
        at = data.rfind(b'"usageMetadata"')
        if at != -1:
            start, stop = _bounds(data, at)
            self._usage_event = data[start : stop - 2]
        if b'"finishReason"' in data:
            self.finished = True
        elif any(_marked(data, (b'{"error"',), 16)):
            self.errored = True
        if not self.json_array:
            return data.replace(b"\n\n", b"\r\n\r\n")
        return self._elements([p for p in map(_data, _events(data)) if p is not None])

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
