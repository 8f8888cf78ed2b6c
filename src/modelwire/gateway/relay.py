"""The plumbing every media request shares: where each operation goes on a backend, with which
headers, and how the upstream's answer returns to the client.

An answer comes back in one of three ways, by its content type:

- a JSON document: read whole, forwarded as it came (the wire capture gets it with any base64
  image replaced by its size and SHA-256);
- an event stream (streamed images, ``stream_format: "sse"`` speech, streamed transcripts):
  forwarded byte for byte while a light tap picks out the usage the final event carries; a cut
  stream ends with an ``error`` event, which the official SDKs raise;
- anything else (audio, video, text transcripts): bytes to the client as they arrive, never
  buffered. ``Content-Length`` is passed only when the upstream gave one for the bytes as they
  travel; an upstream that stops early ends the client's response unfinished (the connection is
  closed before the final chunk), never as a complete-looking truncated file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from ..errors import InvalidRequestError, ModelwireError, ProtocolError, UpstreamUnavailableError
from ..providers.addresses import refuse_private
from ..providers.hosts import AZURE_IMAGE_TIMEOUT, Host, MediaEndpoint
from ..providers.transport import Body, Reply, Transport
from ..providers.transport import call as upstream_call
from . import http
from .accounting import Accounting
from .call import Call
from .config import MediaKind
from .http import Headers, Receive, Send
from .upstream import Backend

log = logging.getLogger("modelwire.gateway")

Operation = Literal["image_generation", "image_edit", "speech", "transcription", "translation", "video"]
# Each operation: the modality whose base URL it may have, and its endpoint on a host.
PATHS: dict[Operation, tuple[MediaKind, MediaEndpoint]] = {
    "image_generation": ("images", "images.generations"),
    "image_edit": ("images", "images.edits"),
    "speech": ("speech", "audio.speech"),
    "transcription": ("transcription", "audio.transcriptions"),
    "translation": ("transcription", "audio.translations"),
    "video": ("video", "videos"),
}
# The kinds of host that serve OpenAI's media endpoints over HTTP (the Codex route serves images
# through its Responses backend instead: see :mod:`.codex_images`).
MEDIA_HOSTS = frozenset({"openai", "azure", "openai-compatible"})
TAP_LIMIT = 64 * 1024 * 1024  # an event bigger than this is not searched for usage
_MARKERS = (b'"usage"', b"[DONE]", b'.done"', b'.completed"')  # what an event with usage names
_CUT = {
    "type": "error",
    "error": {
        "type": "server_error",
        "code": "upstream_cut",
        "message": "the upstream stream ended before the answer finished; retry the request",
    },
}
CUT_EVENT = b"event: error\ndata: " + orjson.dumps(_CUT) + b"\n\n"


def media_url(backend: Backend, operation: Operation, model: str, suffix: str = "") -> str:
    """The URL of ``operation`` for ``model`` on ``backend``: under its own base URL for the
    modality when it has one, else where the host serves it (deployment-scoped on classic Azure)."""
    kind, endpoint = PATHS[operation]
    custom = backend.config.media_base_urls.get(kind)
    host = backend.host if custom is None else Host.create("openai-compatible", custom)
    return host.media_url(endpoint, model, suffix)


def read_timeout(backend: Backend, operation: Operation) -> float:
    """Seconds to wait for each read: Azure sends nothing until an image is done."""
    if operation.startswith("image") and backend.host.kind == "azure":
        return max(backend.config.timeout, AZURE_IMAGE_TIMEOUT)
    return backend.config.timeout


def serves(backend: Backend, operation: Operation) -> None:
    """Refuse an operation the backend's kind of host has no endpoint for."""
    if backend.host.kind not in MEDIA_HOSTS and not backend.config.media_base_urls.get(PATHS[operation][0]):
        raise InvalidRequestError(
            f"backend {backend.name!r} ({backend.host.kind}) has no {operation.replace('_', ' ')} endpoint",
            code="unsupported_operation",
        )


@dataclass(eq=False)
class Endpoints:
    """Custom media base URLs vetted once each: one on a private or loopback address is refused
    unless ``server.allow_private_urls`` is set (an operator's typo must not reach inward)."""

    allow_private: bool
    _vetted: dict[str, ModelwireError | None] = field(default_factory=dict)

    async def check(self, backend: Backend, operation: Operation) -> None:
        url = backend.config.media_base_urls.get(PATHS[operation][0])
        if url is None:
            return
        if url not in self._vetted:
            try:
                await refuse_private(
                    url, allow=self.allow_private, hint="set server.allow_private_urls to allow it"
                )
                self._vetted[url] = None
            except InvalidRequestError as err:
                closed = UpstreamUnavailableError(
                    f"backend {backend.name!r}: its {PATHS[operation][0]} endpoint is refused: {err.message}",
                    code="private_endpoint",
                )
                closed.retryable = False  # the operator must act; trying again changes nothing
                self._vetted[url] = closed
        refused = self._vetted[url]
        if refused is not None:
            raise refused


async def headers(backend: Backend, index: int, content_type: str | None) -> dict[str, str]:
    """Request headers for one of the backend's keys, or its sign-in's token on the Codex route
    (never a key in its place)."""
    out = backend.headers(index)
    if backend.credentials is not None:
        out.update(await backend.credentials.headers())
    if content_type is None:
        out.pop("Content-Type", None)
    else:
        out["Content-Type"] = content_type
    return out


async def send(
    transport: Transport,
    call: Call,
    backend: Backend,
    index: int,
    method: str,
    url: str,
    body: Body,
    content_type: str | None = "application/json",
    read_for: float | None = None,
) -> Reply:
    """One upstream request; an error answer raised as the upstream's own error."""
    sent = await headers(backend, index, content_type)
    sent["X-Client-Request-Id"] = call.request_id
    wait = read_for if read_for is not None else backend.config.timeout
    return await upstream_call(transport, method, url, sent, body, read_timeout=wait)


# ----------------------------------------------------------------------------------- answers


@dataclass(slots=True)
class Sent:
    """An attempt that reached an upstream: its open reply (or its answer already read and
    converted, on the Codex route), and the model it asked for."""

    reply: Reply | None
    model: str
    doc: dict[str, Any] | None = None
    key_index: int = 0  # which of the backend's keys asked (a video is seen by its project only)


@dataclass(slots=True)
class Relayed:
    """What went back to the client: the answer's JSON document (when it was one), the usage an
    event stream reported, and whether the upstream finished it."""

    doc: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    size: int = 0
    finished: bool = True


async def relay(
    accounting: Accounting, call: Call, send: Send, reply: Reply, served: Headers, receive: Receive | None
) -> Relayed:
    """The upstream's answer to the client, as its content type says (see the module docstring).
    ``receive`` (once the request body is read) tells when the client leaves: a stream stops then."""
    content_type = reply.headers.get("content-type", "")
    if "json" in content_type:
        payload = await reply.read()
        doc = json_document(payload)
        accounting.record("upstream_response", call, scrubbed(doc))
        await accounting.respond(call, send, 200, payload, served)
        return Relayed(doc=doc, size=len(payload))
    gone = asyncio.ensure_future(http.disconnected(receive)) if receive is not None else None
    try:
        if "event-stream" in content_type:
            return await _events(call, send, reply, served, gone)
        return await _bytes(accounting, call, send, reply, served, content_type, gone)
    finally:
        if gone is not None:
            gone.cancel()


def _left(call: Call, reply: Reply, gone: asyncio.Future[None] | None) -> bool:
    """Whether the client went away: then the upstream's answer is dropped, not read to its end."""
    if gone is None or not gone.done():
        return False
    reply.close()
    call.status, call.error = 499, "client_closed"
    return True


def json_document(payload: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise ProtocolError(f"the upstream answered something that is not JSON: {payload[:80]!r}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the upstream answered JSON that is not an object")
    return doc


async def _start(call: Call, send: Send, status: int, head: Headers) -> None:
    call.status, call.responding = status, True
    await send({"type": "http.response.start", "status": status, "headers": head})


async def _events(
    call: Call, send: Send, reply: Reply, served: Headers, gone: asyncio.Future[None] | None
) -> Relayed:
    await _start(call, send, 200, [*http.SSE_HEADERS, *served])
    tap = UsageTap()
    out = Relayed()
    try:
        async for chunk in reply.chunks():
            if call.ttft is None:
                call.ttft = time.monotonic() - call.started
            tap.feed(chunk)
            out.size += len(chunk)
            await http.stream_chunk(send, chunk)
            if _left(call, reply, gone):
                return out
    except ModelwireError as err:
        log.debug("upstream event stream broke: %s", err)
        out.finished = False
    out.usage = tap.usage
    if not out.finished or not tap.ended_cleanly:
        out.finished = False
        call.error = "upstream_cut"
        await http.stream_chunk(send, CUT_EVENT)
    await http.end_stream(send)
    return out


async def _bytes(
    accounting: Accounting,
    call: Call,
    send: Send,
    reply: Reply,
    served: Headers,
    content_type: str,
    gone: asyncio.Future[None] | None,
) -> Relayed:
    length = _honoured_length(reply.headers)
    head: Headers = [(b"content-type", (content_type or "application/octet-stream").encode("latin-1"))]
    if length is not None:
        head.append((b"content-length", str(length).encode()))
    await _start(call, send, 200, [*head, *served])
    digest = hashlib.sha256() if accounting.capture is not None else None
    out = Relayed()
    try:
        async for chunk in reply.chunks():
            if call.ttft is None:
                call.ttft = time.monotonic() - call.started
            out.size += len(chunk)
            if digest is not None:
                digest.update(chunk)
            await http.stream_chunk(send, chunk)
            if _left(call, reply, gone):
                return out
    except ModelwireError as err:
        log.warning(
            "request %s: the upstream cut a download after %d bytes: %s", call.request_id, out.size, err
        )
        out.finished = False
    if length is not None and out.size != length:
        out.finished = False
    if digest is not None:
        summary = {"content_type": content_type, "bytes": out.size, "sha256": digest.hexdigest()}
        accounting.record("upstream_response", call, summary)
    if not out.finished:
        # No final chunk: the server closes the connection, so the client sees the download fail.
        call.status, call.error = 502, "upstream_cut"
        return out
    await http.end_stream(send)
    return out


def _honoured_length(headers: Mapping[str, str]) -> int | None:
    """The upstream's Content-Length, when it counts the bytes as they reach us (not compressed)."""
    declared = headers.get("content-length")
    if (
        declared is None
        or not declared.isdigit()
        or headers.get("content-encoding", "identity") != "identity"
    ):
        return None
    return int(declared)


class UsageTap:
    """Reads the usage an event stream's events carry, without touching the bytes it relays."""

    __slots__ = ("_tail", "ended_cleanly", "usage")

    def __init__(self) -> None:
        self._tail = b""
        self.usage: dict[str, Any] | None = None
        self.ended_cleanly = False

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        if data.find(b"\n\n") == -1:  # not `in`, which tries its operand as an int first (an error raised)
            self._tail = data if len(data) <= TAP_LIMIT else b""
            return
        *events, self._tail = data.replace(b"\r\n", b"\n").split(b"\n\n")
        for event in events:
            if any(event.find(marker) != -1 for marker in _MARKERS):
                self._read(event)

    def _read(self, event: bytes) -> None:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.ended_cleanly = True
                continue
            try:
                doc = orjson.loads(payload)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(doc, dict):
                continue
            if doc.get("type") in FINAL_EVENTS:
                self.ended_cleanly = True
            if isinstance(doc.get("usage"), dict):
                self.usage = doc["usage"]


# The events that end each media stream (a stream that stops before one was cut).
FINAL_EVENTS = frozenset(
    {
        "image_generation.completed",
        "image_edit.completed",
        "speech.audio.done",
        "transcript.text.done",
    }
)


def scrubbed(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with each base64 image replaced by its size and SHA-256 (for the wire capture)."""
    data = doc.get("data")
    if not isinstance(data, list):
        return doc
    images = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("b64_json"), str):
            b64 = item["b64_json"].encode()
            item = {**item, "b64_json": {"bytes": len(b64), "sha256": hashlib.sha256(b64).hexdigest()}}
        images.append(item)
    return {**doc, "data": images}
