"""Responses over WebSocket (OpenAI's WebSocket mode) at ``/v1/responses``.

The client key travels on the upgrade request and is checked before the handshake; a refusal, or
an upgrade on a path that speaks no WebSocket, is an HTTP error, never a half-open socket. Once
open, each ``response.create`` frame is served as the HTTP Responses request it stands for, through
the gateway's own dispatch, so keys, limits, routing, failover, usage rows, metrics, capture and
the request log apply to every response exactly as over HTTP; its SSE events go back as text
frames, echoing the frame's ``stream_id``. The most recent response is remembered on the
connection, so ``previous_response_id`` chains with ``store: false`` too.

Lanes (``stream_id``) run side by side, each one in order; a connection lasts at most an hour,
as OpenAI's do. A ``generate: false`` warm-up is answered here, with no upstream call: a response
with no output whose id later turns chain from, whatever their ``store``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..dialects.openai_responses import StreamRenderer, decode_request
from ..dialects.sse import SSEParser
from ..errors import (
    InvalidRequestError,
    ModelwireError,
    NotFoundError,
    PreviousResponseNotFound,
    RateLimitError,
)
from ..types import Finish
from .admission import Admission
from .auth import ClientKey
from .call import Call
from .chains import input_items
from .http import Message, Receive, Scope, Send
from .limits import Limiter
from .metrics import Metrics
from .surfaces import RESPONSES
from .upstream_sockets import SOCKET_TURN, SocketTurn, UpstreamSockets

App = Callable[[Scope, Receive, Send], Awaitable[None]]
SOCKET_PATHS = frozenset({"/v1/responses", "/responses"})
MAX_SECONDS = 3600.0
PLACE_SECONDS = 60.0  # a socket's lease on its key's place, renewed every third of it
RECENT_RESPONSES = 32  # responses a connection remembers for store: false chains
_LANE = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")
_SSE = [(b"content-type", b"text/event-stream")]
_DROPPED_HEADERS = frozenset({b"x-request-id", b"content-length", b"content-type"})


class _RefusedUpgrades(logging.Filter):
    """uvicorn's WebSocket server logs "ASGI callable returned without completing handshake" after
    an application refused an upgrade with an HTTP response, though that refusal is the ASGI way
    (uvicorn 0.54, ``websockets_sansio_impl``). Drop that one line for each refusal of ours, and no
    other: a handshake this application really left undone is still logged."""

    def __init__(self) -> None:
        super().__init__()
        self.pending = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if self.pending and record.getMessage() == "ASGI callable returned without completing handshake.":
            self.pending -= 1
            return False
        return True


_REFUSED = _RefusedUpgrades()
logging.getLogger("uvicorn.error").addFilter(_REFUSED)


@dataclass(eq=False)
class ResponsesSockets:
    app: App  # the gateway's HTTP dispatch
    admission: Admission
    metrics: Metrics
    client_address: Callable[[Scope], str]
    upstream: Callable[[], UpstreamSockets]  # a client socket's own sockets to native upstreams
    max_seconds: float = MAX_SECONDS

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if scope["path"] not in SOCKET_PATHS:
            err = NotFoundError(
                f"no WebSocket is served at {scope['path']}; Responses WebSocket mode is at /v1/responses",
                code="unknown_url",
            )
            await self._refuse(scope, send, err)
            return
        call = Call("", RESPONSES, time.monotonic(), self.client_address(scope))
        try:
            await self.admission.authenticate(call, scope)
            place = await self.hold_place(call.key)
        except ModelwireError as err:
            await self._refuse(scope, send, err)
            return
        await send({"type": "websocket.accept"})
        self.metrics.socket_opened()
        try:
            await _Connection(self, scope, receive, send).run()
        finally:
            self.metrics.socket_closed()
            if place is not None:
                await place.release()

    async def hold_place(self, key: ClientKey | None) -> _Place | None:
        """One of the key's places for open sockets (an open gateway's clients have no key, no cap)."""
        if key is None:
            return None
        place = _Place(self.admission.state.limiter, f"sockets:{key.name}", uuid.uuid4().hex)
        limit = self._cap()
        if not await place.hold(limit):
            cap = self.admission.config.server.websocket_sockets_per_key
            raise RateLimitError(
                f"the key {key.name!r} already has as many WebSockets open as it may ({cap} in all); "
                "close one or wait",
                code="websocket_connection_limit_reached",
                retry_after=PLACE_SECONDS / 3,
            )
        place.keep(limit)
        return place

    def _cap(self) -> int:
        """This process's share of a key's open sockets: all of them when Redis counts for every
        worker, else an equal part per worker, so that together they never allow more."""
        config = self.admission.config
        cap, workers = config.server.websocket_sockets_per_key, config.server.workers
        return cap if config.redis or workers == 1 else max(1, cap // workers)

    async def _refuse(self, scope: Scope, send: Send, err: ModelwireError) -> None:
        self.metrics.socket_refused()
        await refuse_upgrade(scope, send, err)


@dataclass(eq=False)
class _Place:
    """A key's place among its open sockets: a lease renewed while the socket lives, so a replica
    that dies frees its places within ``PLACE_SECONDS``."""

    limiter: Limiter
    name: str
    holder: str
    renewal: asyncio.Task[None] | None = None

    async def hold(self, limit: int) -> bool:
        return await self.limiter.lease(self.name, self.holder, limit, PLACE_SECONDS)

    def keep(self, limit: int) -> None:
        self.renewal = asyncio.ensure_future(self._renew(limit))

    async def _renew(self, limit: int) -> None:
        while True:
            await asyncio.sleep(PLACE_SECONDS / 3)
            with contextlib.suppress(Exception):  # a Redis hiccup: the next renewal tries again
                await self.hold(limit)

    async def release(self) -> None:
        if self.renewal is not None:
            self.renewal.cancel()
        with contextlib.suppress(Exception):  # the lease then lapses by itself
            await self.limiter.release(self.name, self.holder)


@dataclass(eq=False)
class _Connection:
    sockets: ResponsesSockets
    scope: Scope
    receive: Receive
    send: Send
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    frames: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    lanes: dict[str | None, asyncio.Queue[dict[str, Any] | None]] = field(default_factory=dict)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    # The most recent responses, each as the whole conversation up to its end: what a follow-up
    # with store: false chains from (on its own lane or another).
    recent: OrderedDict[str, list[dict[str, Any]]] = field(default_factory=OrderedDict)
    warm_ups: set[str] = field(default_factory=set)  # ids only this connection knows, whatever store said
    upstream: UpstreamSockets | None = None

    async def run(self) -> None:
        self.upstream = self.sockets.upstream()
        reader = asyncio.ensure_future(self._read())
        deadline = time.monotonic() + self.sockets.max_seconds
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        frame = await self.frames.get()
                except TimeoutError:
                    reason = "connection time limit (60 minutes)"
                    await self.send({"type": "websocket.close", "code": 1001, "reason": reason})
                    return
                if frame is None:
                    return
                await self._dispatch(frame)
        finally:
            for lane in self.lanes.values():
                lane.put_nowait(None)  # each lane ends its answer in flight (a 499 once closed)
            await asyncio.gather(*self.workers, return_exceptions=True)
            reader.cancel()
            await self.upstream.aclose()

    async def _read(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                self.closed.set()
                self.frames.put_nowait(None)
                return
            text = message.get("text")
            if text is None and message.get("bytes") is not None:
                text = message["bytes"].decode("utf-8", "replace")
            if text is not None:
                self.frames.put_nowait(text)

    async def _dispatch(self, text: str) -> None:
        """A frame checked and queued on its lane: lanes run side by side, each in order."""
        lane: str | None = None
        try:
            doc = orjson.loads(text)
            if not isinstance(doc, dict):
                raise InvalidRequestError("a frame must be one JSON object")
            lane = doc.pop("stream_id", None)
            if lane is not None and not (isinstance(lane, str) and _LANE.match(lane)):
                lane = None
                raise InvalidRequestError(
                    "stream_id: 1 to 256 letters, digits, '_', '.' or '-'", param="stream_id"
                )
            kind = doc.pop("type", None)
            if kind != "response.create":
                raise InvalidRequestError(
                    f"unknown event type {kind!r}: this socket takes response.create", param="type"
                )
            if doc.get("background"):
                raise InvalidRequestError(
                    "background responses are not supported over WebSocket; use POST /v1/responses",
                    param="background",
                )
            queue = self.lanes.get(lane) or self._open_lane(lane)
        except orjson.JSONDecodeError:
            await self._error(InvalidRequestError("a frame must be JSON text"), None)
            return
        except ModelwireError as err:
            await self._error(err, lane)
            return
        queue.put_nowait(doc)

    def _open_lane(self, lane: str | None) -> asyncio.Queue[dict[str, Any] | None]:
        most = self.sockets.admission.config.server.websocket_lanes
        if len(self.lanes) >= most:
            raise RateLimitError(
                f"this connection already has {most} stream_id lanes; reuse one or open another",
                code="websocket_stream_limit_reached",
                param="stream_id",
            )
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.lanes[lane] = queue
        self.workers.append(asyncio.ensure_future(self._lane(lane, queue)))
        return queue

    async def _lane(self, lane: str | None, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        while (doc := await queue.get()) is not None:
            if self.closed.is_set():
                continue  # nobody is listening: queued frames are dropped, not run
            doc["stream"] = True
            try:
                turn = self._turn(doc, lane)
                if doc.pop("generate", True) is False:
                    await self._warm_up(doc, turn)
                    continue
            except ModelwireError as err:
                await self._error(err, lane)
                continue
            await self._respond(doc, turn)

    def _turn(self, body: dict[str, Any], lane: str | None) -> _Turn:
        """The turn, with the whole conversation so far when this connection remembers the response
        it continues; expanded when nothing else keeps that response (``store: false``, or a
        warm-up only this connection knows)."""
        assert self.upstream is not None
        previous = body.get("previous_response_id")
        history = self.recent.get(previous) if isinstance(previous, str) else None
        everything = [*history, *input_items(body)] if history is not None else input_items(body)
        turn = _Turn(SocketTurn(lane, self.upstream), everything)
        if previous is None or (body.get("store") is not False and previous not in self.warm_ups):
            return turn
        if history is None:
            raise PreviousResponseNotFound(
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        turn.socket.items = everything
        return turn

    def remember(self, response_id: str, items: list[dict[str, Any]]) -> None:
        self.recent[response_id] = items
        while len(self.recent) > RECENT_RESPONSES:
            self.warm_ups.discard(self.recent.popitem(last=False)[0])

    async def _warm_up(self, body: dict[str, Any], turn: _Turn) -> None:
        """``generate: false``: state prepared, nothing generated. The key must still be one allowed
        the model; the answer is a finished response with no output and no usage."""
        call = Call("", RESPONSES, time.monotonic(), self.sockets.client_address(self.scope))
        await self.sockets.admission.permit(call, self.scope, body)
        renderer = StreamRenderer(decode_request({**body, "previous_response_id": None}))
        events = renderer.start() + renderer.feed(Finish(stop_reason="stop"))
        self.warm_ups.add(renderer.response_id)
        relay = _Relay(self, turn.socket.lane, turn.everything)
        await relay.send({"type": "http.response.start", "status": 200, "headers": _SSE})
        await relay.send({"type": "http.response.body", "body": events})

    async def _respond(self, body: dict[str, Any], turn: _Turn) -> None:
        """One response: served as the HTTP request it stands for, its events sent as frames."""
        payload = orjson.dumps(body)
        relay = _Relay(self, turn.socket.lane, turn.everything)
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await self.closed.wait()
            return {"type": "http.disconnect"}

        await self.sockets.app(self._http_scope(len(payload), turn.socket), receive, relay.send)
        await relay.finish()

    def _http_scope(self, length: int, turn: SocketTurn) -> Scope:
        headers = [(k, v) for k, v in self.scope["headers"] if k not in _DROPPED_HEADERS]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(length).encode())]
        return {
            **self.scope,
            "type": "http",
            "method": "POST",
            "path": "/v1/responses",
            "raw_path": b"/v1/responses",
            "query_string": b"",
            "headers": headers,
            "http_version": "1.1",
            SOCKET_TURN: turn,
        }

    async def _error(self, err: ModelwireError, lane: str | None) -> None:
        """``err`` as its HTTP answer would say it, in the socket's error event."""
        status, doc = RESPONSES.render_error(err)
        await self.frame(_error_event(status, doc["error"], lane))

    async def frame(self, doc: dict[str, Any] | str) -> None:
        if self.closed.is_set():
            return
        text = doc if isinstance(doc, str) else orjson.dumps(doc).decode()
        try:
            await self.send({"type": "websocket.send", "text": text})
        except OSError:  # the client went away mid-answer: the answer ends as cut (499)
            self.closed.set()


@dataclass(slots=True, eq=False)
class _Turn:
    socket: SocketTurn  # what goes with the request to the forwarding path
    everything: list[dict[str, Any]]  # the conversation up to this turn, remembered with its answer


@dataclass(eq=False)
class _Relay:
    """The HTTP answer to one ``response.create``, turned into frames as it comes."""

    connection: _Connection
    lane: str | None
    items: list[dict[str, Any]]
    status: int = 0
    streaming: bool = False
    parser: SSEParser = field(default_factory=SSEParser)
    body: bytearray = field(default_factory=bytearray)

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            headers = dict(message.get("headers") or [])
            self.streaming = headers.get(b"content-type", b"").startswith(b"text/event-stream")
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if not self.streaming:
                self.body += chunk
                return
            for event in self.parser.feed(chunk):
                await self._event(event.event, event.data)

    async def _event(self, name: str | None, data: str) -> None:
        if not (data.startswith("{") and data.endswith("}")):
            return  # nothing, or an upstream's garbage: a frame must be a JSON object
        if name == "error" or data.startswith('{"type":"error"'):
            flat = orjson.loads(data)
            error = {k: flat.get(k) for k in ("code", "message", "param")}
            error["type"] = "server_error"
            event = _error_event(500, error, self.lane)
            if isinstance(flat.get("sequence_number"), int):
                event["sequence_number"] = flat["sequence_number"]
            await self.connection.frame(event)
            return
        if '"response.completed"' in data[:64] or '"response.incomplete"' in data[:64]:
            self._remember(orjson.loads(data).get("response"))
        if self.lane is not None:
            data = '{"stream_id":' + orjson.dumps(self.lane).decode() + "," + data[1:]
        await self.connection.frame(data)

    def _remember(self, response: Any) -> None:
        if isinstance(response, dict) and isinstance(response.get("id"), str):
            output = [i for i in response.get("output") or [] if isinstance(i, dict)]
            self.connection.remember(response["id"], [*self.items, *output])

    async def finish(self) -> None:
        """An answer that never became a stream is an error: said as the socket's error event."""
        if self.streaming or not self.status:
            return
        try:
            doc = orjson.loads(bytes(self.body))
            error = doc.get("error") if isinstance(doc, dict) else None
        except orjson.JSONDecodeError:
            error = None
        if not isinstance(error, dict):
            error = {
                "type": "server_error",
                "code": None,
                "message": "the gateway could not answer",
                "param": None,
            }
        await self.connection.frame(_error_event(self.status, error, self.lane))


def _error_event(status: int, error: dict[str, Any], lane: str | None) -> dict[str, Any]:
    """OpenAI's WebSocket error event: the details nested under ``error``, the HTTP status beside."""
    event: dict[str, Any] = {"type": "error", "status": status, "error": error}
    if lane is not None:
        event["stream_id"] = lane
    return event


async def refuse_upgrade(scope: Scope, send: Send, err: ModelwireError) -> None:
    """An HTTP error instead of the handshake (a bare close, a 403, where the server cannot)."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    status, doc = RESPONSES.render_error(err)
    headers = [(b"content-type", b"application/json")]
    if err.retry_after is not None:
        headers.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
    _REFUSED.pending += 1
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": orjson.dumps(doc)})
