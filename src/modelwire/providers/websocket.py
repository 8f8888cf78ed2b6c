"""Responses over WebSocket (PROTOCOLS.md 2.7): the OpenAI driver's second transport.

Why: an agent's tool loop is many short turns on one growing transcript. Over a WebSocket a turn
is one frame on a connection that is already open, and the connection remembers its most recent
response, so a follow-up sends only its new items plus ``previous_response_id``, even with
``store: false`` (where HTTP has to replay the whole transcript every turn).

How one call goes (:meth:`Sockets.events`):

* It takes a socket: a session's own, an idle one from the client's pool (preferring the one that
  remembers this conversation), or a new one. A socket older than ``max_age`` is replaced before
  its turn, since OpenAI ends connections at 60 minutes.
* The request is chained onto what that connection remembers when the transcript continues it,
  else sent whole (see :meth:`.planning.Planner.on_socket`).
* An early failure (connecting, sending, or an error before any output reached the caller,
  ``previous_response_not_found`` included) is retried once on a new socket with the whole
  transcript. A second one sends the call over SSE and marks the host degraded: calls use SSE
  until the cool-down ends. An error that is the request's own (a 400, a bad key) is raised at
  once, since SSE would answer the same. After output has reached the caller a failure is a
  :class:`StreamError`, never retried.
* Every attempt of a turn carries the same turn id in ``metadata``, with its attempt number, so
  an upstream's logs can tell a retried turn from a new one.

Server events are the SSE events' JSON in text frames, so they go through the Responses stream
decoder as SSE's do; only the WebSocket ``error`` event (details nested, with the HTTP status)
is read here.

The client is aiohttp's ``ws_connect`` rather than ``websockets``: on loopback
(``bench/ws_client_bench.py``, turns of 300 events) it spent about half the client CPU per turn
(1.6-2.0 ms against 3.3-4.3 ms), had the lower p50 and p99 and the faster handshake, and it
rides the driver's pooled aiohttp session and :mod:`.transport`'s error translation.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias

import orjson

from ..dialects.openai_responses import StreamDecoder
from ..errors import (
    ModelwireError,
    PreviousResponseNotFound,
    ProtocolError,
    UpstreamUnavailableError,
    from_response,
)
from ..observe import FellBack, Observer, RequestSent, SocketOpened
from ..types import Start, StreamError, StreamEvent
from .planning import Plan, Planner, leading_instructions
from .retry import retry_after, should_retry_header
from .transport import translate

if TYPE_CHECKING:  # imported where a socket is used: a gateway serving only HTTP never loads it
    import aiohttp

TransportMode: TypeAlias = Literal["auto", "sse", "websocket"]
MODES: tuple[TransportMode, ...] = ("auto", "sse", "websocket")
# Sent on the handshake as the Codex CLI does (seen in third-party captures; PROTOCOLS.md names no
# header, and the official Python SDK sends none): it asks for the current version of the mode.
BETA = "responses_websockets=2026-02-06"
TURN_KEY = "modelwire_turn"
ATTEMPT_KEY = "modelwire_attempt"
_METADATA_KEYS = 16  # the spec's limit on metadata pairs
_ENDS = frozenset({"response.completed", "response.incomplete", "response.failed", "error"})
_KEPT = frozenset({"response.completed", "response.incomplete"})  # what a connection remembers
_SOCKET_CODES = frozenset({"websocket_connection_limit_reached"})

Connect: TypeAlias = Callable[
    [str, Mapping[str, str], float], Awaitable["aiohttp.ClientWebSocketResponse[bool]"]
]
SSE: TypeAlias = Callable[[Plan], AsyncGenerator[StreamEvent, None]]


@dataclass(frozen=True, slots=True)
class SocketPolicy:
    """How the driver uses WebSockets.

    ``cooldown``: seconds a host stays on SSE after its sockets failed; ``max_age``: a socket this
    old is replaced before its next turn (OpenAI ends connections at 60 minutes);
    ``connect_timeout``: bound on a handshake; ``warmup_timeout``: bound on a warm-up;
    ``pool``: idle sockets a client keeps for calls outside sessions; ``clock``: a monotonic
    clock in seconds (tests move it).
    """

    cooldown: float = 60.0
    max_age: float = 55 * 60.0
    connect_timeout: float = 10.0
    warmup_timeout: float = 5.0
    pool: int = 8
    clock: Callable[[], float] = time.monotonic


class Socket:
    """One open connection, carrying one response at a time."""

    __slots__ = ("loop", "opened", "remembered", "warm", "ws")

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool], opened: float) -> None:
        self.ws = ws
        self.opened = opened
        self.loop = asyncio.get_running_loop()
        # The connection's most recent response: what ``previous_response_id`` can name on it.
        self.remembered: str | None = None
        self.warm = False  # that response is a warm-up, holding none of the conversation

    @property
    def usable(self) -> bool:
        """Open as far as we know, and on the running loop (``complete_sync`` runs a loop a call)."""
        try:
            return not self.ws.closed and self.loop is asyncio.get_running_loop()
        except RuntimeError:
            return False

    async def send(self, frame: bytes) -> None:
        import aiohttp

        try:
            await self.ws.send_frame(frame, aiohttp.WSMsgType.TEXT)
        except BaseException as exc:
            raise translate(exc) from exc

    async def events(self, idle: float | None) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
        """The frames of the response in flight, raw and parsed, up to the one that ends it;
        ``idle`` bounds the wait for each (as ``sock_read`` does over HTTP)."""
        self.remembered, self.warm = None, False
        while True:
            raw = await self._receive(idle)
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ProtocolError(
                    f"upstream sent a WebSocket frame that is not JSON: {raw[:80]!r}"
                ) from None
            if not isinstance(event, dict):
                raise ProtocolError("upstream sent a WebSocket frame that is not a JSON object")
            yield raw, event
            kind = event.get("type")
            if kind in _ENDS:
                if kind in _KEPT:
                    self.remembered = (event.get("response") or {}).get("id")
                return

    async def _receive(self, idle: float | None) -> bytes:
        import aiohttp

        try:
            message = await self.ws.receive(timeout=idle)
        except BaseException as exc:
            raise translate(exc) from exc
        if message.type == aiohttp.WSMsgType.TEXT:
            data = message.data
            return data if isinstance(data, bytes) else str(data).encode()
        if message.type == aiohttp.WSMsgType.BINARY:
            raise ProtocolError("upstream sent a binary WebSocket frame")
        if message.type == aiohttp.WSMsgType.ERROR:
            raise translate(message.data)
        raise UpstreamUnavailableError(f"the upstream closed the WebSocket (code {self.ws.close_code})")

    async def close(self) -> None:
        if self.usable:
            try:
                await self.ws.close()
            except Exception:  # closing is best effort: the socket is being given up anyway
                return


class Lease(Protocol):
    """Where a call's socket comes from and goes back to: the client's pool, or a session."""

    def take(self, remembers: str | None) -> Socket | None: ...
    async def give(self, socket: Socket) -> None: ...
    async def aclose(self) -> None: ...


class Pool:
    """A client's idle sockets, for calls outside sessions; a call continuing a conversation gets
    the socket that remembers it, so it can send only its new items."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[Socket] = []

    def take(self, remembers: str | None) -> Socket | None:
        self._idle = [s for s in self._idle if s.usable]
        for i, socket in enumerate(self._idle):
            if remembers is not None and socket.remembered == remembers:
                return self._idle.pop(i)
        return self._idle.pop() if self._idle else None

    async def give(self, socket: Socket) -> None:
        self._idle.append(socket)
        while len(self._idle) > self.size:
            await self._idle.pop(0).close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for socket in idle:
            await socket.close()


class Pinned:
    """A session's one socket."""

    def __init__(self) -> None:
        self.socket: Socket | None = None

    def take(self, remembers: str | None) -> Socket | None:
        socket, self.socket = self.socket, None
        return socket if socket is not None and socket.usable else None

    async def give(self, socket: Socket) -> None:
        if self.socket is not None and self.socket is not socket:
            await self.socket.close()
        self.socket = socket

    async def aclose(self) -> None:
        if self.socket is not None:
            await self.socket.close()
            self.socket = None


@dataclass(frozen=True, slots=True)
class Route:
    """A call that goes over WebSocket: where its socket comes from, and whether SSE may stand in
    (not when the caller asked for ``transport="websocket"``)."""

    lease: Lease
    forced: bool


class Cooldown:
    """A host whose sockets failed is left to SSE for a while, rather than failing every call twice."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds, self.clock = seconds, clock
        self.until = float("-inf")

    @property
    def active(self) -> bool:
        return self.clock() < self.until

    def start(self) -> None:
        self.until = self.clock() + self.seconds


class Sockets:
    """The OpenAI driver's WebSocket side for one host."""

    def __init__(
        self,
        *,
        url: str,
        planner: Planner,
        observer: Observer,
        headers: Callable[[], Awaitable[dict[str, str]]],
        connect: Connect,
        timeout: float,
        policy: SocketPolicy,
        metadata: bool,
    ) -> None:
        self.url, self.planner, self.observer = url, planner, observer
        self.headers, self.connect, self.timeout, self.policy = headers, connect, timeout, policy
        self.metadata = metadata
        self.pool = Pool(policy.pool)
        self.cooldown = Cooldown(policy.cooldown, policy.clock)

    async def events(self, plan: Plan, route: Route, *, sse: SSE) -> AsyncGenerator[StreamEvent, None]:
        """One call's events: WebSocket first, one retry of an early failure, then SSE."""
        turn = uuid.uuid4().hex
        error: ModelwireError | None = None
        for attempt in (1, 2):
            try:
                # Closed with this generator: a caller stopping early gives the socket up now.
                async with contextlib.aclosing(
                    self._attempt(self._stamped(plan, turn, attempt), route.lease, attempt)
                ) as events:
                    async for event in events:
                        yield event
                return
            except ModelwireError as err:  # raised only before any event reached the caller
                if not _maybe_the_socket(err):
                    raise
                error = err
                if isinstance(err, PreviousResponseNotFound) and plan.chained:
                    plan = self.planner.unchain(plan)
        assert error is not None
        if route.forced:
            raise error
        self.cooldown.start()
        self.observer.emit(FellBack(error=error, cooldown=self.cooldown.seconds))
        async with contextlib.aclosing(sse(self._stamped(plan, turn, 3))) as fallback:
            async for event in fallback:
                yield event

    async def warm_up(self, plan: Plan, lease: Lease) -> bool:
        """Open a socket and prime it with ``generate: false`` (instructions and tools, no input),
        within ``warmup_timeout``. The next turn chains onto the warm-up. Whether it worked: a
        failed warm-up is not an error, the first turn just opens its own socket."""
        socket: Socket | None = None
        warmed = False
        try:
            async with asyncio.timeout(self.policy.warmup_timeout):
                socket = await self._socket(lease, None, fresh=False)
                instructions = plan.transcript[: leading_instructions(plan.transcript)]
                req = dataclasses.replace(plan.req, messages=instructions)
                await socket.send(self._frame(dataclasses.replace(plan, req=req), generate=False))
                async for _, event in socket.events(None):
                    warmed = event.get("type") == "response.completed"
        except (ModelwireError, builtins.TimeoutError):
            warmed = False
        if socket is not None:
            if warmed:
                socket.warm = True
                await lease.give(socket)
            else:
                await socket.close()
        return warmed

    async def aclose(self) -> None:
        await self.pool.aclose()

    # ------------------------------------------------------------------------------ one attempt

    async def _attempt(self, plan: Plan, lease: Lease, attempt: int) -> AsyncGenerator[StreamEvent, None]:
        """One try on one socket. A failure before any event is yielded is raised (the caller may
        try again); after that it is yielded as a :class:`StreamError`. ``Start`` is held back
        until output begins, so that an error right after ``response.created`` is still early."""
        socket = await self._socket(lease, _last_response(plan), fresh=attempt > 1)
        sent = self.planner.on_socket(plan, socket.remembered, socket.warm)
        frame = self._frame(sent)
        self.observer.emit(
            RequestSent(url=self.url, model=plan.req.model, api="responses", attempt=attempt - 1, stream=True)
        )
        self.observer.payload("request", self.url, {}, frame)
        started = reusable = False
        held: list[StreamEvent] = []
        try:
            await socket.send(frame)
            async for event in self._decode(socket):
                if not started:
                    if isinstance(event, StreamError):
                        raise event.error
                    if isinstance(event, Start):
                        held.append(event)
                        continue
                    started = True
                    for early in held:
                        yield early
                yield event
            reusable = True
        except ModelwireError as err:
            if not started:
                raise
            yield StreamError(error=err)
        finally:
            # A socket that failed, or whose caller stopped reading with frames still coming, is
            # not trusted with another turn.
            if reusable:
                await lease.give(socket)
            else:
                await socket.close()

    async def _decode(self, socket: Socket) -> AsyncIterator[StreamEvent]:
        """The response's frames as neutral events, through the Responses stream decoder."""
        decoder = StreamDecoder()
        async for raw, event in socket.events(self.timeout):
            self.observer.payload("stream", "", {}, raw)
            if event.get("type") == "error" and isinstance(event.get("error"), dict):
                yield StreamError(error=socket_error(event))
                return
            for decoded in decoder.feed_event(event):
                yield decoded
        for decoded in decoder.end():
            yield decoded

    async def _socket(self, lease: Lease, remembers: str | None, *, fresh: bool) -> Socket:
        """The lease's socket (preferring the one that remembers ``remembers``), else a new one;
        always a new one for a retry, since the last one just failed."""
        socket = None if fresh else lease.take(remembers)
        if socket is not None and self.policy.clock() - socket.opened >= self.policy.max_age:
            await socket.close()  # OpenAI would end it within the hour: replace it between turns
            socket = None
        return socket or await self._open()

    async def _open(self) -> Socket:
        ws = await self.connect(self.url, await self.headers(), self.policy.connect_timeout)
        self.observer.emit(SocketOpened(url=self.url))
        return Socket(ws, self.policy.clock())

    def _frame(self, plan: Plan, *, generate: bool = True) -> bytes:
        """The ``response.create`` frame: the HTTP body without what WebSocket mode leaves out."""
        body = self.planner.body(plan)
        for name in ("stream", "stream_options", "background"):
            body.pop(name, None)
        if not generate:
            body["generate"] = False
        return orjson.dumps({"type": "response.create", **body})

    def _stamped(self, plan: Plan, turn: str, attempt: int) -> Plan:
        """The plan with the turn's identity in ``metadata`` (where the host takes metadata and the
        caller's own leaves room for it)."""
        own = plan.req.metadata or {}
        if not self.metadata or len(set(own) | {TURN_KEY, ATTEMPT_KEY}) > _METADATA_KEYS:
            return plan
        metadata = {**own, TURN_KEY: turn, ATTEMPT_KEY: str(attempt)}
        return dataclasses.replace(plan, req=dataclasses.replace(plan.req, metadata=metadata))


def socket_error(event: dict[str, Any]) -> ModelwireError:
    """A WebSocket ``error`` event as the error the same failure over HTTP would be."""
    error = event["error"]
    status = event.get("status")
    if error.get("code") == "previous_response_not_found" or not isinstance(status, int):
        status = 404 if error.get("code") == "previous_response_not_found" else 500
    raw_headers = error.get("headers")
    headers = (
        {str(k).lower(): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, dict) else {}
    )
    err = from_response(status, orjson.dumps({"error": error}), retry_after=retry_after(headers))
    verdict = should_retry_header(headers)
    if verdict is not None:
        err.retryable = verdict
    return err


def _maybe_the_socket(err: ModelwireError) -> bool:
    """Whether an early failure may not recur on a new socket or over SSE: the connection failed,
    timed out, was refused or ended, the server failed or was busy, or the chain was lost. A
    request refused as such (400, 401, 403, 404) would fail the same way anywhere."""
    return (
        err.retryable
        or isinstance(err, PreviousResponseNotFound | ProtocolError)
        or err.code in _SOCKET_CODES
    )


def _last_response(plan: Plan) -> str | None:
    """The id of the transcript's last answer, to find the socket that remembers it."""
    for message in reversed(plan.transcript):
        if message.role == "assistant" and message.id:
            return message.id
    return None
