"""Server-sent events: an incremental parser and the one framing every dialect writes."""

from __future__ import annotations

from dataclasses import dataclass

import orjson


@dataclass(slots=True)
class SSEEvent:
    event: str | None
    data: str


class SSEParser:
    """Feeds on raw bytes as they arrive and returns the complete events in them.

    Follows the SSE spec: ``\\n``, ``\\r\\n`` and ``\\r`` end lines; one optional space after the
    colon is dropped; multi-line ``data`` is joined with ``\\n``; comment lines are ignored.
    """

    __slots__ = ("_buffer", "_data", "_event")

    def __init__(self) -> None:
        self._buffer = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buffer = self._buffer + chunk if self._buffer else chunk
        held = b""
        if buffer.endswith(b"\r"):  # maybe the first half of \r\n: decide when more arrives
            buffer, held = buffer[:-1], b"\r"
        if buffer.find(b"\r") != -1:  # not `in`, which tries b"\r" as an int first (an error raised)
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._buffer = lines.pop() + held
        events: list[SSEEvent] = []
        for raw in lines:
            if not raw:
                if self._data or self._event is not None:
                    events.append(SSEEvent(self._event, "\n".join(self._data)))
                self._event = None
                self._data = []
                continue
            self._line(raw.decode("utf-8", "replace"))
        return events

    def flush(self) -> list[SSEEvent]:
        """Events left when the stream ends without a final blank line."""
        if self._buffer.rstrip(b"\r"):
            self._line(self._buffer.rstrip(b"\r").decode("utf-8", "replace"))
            self._buffer = b""
        if self._data:
            event = SSEEvent(self._event, "\n".join(self._data))
            self._event, self._data = None, []
            return [event]
        return []

    def _line(self, line: str) -> None:
        if line.startswith(":"):
            return
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value


def frame(data: object, event: str | None = None) -> bytes:
    """One SSE event: compact JSON on a single ``data:`` line, preceded by ``event:`` if named."""
    payload = orjson.dumps(data)
    if event is None:
        return b"data: " + payload + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + payload + b"\n\n"


KEEPALIVE = b": keep-alive\n\n"
