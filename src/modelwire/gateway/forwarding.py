"""The fast path: the client's dialect is the upstream's wire, so the client's own body goes up
with only what the route changes (:mod:`.passthrough`), and the answer comes back as the upstream's
bytes, a stream passing through the wire's tap, which reads usage on the way."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson

from ..dialects.stream import events_from_response
from ..errors import ModelwireError, ProtocolError
from ..providers.transport import Reply, Transport
from ..providers.transport import call as upstream_call
from ..types import Usage
from . import http, lineage, passthrough
from .accounting import Accounting
from .call import Call
from .http import Send
from .routing import Target
from .upstream import Backend, Outcome
from .upstream_sockets import SocketReply, SocketTurn, SocketUnavailable

log = logging.getLogger("modelwire.gateway")


@dataclass(slots=True)
class Passthrough:
    """A forwarded upstream answer: a finished body, or an open stream."""

    reply: Reply
    payload: bytes = b""
    doc: dict[str, Any] | None = None
    key_index: int = 0  # which of the backend's keys asked (only its project sees what it created)
    dropped: ClassVar[tuple[str, ...]] = ()  # a forwarded body loses no parameter


@dataclass(eq=False)
class Forwarder:
    transport: Transport
    accounting: Accounting

    def takes(self, call: Call, backend: Backend) -> bool:
        """Whether ``call`` can go to ``backend`` as it came."""
        return backend.passthrough and backend.wire.name == call.surface.dialect

    async def attempt(self, call: Call, target: Target, backend: Backend, index: int) -> Passthrough:
        """The client's body, edited as the route says, sent; the answer whole, or its stream open.
        A turn from a client's WebSocket goes over the upstream's own socket when it has one."""
        turn = call.socket
        if turn is not None and backend.host.offers_websocket and turn.upstream.available(backend.name):
            with contextlib.suppress(SocketUnavailable):
                return Passthrough(await self._over_socket(call, turn, target, backend, index))
        body = passthrough.rewrite(
            call.body, target, backend.wire, backend.options, stream=call.stream, items=call.items
        )
        reply = await self._send(call, backend, index, backend.url(target.model, call.stream), body)
        if call.stream:
            return Passthrough(reply, key_index=index)
        payload = await reply.read()
        return Passthrough(reply, payload, passthrough.json_object(payload), index)

    async def _over_socket(
        self, call: Call, turn: SocketTurn, target: Target, backend: Backend, index: int
    ) -> SocketReply:
        """Only the new items when the upstream socket made the response this turn continues;
        otherwise (and when the socket is reopened) the whole conversation."""
        where = (backend.name, turn.lane)
        continues = turn.upstream.knows(*where, call.body.get("previous_response_id"))

        def frame(items: list[dict[str, Any]] | None) -> bytes:
            body = passthrough.rewrite(
                call.body, target, backend.wire, backend.options, stream=True, items=items
            )
            body.pop("stream", None)
            payload = orjson.dumps({"type": "response.create", **body})
            if self.accounting.capture is not None:
                self.accounting.record("upstream_request", call, payload, url=url, backend=backend.name)
            return payload

        url = backend.host.websocket_url
        headers = backend.headers(index, call.headers)
        headers["X-Client-Request-Id"] = call.request_id
        first = frame(None if continues else call.items)
        replay = lambda: frame(call.items)  # noqa: E731
        return await turn.upstream.send(where, url, headers, first, replay, backend.config.timeout)

    async def count(self, call: Call, target: Target, backend: Backend, index: int) -> bytes:
        """A token count request forwarded to the upstream's own counter; its answer as it came."""
        wire = backend.wire
        assert wire.count_endpoint is not None
        body = passthrough.rewrite(call.body, target, wire, backend.options, stream=False)
        inner = body.get("generateContentRequest")
        if isinstance(inner, dict):  # Gemini wants the model inside it, named as a resource
            body["generateContentRequest"] = {**inner, "model": f"models/{target.model}"}
        url = backend.host.url(wire.count_endpoint, target.model.removeprefix("models/"))
        payload = await (await self._send(call, backend, index, url, body)).read()
        passthrough.json_object(payload)  # garbage is the upstream's fault, said as such
        return payload

    async def _send(self, call: Call, backend: Backend, index: int, url: str, body: dict[str, Any]) -> Reply:
        headers = backend.headers(index, call.headers)
        headers["X-Client-Request-Id"] = call.request_id
        if call.stream:
            headers["Accept"] = "text/event-stream"
        payload = orjson.dumps(body)
        seen = None
        if self.accounting.capture is not None:
            record = self.accounting.record
            record("upstream_request", call, payload, url=url, headers=headers, backend=backend.name)

            def seen(raw: bytes, _: Mapping[str, str]) -> None:
                record("upstream_response", call, raw, backend=backend.name)

        timeout = backend.config.timeout
        return await upstream_call(
            self.transport, "POST", url, headers, payload, read_timeout=timeout, on_error=seen
        )

    async def finish(self, call: Call, outcome: Outcome[Any]) -> tuple[int, bytes, Usage | None]:
        """A whole forwarded answer: its status, its bytes, its usage."""
        value = outcome.value
        self.accounting.record("upstream_response", call, value.payload)
        previous = lineage.named(call)
        if previous is not None and value.doc is not None:
            value.payload = orjson.dumps(lineage.mend(value.doc, previous))
        await self.accounting.remember(call, value.doc, outcome.backend, translated=False)
        usage = outcome.backend.wire.usage_of(value.doc) if value.doc is not None else None
        return value.reply.status, value.payload, usage

    async def pump(
        self, call: Call, outcome: Outcome[Any], send: Send, watch: http.ClientWatch
    ) -> tuple[Usage | None, int, bytes]:
        """The upstream's stream to the client; its usage, the status to record, and its last bytes,
        which go with the end of the response (one write less): once the stream's last event has been
        read, what is left is its close, held until the upstream's own end."""
        backend, reply = outcome.backend, outcome.value.reply
        if "json" in reply.headers.get("content-type", ""):  # the upstream ignored the stream flag
            return await self._pump_whole(call, outcome)
        tap = backend.wire.tap(
            call.body, filter_chunks=backend.profile.filter_chunks, json_array=call.surface.json_array
        )
        call.failing_end = tap.fail
        previous = lineage.named(call)
        mender = lineage.StreamMender(previous) if previous is not None else None
        # A stored response must be in the store before the client can name it: hold the final event.
        hold = self.accounting.keeps(call, backend, translated=False)
        capture = self.accounting.capture is not None
        broken = False
        tail = b""
        try:
            async for chunk in reply.chunks():
                out = tap.feed(chunk)
                if capture:
                    self.accounting.record("upstream_chunk", call, chunk)
                if out:
                    if mender is not None:
                        out = mender.feed(out)
                        if tap.response is not None:
                            lineage.mend(tap.response, mender.previous)
                    if hold and tap.response is not None:
                        hold = False
                        await self.accounting.remember(call, tap.response, backend, translated=False)
                    if tap.closed:
                        self.accounting.emitted(call, out)
                        tail += out
                    else:
                        await self.accounting.chunk(call, send, out)
                if not tap.finished and watch.gone():  # past its end the stream needs no watch
                    reply.close()
                    return tap.usage, 499, b""
        except ModelwireError as err:
            broken = True
            log.debug("upstream stream broke: %s", err)
        if (broken or not tap.finished) and not tap.errored:
            cut = ProtocolError("the upstream stream ended before the answer finished", status=502)
            call.error = "upstream_cut"
            return tap.usage, 502, tail + tap.fail(cut)
        return tap.usage, 502 if tap.errored else 200, tail + tap.end()

    async def _pump_whole(self, call: Call, outcome: Outcome[Any]) -> tuple[Usage | None, int, bytes]:
        doc = passthrough.json_object(await outcome.value.reply.read())
        response = outcome.backend.wire.decode_response(doc)
        response.model = call.model
        renderer = call.surface.stream_renderer(call.echoed(), call.body)
        body = b"".join(renderer.feed(e) for e in events_from_response(response)) + renderer.end()
        return response.usage, 200, body
