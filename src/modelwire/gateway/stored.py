"""``/v1/responses/{id}[/input_items|/cancel]``: stored responses, from the gateway's own background
runs and store, or else from the upstreams that store what they served themselves.

A key sees only the responses it made: another key's is answered as if it did not exist (and is
then looked for upstream, where it is not either). ``GET …?stream=true&starting_after=N`` follows a
background response's events where they are kept (see :mod:`.background`); an upstream's own
stream passes through as it comes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from ..errors import InvalidRequestError, ModelwireError, NotFoundError
from ..providers.transport import Reply, Transport
from ..providers.transport import call as upstream_call
from . import http
from .accounting import Accounting
from .admission import Admission
from .background import Background, Run
from .call import Call
from .chains import owned
from .http import Receive, Scope, Send
from .state import State
from .store import StoredResponse
from .upstream import Backend


@dataclass(frozen=True, slots=True)
class _Ask:
    """What a client asks of one stored response."""

    response_id: str
    method: str
    tail: str  # "", "input_items" or "cancel"
    path: str
    stream: bool  # GET ?stream=true
    after: int  # ?starting_after=N (-1: from the start)


@dataclass(eq=False)
class StoredResponses:
    backends: dict[str, Backend]
    transport: Transport
    state: State
    admission: Admission
    accounting: Accounting
    background: Background

    async def serve(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        rest = scope["path"].removeprefix("/v1").removeprefix("/responses/")
        await self.admission.authenticate(call, scope)
        ask = _ask(scope, rest)
        run = self.background.local(ask.response_id, call)
        if run is not None and ask.tail != "input_items":
            await self._run(call, run, ask, receive, send)
            return
        found = await self.state.chains.get(ask.response_id)
        if found is None or not owned(found, call.key):
            await self._upstream(call, scope, rest, ask, receive, send)
            return
        if ask.stream and ask.method == "GET" and not ask.tail:
            await self._replay(call, found, ask, send)
            return
        await self.accounting.answer(call, send, await self._document(found, ask))

    async def _run(self, call: Call, run: Run, ask: _Ask, receive: Receive, send: Send) -> None:
        """A background response running (or lately run) on this replica."""
        if ask.method == "GET" and not ask.tail:
            if ask.stream:
                await self.background.follow(call, run, ask.after, receive, send)
                return
            doc = run.doc
        elif ask.method == "POST" and ask.tail == "cancel":
            doc = await self.background.cancel(run)
        elif ask.method == "DELETE" and not ask.tail:
            await self.background.delete(run)
            await self.state.chains.delete(run.id)
            doc = _deleted(run.id)
        else:
            raise _no_route(ask)
        await self.accounting.answer(call, send, doc)

    async def _replay(self, call: Call, found: StoredResponse, ask: _Ask, send: Send) -> None:
        events = self.background.replay(found.response, ask.after)
        call.responding = True
        await http.start_stream(send, [(b"x-request-id", call.request_id.encode())])
        await http.stream_chunk(send, events)
        await http.end_stream(send)

    async def _document(self, found: StoredResponse, ask: _Ask) -> dict[str, Any]:
        if ask.method == "DELETE" and not ask.tail:
            await self.state.chains.delete(found.id)
            return _deleted(found.id)
        if ask.method == "GET" and ask.tail == "input_items":
            items = [{"id": i.get("id") or f"item_{n}", **i} for n, i in enumerate(found.input_items)]
            first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
            return {"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": False}
        if ask.method == "GET" and not ask.tail:
            return found.response
        if ask.method == "POST" and ask.tail == "cancel":
            return await self.background.cancel_elsewhere(found)
        raise _no_route(ask)

    async def _upstream(
        self, call: Call, scope: Scope, rest: str, ask: _Ask, receive: Receive, send: Send
    ) -> None:
        """The answer of the upstream that stored the response, a stream passing through as it comes."""
        reply = await self._ask_upstreams(scope, rest)
        headers = [(b"x-request-id", call.request_id.encode())]
        if not (ask.stream and "event-stream" in reply.headers.get("content-type", "")):
            await self.accounting.respond(call, send, reply.status, await reply.read(), headers)
            return
        call.responding = True
        await http.start_stream(send, headers)
        gone = asyncio.ensure_future(http.disconnected(receive))
        try:
            async for chunk in reply.chunks():
                await http.stream_chunk(send, chunk)
                if gone.done():
                    reply.close()
                    return
        finally:
            gone.cancel()
        await http.end_stream(send)

    async def _ask_upstreams(self, scope: Scope, rest: str) -> Reply:
        """The first storing upstream's answer about a response it stored (GET, DELETE, cancel)."""
        query = scope.get("query_string", b"").decode("latin-1")
        for backend in self.backends.values():
            if not (backend.chains and backend.passthrough):
                continue
            url = backend.host.url("response", suffix=rest)
            if query:
                url += ("&" if "?" in url else "?") + query
            try:
                return await upstream_call(
                    self.transport,
                    scope["method"],
                    url,
                    backend.headers(0),
                    None,
                    read_timeout=backend.config.timeout,
                )
            except ModelwireError as err:
                if not (isinstance(err, NotFoundError) or err.retryable):
                    raise
        raise NotFoundError(
            f"No response found with id '{rest.partition('/')[0]}'.",
            code="response_not_found",
            param="response_id",
        )


def _ask(scope: Scope, rest: str) -> _Ask:
    response_id, _, tail = rest.partition("/")
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    stream = query.get("stream", ["false"])[-1].lower() == "true"
    after = query.get("starting_after", ["-1"])[-1]
    try:
        starting_after = int(after)
    except ValueError:
        raise InvalidRequestError(
            f"starting_after: expected an integer (a sequence number), got {after!r}",
            code="invalid_type",
            param="starting_after",
        ) from None
    if starting_after < -1:
        raise InvalidRequestError(
            "starting_after: expected a sequence number (0 or more)",
            code="invalid_value",
            param="starting_after",
        )
    return _Ask(response_id, scope["method"], tail, scope["path"], stream, starting_after)


def _deleted(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response", "deleted": True}


def _no_route(ask: _Ask) -> NotFoundError:
    return NotFoundError(f"no route for {ask.method} {ask.path}", code="unknown_url")
