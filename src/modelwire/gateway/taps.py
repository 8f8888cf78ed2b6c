"""Light taps on passthrough streams: forward the upstream's bytes, learn usage from them.

A tap splits the byte stream at event boundaries and looks closely (parses JSON) only at the few
events that matter: the one carrying usage, the terminal one, an error. Everything else goes to the
client as it came. The Chat tap can also hide the usage chunk a client did not ask for (the
gateway asks for it on the client's behalf, to account for tokens).
"""

from __future__ import annotations

from typing import Any

import orjson

from ..dialects import openai_chat, openai_responses
from ..types import Usage


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
    """The ``data:`` payload of one event (single-line, as OpenAI writes them)."""
    at = event.find(b"data:")
    if at == -1:
        return None
    payload = event[at + 5 :]
    return payload[1:] if payload.startswith(b" ") else payload


class ChatTap:
    """Passthrough of a Chat Completions stream."""

    __slots__ = ("_split", "azure", "errored", "finished", "strip_usage", "usage")

    def __init__(self, *, strip_usage: bool, azure: bool = False) -> None:
        self._split = _EventSplitter()
        self.strip_usage = strip_usage
        self.azure = azure
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
        if b'"usage":{' in event or b'"usage": {' in event or self.azure:
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
        if self.azure:
            # Azure opens with prompt-filter chunks and sends filter-only chunks: clients expect
            # choices[0].delta to exist, so those never reach them.
            if not choices and not doc.get("usage"):
                return False
            if choices and not all(isinstance(c, dict) and "delta" in c for c in choices):
                return False
        return True


class ResponsesTap:
    """Passthrough of a Responses stream; keeps the final response (for usage and storing)."""

    __slots__ = ("_last", "_split", "errored", "finished", "response", "usage")

    def __init__(self) -> None:
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

    def next_sequence(self) -> int:
        """The sequence number an event appended after the upstream's last one should carry."""
        doc = _parse(_data(self._last)) if self._last else None
        number = doc.get("sequence_number") if doc else None
        return number + 1 if isinstance(number, int) else 0


def _parse(payload: bytes | None) -> dict[str, Any] | None:
    if not payload:
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None
