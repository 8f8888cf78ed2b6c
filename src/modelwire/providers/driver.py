"""What every driver shares, and the driver for wires with no host quirks (Anthropic, Gemini).

:class:`WireDriver` takes a neutral request to any wire in :mod:`modelwire.wires` the plain way:
repair broken tool sequences, encode, send (no retries of its own: the gateway's failover decides
those), decode. The OpenAI driver (:mod:`.openai`) adds what OpenAI hosts need on top.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import orjson

from .._version import __version__
from ..dialects.sse import SSEParser
from ..dialects.stream import events_from_response
from ..errors import InvalidRequestError, ModelwireError, ProtocolError
from ..observe import Observer, Tap
from ..types import Message, Request, Response, StreamError, StreamEvent, Text, copy_request
from ..wires import StreamDecoder, Wire
from .catalog import Catalog, adapt
from .hosts import Host
from .repair import repair
from .transport import Body, Reply, Transport, call


class WireDriver:
    """A driver for one host speaking one wire."""

    def __init__(
        self,
        *,
        host: Host,
        wire: Wire,
        api_key: str | None,
        transport: Transport,
        catalog: Catalog,
        timeout: float = 600.0,
        headers: Mapping[str, str] | None = None,
        tap: Tap | None = None,
    ) -> None:
        self.host, self.wire, self.transport, self.catalog, self.timeout = (
            host,
            wire,
            transport,
            catalog,
            timeout,
        )
        self.observer = Observer(None, tap=tap)
        self._headers = {
            "Content-Type": "application/json",
            "User-Agent": f"modelwire/{__version__}",
            **host.auth_headers(api_key),
            **(headers or {}),
        }

    async def complete(self, request: Request | None = None, /, **settings: Any) -> Response:
        req = self._plan(request, settings, stream=False)
        reply = await self._send(req)
        response = self.wire.decode_response(await read_json(reply, self.observer))
        response.usage.cost = self.catalog.cost(req.model, response.usage)
        return response

    async def events(self, request: Request | None = None, /, **settings: Any) -> AsyncIterator[StreamEvent]:
        """The answer as neutral events; a failure once it started is a :class:`StreamError`."""
        req = self._plan(request, settings, stream=True)
        reply = await self._send(req)
        if "json" in reply.headers.get("content-type", ""):  # the server ignored the stream flag
            for event in events_from_response(self.wire.decode_response(await read_json(reply))):
                yield event
            return
        async for event in read_events(reply, self.wire.stream_decoder(), self.observer):
            yield event

    async def stream(self, request: Request | None = None, /, **settings: Any) -> AsyncIterator[StreamEvent]:
        async for event in raising(self.events(request, **settings)):
            yield event

    def _plan(self, request: Request | None, settings: dict[str, Any], *, stream: bool) -> Request:
        req = build_request(request, settings, stream=stream)
        req.messages, _ = repair(req.messages)
        adapt(req, self.catalog.profile(req.model))
        return req

    async def _send(self, req: Request) -> Reply:
        endpoint = self.wire.stream_endpoint if req.stream else self.wire.endpoint
        url = self.host.url(endpoint, req.model.removeprefix("models/"))
        body = orjson.dumps(self.wire.encode(req, self.host.profile.options))
        headers = dict(self._headers)
        if req.stream:
            headers["Accept"] = "text/event-stream"
        self.observer.payload("request", url, headers, body)
        return await observed_call(self.transport, self.observer, "POST", url, headers, body, self.timeout)


def observed_call(
    transport: Transport,
    observer: Observer,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: Body,
    read_timeout: float,
) -> Coroutine[Any, Any, Reply]:
    """:func:`~.transport.call`, an error's body shown to the driver's observer (its capture tap).
    (The call itself is returned to await: a coroutine of its own would only relay it.)"""
    if not observer.tapped:
        return call(transport, method, url, headers, body, read_timeout=read_timeout)

    def seen(payload: bytes, reply_headers: Mapping[str, str]) -> None:
        observer.payload("error", url, dict(reply_headers), payload)

    return call(transport, method, url, headers, body, read_timeout=read_timeout, on_error=seen)


async def raising(events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """The events, a failure after the stream started raised as its typed error."""
    async for event in events:
        if isinstance(event, StreamError):
            raise event.error
        yield event


_REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(Request))


def build_request(request: Request | None, settings: dict[str, Any], *, stream: bool) -> Request:
    """A fresh request to plan with (the caller's is never changed): ``request`` with ``settings``."""
    if request is not None:
        req = copy_request(request)  # what dataclasses.replace would do, at a tenth of the cost
        req.messages = list(request.messages)
        for name, value in settings.items():
            if name not in _REQUEST_FIELDS:  # as Request(...) would refuse it
                raise TypeError(f"Request.__init__() got an unexpected keyword argument {name!r}")
            setattr(req, name, value)
        req.stream = stream
        return req
    settings = {**settings, "stream": stream}
    messages = settings.pop("messages", [])
    if isinstance(messages, str):
        messages = [Message(role="user", content=[Text(text=messages)])]
    if "model" not in settings:
        raise InvalidRequestError("a model is required", param="model")
    return Request(messages=list(messages), **settings)


async def read_events(reply: Reply, decoder: StreamDecoder, observer: Observer) -> AsyncIterator[StreamEvent]:
    parser = SSEParser()
    try:
        async for chunk in reply.chunks():
            for sse in parser.feed(chunk):
                observer.payload("stream", "", {}, sse.data)
                for event in decoder.feed(sse.data):
                    yield event
        for sse in parser.flush():
            for event in decoder.feed(sse.data):
                yield event
        for event in decoder.end():
            yield event
    except ModelwireError as err:
        yield StreamError(error=err)


async def read_json(reply: Reply, observer: Observer | None = None) -> dict[str, Any]:
    payload = await reply.read()
    if observer is not None and observer.tapped:
        observer.payload("response", "", dict(reply.headers), payload)
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        kind = reply.headers.get("content-type", "unknown content")
        raise ProtocolError(f"upstream answered {kind} that is not JSON: {payload[:120]!r}") from None
    if not isinstance(data, dict):
        raise ProtocolError("upstream answered JSON that is not an object")
    return data
