"""A client's Responses WebSocket carried on to a native upstream over the upstream's own WebSocket.

Each client socket gets its own upstream sockets, one per (backend, lane), opened on the first
turn that goes there with the upstream key that turn drew, and kept for the conversation (the
upstream's memory of it is on that socket, whichever key later turns draw). A turn whose
``previous_response_id`` is the last response on that upstream socket is sent as it came — only
the new items travel, which is what WebSocket mode is for; any other chained turn is sent with
the whole conversation (the gateway remembers it) and no id. Events come back as the SSE stream's
bytes, so the forwarding path (tap, usage, capture, the stored copy, the relay to the client's
socket) is the one every streamed request takes.

When the upstream socket cannot be had (refused, unreachable, closed before a turn's first event,
or ``previous_response_not_found``), the turn is retried once on a new socket with the whole
conversation, then sent over HTTPS; the backend's sockets then rest for a minute, during which
every turn goes over HTTPS. Other error events are the errors their HTTP twins would be (failover
included); once a turn has produced output it is never tried elsewhere.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from ..errors import ModelwireError
from ..providers.openai import OpenAI
from ..providers.session import Session
from ..providers.transport import text_frame
from ..providers.websocket import BETA, socket_error

if TYPE_CHECKING:  # imported where a socket is used: a gateway serving only HTTP never loads it
    import aiohttp

SOCKET_TURN = "modelwire.socket_turn"  # the HTTP scope key a socket's response.create travels under
REST_SECONDS = 60.0  # a backend's sockets rest this long after one failed
HANDSHAKE_SECONDS = 10.0  # the longest an upstream may take to open a socket
Connect = Callable[[str, Mapping[str, str], float], Awaitable["aiohttp.ClientWebSocketResponse[bool]"]]
_ENDS = frozenset({b"response.completed", b"response.incomplete", b"response.failed", b"error"})
_TYPE = re.compile(rb'"type"\s*:\s*"([^"]+)"')  # the event's type comes first in each event
_SSE_HEADERS = {"content-type": "text/event-stream"}


class SocketUnavailable(Exception):
    """The upstream socket failed before the turn produced anything: try another way."""


@dataclass(eq=False)
class UpstreamSocket:
    """One open upstream socket: one turn at a time, and the id of the last response it made."""

    socket: aiohttp.ClientWebSocketResponse[bool]
    timeout: float  # the longest wait for the next event, as for an HTTP read
    last_response: str | None = None
    busy: bool = False
    broken: bool = False  # a turn was left before its end: its late events would meet the next one

    @property
    def usable(self) -> bool:
        return not (self.socket.closed or self.busy or self.broken)

    async def turn(self, frame: bytes) -> SocketReply:
        """Send one ``response.create``; the reply once its first event is in (an error event
        before any output is raised, classified like the HTTP error it stands for)."""
        import aiohttp

        self.busy = True
        try:
            await self.socket.send_frame(frame, aiohttp.WSMsgType.TEXT)
            first = await self._next()
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            self.busy = False
            raise SocketUnavailable(str(exc) or type(exc).__name__) from None
        if first is None:
            self.busy = False
            raise SocketUnavailable("the upstream closed its socket before answering")
        if _kind(first) == b"error":
            self.busy = False
            err = _error(first)
            if err.code == "previous_response_not_found":
                raise SocketUnavailable("the upstream socket lost the chain")
            raise err
        return SocketReply(self, first)

    async def _next(self) -> bytes | None:
        import aiohttp

        message = await self.socket.receive(timeout=self.timeout)
        if message.type is aiohttp.WSMsgType.TEXT:  # bytes: the transport does not decode text
            return text_frame(message.data)
        if message.type is aiohttp.WSMsgType.BINARY:
            return bytes(message.data)
        return None  # closed, closing or an error: the socket is done


def _kind(event: bytes) -> bytes:
    found = _TYPE.search(event, 0, 120)
    return found.group(1) if found else b""


def _json(event: bytes) -> dict[str, Any]:
    """An event's object; an empty one for garbage (what the stream's tap then reports)."""
    try:
        doc = orjson.loads(event)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def _flat_error(event: bytes) -> bytes:
    """A socket's error event (details nested under ``error``) as the SSE stream says one (flat)."""
    doc = _json(event)
    detail = doc.get("error")
    if not isinstance(detail, dict):
        detail = {"message": "the upstream's socket sent an error event it did not explain"}
    flat = {"type": "error", **{k: detail.get(k) for k in ("code", "message", "param")}}
    if isinstance(doc.get("sequence_number"), int):
        flat["sequence_number"] = doc["sequence_number"]
    return orjson.dumps(flat)


def _error(event: bytes) -> ModelwireError:
    """A WebSocket error event as the HTTP error it stands for (details nested, status beside)."""
    doc = _json(event)
    if not isinstance(doc.get("error"), dict):
        doc["error"] = {"type": "server_error", "message": "the upstream's socket sent a bare error event"}
    return socket_error(doc)


@dataclass(eq=False)
class SocketReply:
    """A turn's events as an SSE stream (the transport ``Reply`` the forwarding path reads)."""

    line: UpstreamSocket
    first: bytes
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: _SSE_HEADERS)
    done: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        import aiohttp

        event: bytes | None = self.first
        while event is not None and event.startswith(b"{") and event.endswith(b"}"):
            kind = _kind(event)
            yield b"data: " + (_flat_error(event) if kind == b"error" else event) + b"\n\n"
            if kind in _ENDS:
                self._finish(event, kind)
                return
            try:
                event = await self.line._next()
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                event = None
        self.close()  # cut mid-turn, or garbage: the stream ends unfinished, which the tap reports

    def _finish(self, event: bytes, kind: bytes) -> None:
        self.done = True
        self.line.busy = False
        if kind != b"error":
            response = _json(event).get("response")
            self.line.last_response = response.get("id") if isinstance(response, dict) else None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        """Left before its end: the socket is not used again (the next turn opens another)."""
        if not self.done:
            self.done = True
            self.line.broken = True


@dataclass(eq=False)
class UpstreamSockets:
    """The upstream sockets of one client socket."""

    connect: Connect  # the transport's one way to open a socket (handshake bounded, frames as bytes)
    resting: dict[str, float]  # backend name -> until when its sockets rest (shared by all clients)
    lines: dict[tuple[str, str | None], UpstreamSocket] = field(default_factory=dict)
    # Translated upstreams (the Codex route) keep their conversation on a driver session instead.
    sessions: dict[tuple[str, str | None], Session] = field(default_factory=dict)

    def available(self, backend: str) -> bool:
        return self.resting.get(backend, 0.0) <= time.monotonic()

    def knows(self, backend: str, lane: str | None, response_id: Any) -> bool:
        """Whether a turn chained from ``response_id`` can send only its new items."""
        line = self.lines.get((backend, lane))
        return bool(response_id) and line is not None and line.usable and line.last_response == response_id

    async def send(
        self,
        where: tuple[str, str | None],
        url: str,
        headers: Mapping[str, str],
        frame: bytes,
        replay: Callable[[], bytes],
        read_seconds: float,
    ) -> SocketReply:
        """The turn on this client's socket to ``where``, reopened once with the whole conversation
        (``replay``) if the socket fails early; :class:`SocketUnavailable` after that, when the
        backend's sockets start to rest."""
        for attempt in range(2):
            try:
                line = await self._line(where, url, headers, read_seconds, fresh=attempt > 0)
                return await line.turn(frame if attempt == 0 else replay())
            except SocketUnavailable:
                await self._drop(where)
        self.resting[where[0]] = time.monotonic() + REST_SECONDS
        raise SocketUnavailable(f"the upstream {where[0]!r} would not hold a WebSocket")

    async def _line(
        self,
        where: tuple[str, str | None],
        url: str,
        headers: Mapping[str, str],
        read_seconds: float,
        fresh: bool,
    ) -> UpstreamSocket:
        line = self.lines.get(where)
        if line is not None and line.usable and not fresh:
            return line
        await self._drop(where)
        try:
            socket = await self.connect(url, {**headers, "OpenAI-Beta": BETA}, HANDSHAKE_SECONDS)
        except ModelwireError as exc:
            raise SocketUnavailable(exc.message) from None
        line = self.lines[where] = UpstreamSocket(socket, read_seconds)
        return line

    async def _drop(self, where: tuple[str, str | None]) -> None:
        line = self.lines.pop(where, None)
        if line is not None:
            with contextlib.suppress(Exception):
                await line.socket.close()

    def conversation(self, where: tuple[str, str | None], driver: OpenAI) -> Session:
        """The driver session of a translated upstream for this client socket and lane: its own
        upstream socket, kept for the conversation (the first turn's upstream key keeps it)."""
        session = self.sessions.get(where)
        if session is None:
            session = self.sessions[where] = driver.session()
        return session

    async def aclose(self) -> None:
        for where in list(self.lines):
            await self._drop(where)
        for session in self.sessions.values():
            with contextlib.suppress(Exception):
                await session.aclose()
        self.sessions.clear()


@dataclass(slots=True, eq=False)
class SocketTurn:
    """What one ``response.create`` brings from its client socket to the forwarding path."""

    lane: str | None
    upstream: UpstreamSockets
    items: list[dict[str, Any]] | None = None  # the whole conversation, when the connection expanded it
