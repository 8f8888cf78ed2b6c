"""The Realtime API through the gateway: ``GET /v1/realtime?model=`` WebSockets and
``POST /v1/realtime/client_secrets`` (docs/realtime.md has the wire).

A realtime socket is a proxy, not a translation: every event goes through both ways as the frame it
came in (text stays text, binary stays binary; nothing is parsed on the way but the few events the
gateway must see: a client's ``response.create``, an upstream's ``response.created``,
``response.done`` and ``error``). Before the handshake is answered, exactly as for an HTTP
request: the client key (``Authorization``, or the ``openai-insecure-api-key.<key>`` subprotocol
browsers send, never echoed back), the model against the key's globs, rpm and budget, a place
among the key's open sockets (shared with Responses sockets), and an upstream socket opened
through the route's failover (a refused upgrade, 429 or 5xx, moves to the next backend).
Refusals are HTTP errors in OpenAI's shape.

Once open there is no failover: the conversation lives on that upstream socket. A client
``response.create`` is checked against the key's limits first and, if refused, answered with a
realtime ``error`` event instead of being forwarded (the socket stays open). Each upstream
``response.done`` is one usage row, priced with audio and text apart. Either side closing closes
the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, cast
from urllib.parse import parse_qsl

import orjson

from ..errors import (
    InvalidRequestError,
    ModelwireError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamUnavailableError,
    from_response,
)
from ..providers.realtime import SUBPROTOCOL, key_from_subprotocols, realtime_usage
from ..providers.transport import Transport, text_frame
from ..providers.transport import call as transport_call
from ..types import Dialect, Usage
from . import http
from .accounting import Accounting
from .admission import Admission
from .call import Call
from .http import Receive, Scope, Send
from .metrics import Metrics
from .routing import Target
from .sockets import MAX_SECONDS, ResponsesSockets, refuse_upgrade
from .surfaces import RESPONSES
from .upstream import Backend, Failover, Outcome

if TYPE_CHECKING:  # imported where a socket is used: a gateway serving only HTTP never loads it
    import aiohttp

SOCKET_PATHS = frozenset({"/v1/realtime", "/realtime"})
# What mints an ephemeral secret: path -> (upstream endpoint under /realtime, the body field whose
# ``model`` is routed).
MINTED = {
    "/v1/realtime/client_secrets": ("client_secrets", "session"),
    "/v1/realtime/transcription_sessions": ("transcription_sessions", "input_audio_transcription"),
}
HANDSHAKE_SECONDS = 10.0  # the longest an upstream may take to open a realtime socket
SETTLE_SECONDS = 5.0  # the longest a session's end waits for its cancelled responses' usage
Socket: TypeAlias = "aiohttp.ClientWebSocketResponse[bool]"
Connect = Callable[[str, Mapping[str, str], float], Awaitable[Socket]]
# Realtime errors, rows and metrics say OpenAI's shape under their own label.
REALTIME = dataclasses.replace(RESPONSES, dialect=cast(Dialect, "openai_realtime"), chains=False)
BETA_SUBPROTOCOL = "openai-beta.realtime-v1"  # a browser's stand-in for ``OpenAI-Beta: realtime=v1``
# Upstream events the gateway reads (every other frame passes unread): a marker found is confirmed
# by parsing, since it could stand inside an item's content.
_LIFECYCLE = (b'"response.created"', b'"response.done"', b'"error"')
_FORWARDED = (b"openai-beta", b"openai-organization", b"openai-project")  # client headers passed on


@dataclass(eq=False)
class Realtime:
    admission: Admission
    failover: Failover
    accounting: Accounting
    metrics: Metrics
    transport: Transport
    connect: Connect
    sockets: ResponsesSockets  # the key's socket places and the refusal on the handshake
    client_address: Callable[[Scope], str]
    max_seconds: float = MAX_SECONDS

    # ------------------------------------------------------------------------------ the socket

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        if scope["path"] not in SOCKET_PATHS:
            await self._refuse(
                scope, send, NotFoundError(f"no WebSocket is served at {scope['path']}", code="unknown_url")
            )
            return
        call = Call(_socket_id(), REALTIME, time.monotonic(), self.client_address(scope))
        try:
            await self.admission.authenticate(call, _with_subprotocol_key(scope))
            route = await self.admission.allow_model(call, _query(scope).get("model"))
            place = await self.sockets.hold_place(call.key)
        except ModelwireError as err:
            await self._refuse(scope, send, err)
            return
        try:
            await self._open(call, route.order(), scope, receive, send)
        finally:
            if place is not None:
                await place.release()

    async def _open(
        self, call: Call, targets: list[Target], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """The upstream socket through failover, then the client's handshake, then the session."""
        try:
            outcome = await self.failover.run(targets, self._opener(scope))
        except ModelwireError as err:
            await self._refuse(scope, send, err)
            return
        accept: dict[str, Any] = {"type": "websocket.accept"}
        if SUBPROTOCOL in scope.get("subprotocols", ()):
            accept["subprotocol"] = SUBPROTOCOL  # never the key's subprotocol: that would echo it
        try:
            await send(accept)
        except OSError:  # the client left while the upstream opened
            await outcome.value.close()
            return
        self.metrics.socket_opened()
        try:
            await _Session(self, call, outcome, receive, send).run()
        finally:
            self.metrics.socket_closed()

    def _opener(self, scope: Scope) -> Callable[[Target, Backend, int], Awaitable[Socket]]:
        client = dict(scope["headers"])
        client_names = {name.decode("latin-1") for name in client}
        offered = scope.get("subprotocols") or ()
        query = _query(scope)

        async def open_socket(target: Target, backend: Backend, index: int) -> Socket:
            if not backend.host.profile.realtime:
                raise InvalidRequestError(
                    f"the backend {backend.name!r} does not serve the Realtime API",
                    code="realtime_unsupported",
                )
            url = backend.host.realtime_url(target.model)
            if query.get("intent") == "transcription":
                url += "&intent=transcription"
            headers = {k: v for k, v in backend.headers(index).items() if k.lower() != "content-type"}
            headers.update({k.decode(): client[k].decode("latin-1") for k in _FORWARDED if k in client})
            if BETA_SUBPROTOCOL in offered and "openai-beta" not in client_names:
                headers["OpenAI-Beta"] = "realtime=v1"  # a browser's way of asking for the beta events
            try:
                return await self.connect(url, headers, HANDSHAKE_SECONDS)
            except UpstreamUnavailableError as err:
                raise _handshake_error(err) from None

        return open_socket

    async def _refuse(self, scope: Scope, send: Send, err: ModelwireError) -> None:
        self.metrics.socket_refused()
        await refuse_upgrade(scope, send, err)

    # -------------------------------------------------------------------- client secrets (HTTP)

    async def mint(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/realtime/client_secrets`` (and the older ``/transcription_sessions``):
        passed through with the upstream's key, only for keys allowed to mint ephemeral secrets
        (``realtime_secrets: true``); the model the body names is routed and checked."""
        endpoint, where = MINTED[scope["path"]]
        call.headers = await self.admission.authenticate(call, scope)
        if call.key is not None and not call.key.realtime_secrets:
            raise PermissionDeniedError(
                f"the key {call.key.name!r} may not mint Realtime client secrets; ask the operator "
                "for a key with realtime_secrets: true",
                code="client_secrets_not_allowed",
            )
        raw = await http.read_body(
            receive, self.admission.config.server.max_body_bytes, call.headers.get(b"content-length")
        )
        body = http.parse_json(raw)
        holder = body.get(where)
        if not isinstance(holder, dict):
            raise InvalidRequestError(f"{where}: is required (an object naming the model)", param=where)
        route = await self.admission.allow_model(call, holder.get("model"))

        async def forward(target: Target, backend: Backend, index: int) -> bytes:
            if not backend.host.profile.realtime:
                raise InvalidRequestError(
                    f"the backend {backend.name!r} does not serve the Realtime API",
                    code="realtime_unsupported",
                )
            payload = orjson.dumps({**body, where: {**holder, "model": target.model}})
            url = backend.host.realtime_secrets_url(endpoint)
            reply = await transport_call(self.transport, "POST", url, backend.headers(index), payload)
            return await reply.read()

        try:
            outcome = await self.failover.run(route.order(), forward)
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)
            return
        await self.accounting.served(call, send, outcome, outcome.value, None)


@dataclass(eq=False)
class _Session:
    """One open realtime socket: the client's and the upstream's frames, each pumped to the other.

    Responses are followed by their lifecycle events only (``response.created``, ``response.done``,
    and ``error``): a response the client asked for was checked against the key's limits when
    asked; one the server started itself (voice activity) is checked when created, and cancelled
    upstream when the key is over its limits."""

    realtime: Realtime
    call: Call  # the socket's own: key, client, public model
    outcome: Outcome[Socket]
    receive: Receive
    send: Send
    asked: int = 0  # client response.create frames let through whose response is not created yet
    live: dict[str, float] = field(default_factory=dict)  # response id -> started: created, not done

    @property
    def upstream(self) -> Socket:
        return self.outcome.value

    async def run(self) -> None:
        pumps = [asyncio.ensure_future(self._from_client()), asyncio.ensure_future(self._from_upstream())]
        try:
            async with asyncio.timeout(self.realtime.max_seconds):
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            pass
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            if self.live and not self.upstream.closed:
                with contextlib.suppress(Exception):
                    await self._settle()
            with contextlib.suppress(Exception):
                await self.upstream.close()
            with contextlib.suppress(Exception):  # the client may be gone already
                code = self.upstream.close_code or 1000
                await self.send({"type": "websocket.close", "code": code if 1000 <= code < 5000 else 1011})
            for response_id, started in self.live.items():  # cut before their end: usage unknown
                self._record(response_id, started, Usage(), None, 499, "cut")

    async def _settle(self) -> None:
        """The session ends (the client left, or its time is up) with responses under way: each
        is cancelled upstream, and its ``response.done``, which says what it used, is awaited a few
        seconds, so that it is charged rather than recorded as cut with nothing."""
        import aiohttp

        for response_id in list(self.live):
            cancel = orjson.dumps({"type": "response.cancel", "response_id": response_id})
            await self.upstream.send_frame(cancel, aiohttp.WSMsgType.TEXT)
        async with asyncio.timeout(SETTLE_SECONDS):
            while self.live:
                message = await self.upstream.receive()
                if message.type is not aiohttp.WSMsgType.TEXT:
                    return
                data = text_frame(message.data)
                if b'"response.done"' in data:
                    await self._lifecycle(data)

    async def _from_client(self) -> None:
        import aiohttp

        while True:
            message = await self.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is not None:
                frame = text.encode()
                if b"response.create" in frame and not await self._may_respond(frame):
                    continue
                await self.upstream.send_frame(frame, aiohttp.WSMsgType.TEXT)
            elif message.get("bytes") is not None:
                await self.upstream.send_frame(message["bytes"], aiohttp.WSMsgType.BINARY)

    async def _may_respond(self, frame: bytes) -> bool:
        """A ``response.create`` goes on only while the key's limits allow one more response."""
        try:
            event = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return True  # not JSON: the upstream says what is wrong with it
        if not isinstance(event, dict) or event.get("type") != "response.create":
            return True
        try:
            await self.realtime.admission.limit(self.call.key)
        except ModelwireError as err:
            await self._error_event(err, event.get("event_id"))
            return False
        self.asked += 1
        return True

    async def _from_upstream(self) -> None:
        import aiohttp

        while True:
            message = await self.upstream.receive()
            if message.type is aiohttp.WSMsgType.TEXT:
                data = text_frame(message.data)
                if any(marker in data for marker in _LIFECYCLE):
                    await self._lifecycle(data)
                await self.send({"type": "websocket.send", "text": data.decode("utf-8", "replace")})
            elif message.type is aiohttp.WSMsgType.BINARY:
                await self.send({"type": "websocket.send", "bytes": bytes(message.data)})
            else:
                return  # closed, closing, or broken: the session ends

    async def _lifecycle(self, data: bytes) -> None:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        kind, response = event.get("type"), event.get("response")
        if kind == "error":
            # Perhaps a refused response.create: count it as answered, so that a response the
            # server starts later is checked (fail closed: at worst a response is counted twice).
            self.asked = max(0, self.asked - 1)
            return
        if not isinstance(response, dict) or not isinstance(response.get("id"), str):
            return
        if kind == "response.created":
            await self._created(response["id"])
        elif kind == "response.done":
            self._done(response)

    async def _created(self, response_id: str) -> None:
        import aiohttp

        self.live[response_id] = time.monotonic()
        self.realtime.metrics.request_started(REALTIME.dialect)
        if self.asked:
            self.asked -= 1
            return
        try:  # started by the server itself: checked now, cancelled when the key is over its limits
            await self.realtime.admission.limit(self.call.key)
        except ModelwireError as err:
            cancel = orjson.dumps({"type": "response.cancel", "response_id": response_id})
            with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                await self.upstream.send_frame(cancel, aiohttp.WSMsgType.TEXT)
            await self._error_event(err, None)

    def _done(self, response: dict[str, Any]) -> None:
        """One usage row per ``response.done``: its tokens, priced audio and text apart."""
        started = self.live.pop(response["id"], None)
        if started is None:
            started = time.monotonic()
            self.realtime.metrics.request_started(REALTIME.dialect)
        price = self.realtime.accounting.catalog.profile(self.outcome.target.model).price
        usage, cost = realtime_usage(response.get("usage"), price)
        state = response.get("status")
        ok = state in ("completed", "incomplete", "cancelled")
        self._record(
            response["id"], started, usage, cost, 200 if ok else 502, None if ok else str(state)[:64]
        )

    def _record(
        self,
        response_id: str,
        started: float,
        usage: Usage,
        cost: float | None,
        status: int,
        error: str | None,
    ) -> None:
        """A response's usage row (its request id is the response's id) and its metrics."""
        outcome, socket_call = self.outcome, self.call
        call = Call(response_id, REALTIME, started, socket_call.client)
        call.key, call.model, call.stream, call.error = socket_call.key, socket_call.model, True, error
        call.served_by(outcome.target, outcome.backend)
        self.realtime.accounting.account(call, usage, status, cost)
        self.realtime.metrics.request_finished(
            REALTIME.dialect, call.model, outcome.backend.name, status, time.monotonic() - started, None
        )

    async def _error_event(self, err: ModelwireError, event_id: Any) -> None:
        _, doc = REALTIME.render_error(err)
        error = dict(doc["error"])
        if isinstance(event_id, str):
            error["event_id"] = event_id
        event = {"type": "error", "event_id": f"event_mw{uuid.uuid4().hex[:20]}", "error": error}
        await self.send({"type": "websocket.send", "text": orjson.dumps(event).decode()})


def _socket_id() -> str:
    return f"rt_{uuid.uuid4().hex[:24]}"


def _query(scope: Scope) -> dict[str, str]:
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))


def _with_subprotocol_key(scope: Scope) -> Scope:
    """A browser cannot set headers on a WebSocket: its key comes as a subprotocol instead."""
    key = key_from_subprotocols(scope.get("subprotocols") or ())
    if key is None or any(name == b"authorization" for name, _ in scope["headers"]):
        return scope
    return {**scope, "headers": [*scope["headers"], (b"authorization", b"Bearer " + key.encode("latin-1"))]}


def _handshake_error(err: UpstreamUnavailableError) -> ModelwireError:
    """A refused upgrade classified by its HTTP status, so failover treats it as it would an HTTP
    answer: 429 and 5xx move on, 401/403 cool the key, other 4xx are the client's."""
    import aiohttp

    cause = err.__cause__
    if isinstance(cause, aiohttp.WSServerHandshakeError) and cause.status >= 400:
        return from_response(cause.status, b"", content_type="")
    return err
