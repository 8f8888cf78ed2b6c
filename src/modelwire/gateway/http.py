"""The few ASGI primitives the gateway needs, without a framework on the proxy path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from ..errors import InvalidRequestError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON = b"application/json"
SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
)


class BodyTooLarge(InvalidRequestError):
    status = 413


async def read_body(receive: Receive, limit: int, declared: bytes | None) -> bytes:
    """The whole request body, refusing early (by Content-Length) or as it grows past ``limit``."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away while sending")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the request body is larger than this gateway accepts ({_size(limit)})",
        code="request_too_large",
    )


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:g} {unit}"
    return f"{n} bytes"


def parse_json(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise InvalidRequestError("the request body is empty; send a JSON object", code="invalid_json")
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequestError(f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(doc, dict):
        raise InvalidRequestError("the request body must be a JSON object", code="invalid_json")
    return doc


async def disconnected(receive: Receive) -> None:
    """Returns when the client has gone away (a request body still unread is skipped over)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class ClientWatch:
    """Whether the client of a stream has gone away.

    On the gateway's own server the request's cycle says so: uvicorn marks it disconnected when the
    connection is lost, so a look at that flag answers (a task per stream, made and cancelled, cost
    ~4 µs of CPU). Under another server, a task waits on ``receive``, started at the first
    :meth:`gone` (a stream whose first read holds its end never asks, and never pays for it).
    """

    __slots__ = ("_cycle", "_receive", "_task")

    def __init__(self, receive: Receive) -> None:
        cycle = getattr(receive, "__self__", None)
        self._cycle = cycle if isinstance(cycle, RequestResponseCycle) else None
        self._receive = receive
        self._task: asyncio.Future[Any] | None = None

    def gone(self) -> bool:
        if self._cycle is not None:
            return self._cycle.disconnected
        if self._task is None:
            self._task = asyncio.ensure_future(self._receive())
            return False
        return self._task.done()

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()


async def respond(send: Send, status: int, body: bytes, headers: Headers, content_type: bytes = JSON) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, doc: Any, headers: Headers) -> None:
    await respond(send, status, orjson.dumps(doc), headers)


async def start_stream(
    send: Send, headers: Headers, kind: tuple[tuple[bytes, bytes], ...] = SSE_HEADERS
) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [*kind, *headers]})


def more(chunk: bytes) -> Message:
    """A part of a streamed body, not its end (an empty ``chunk`` would be a write for nothing)."""
    return {"type": "http.response.body", "body": chunk, "more_body": True}


async def stream_chunk(send: Send, chunk: bytes) -> None:
    if chunk:
        await send(more(chunk))


async def end_stream(send: Send, last: bytes = b"") -> None:
    await send({"type": "http.response.body", "body": last})
