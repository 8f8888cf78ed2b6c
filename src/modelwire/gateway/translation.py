"""The translated path: the client's dialect differs from the upstream's wire, so the request goes
through the neutral model, a driver speaks the upstream's wire, and the answer (or its events) is
rendered back in the client's dialect."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..providers.catalog import Catalog, unsupported_settings
from ..providers.openai import OpenAI
from ..providers.transport import Transport
from ..types import Finish, Request, Response, Start, StreamError, StreamEvent, Usage
from . import http
from .accounting import Accounting, safe
from .call import Call
from .chains import input_items
from .config import Config
from .fetch import inline_media
from .http import Send
from .routing import Target
from .upstream import Backend, Driver, Outcome


@dataclass(slots=True)
class Translated:
    dropped: list[str]
    response: Response | None = None
    opening: list[StreamEvent] = field(default_factory=list)  # events read before committing
    events: AsyncIterator[StreamEvent] | None = None


@dataclass(eq=False)
class Translator:
    config: Config
    catalog: Catalog
    transport: Transport
    accounting: Accounting

    async def attempt(self, call: Call, target: Target, backend: Backend, index: int) -> Translated:
        """One upstream's answer: whole, or its stream opened up to the first event that says
        something (until then, a failure can still fail over)."""
        req = call.decoded()
        if backend.config.inline_media:
            await inline_media(req, self.transport, allow_private=self.config.server.allow_private_urls)
        driver = backend.driver(index)
        overrides = {"model": target.model}
        overrides.update(target.params)
        dropped = unsupported_settings(req, self.catalog.profile(target.model), backend.wire)
        if not call.stream:
            return Translated(dropped, response=await driver.complete(req, **overrides))
        events = self._events(call, backend, driver, req, overrides)
        opening: list[StreamEvent] = []
        async for event in events:
            if isinstance(event, StreamError):
                await events.aclose()  # type: ignore[attr-defined]
                raise event.error  # nothing reached the client yet: failover may try elsewhere
            opening.append(event)
            if not isinstance(event, Start):
                break
        return Translated(dropped, opening=opening, events=events)

    @staticmethod
    def _events(
        call: Call, backend: Backend, driver: Driver, req: Request, overrides: dict[str, Any]
    ) -> AsyncIterator[StreamEvent]:
        """The driver's events; a turn from a client's socket to a host that offers WebSocket mode
        goes on over a socket of its own, kept for the conversation (SSE if the host will not)."""
        turn = call.socket
        if turn is None or not backend.host.offers_websocket or not isinstance(driver, OpenAI):
            return driver.events(req, **overrides)
        session = turn.upstream.conversation((backend.name, turn.lane), driver)
        return session.events(_continuing(req, call), transport="auto", **overrides)

    async def finish(self, call: Call, outcome: Outcome[Any]) -> tuple[int, bytes, Usage | None]:
        """A whole translated answer: its status, its bytes, its usage."""
        response = outcome.value.response
        assert response is not None
        # The client's own model name: clients compare it with what they asked for (Claude Code
        # drops thinking blocks from turns "by another model"); x-modelwire-model names the real one.
        response.model = call.model
        doc = call.surface.render_response(response, call.echoed())
        await self.accounting.remember(call, doc, outcome.backend, translated=True)
        return 200, orjson.dumps(doc), response.usage

    async def pump(
        self, call: Call, outcome: Outcome[Any], send: Send, watch: http.ClientWatch
    ) -> tuple[Usage | None, int, bytes]:
        """The neutral events rendered to the client; their usage, the status to record, and the
        stream's close, which goes with the end of the response."""
        events = outcome.value.events
        assert events is not None
        renderer = call.surface.stream_renderer(call.echoed(), call.body)
        call.failing_end = lambda err: renderer.feed(StreamError(error=err)) + renderer.end()
        hold = self.accounting.keeps(call, outcome.backend, translated=True)
        usage: Usage | None = None
        status = 200
        try:
            async for event in _resume(outcome.value.opening, events):
                if isinstance(event, Start):
                    event = Start(id=event.id, model=call.model, created=event.created)
                elif isinstance(event, Finish):
                    usage = event.usage
                elif isinstance(event, StreamError):
                    event = StreamError(error=safe(event.error))
                    status = getattr(event.error, "status", 502)
                out = renderer.feed(event)
                final = renderer.response if hold else None
                if final is not None:  # stored before the client sees the end of it
                    hold = False
                    await self.accounting.remember(call, final, outcome.backend, translated=True)
                if out:
                    await self.accounting.chunk(call, send, out)
                if watch.gone():
                    return usage, 499, b""
        finally:
            await events.aclose()
        return usage, status, renderer.end()


def _continuing(req: Request, call: Call) -> Request:
    """The expanded transcript with its last answer named by the id the client chained from: the
    driver's socket that made that answer then sends only what follows it. (Not when the client's
    new input holds answers of its own: the last one would not be that response.)"""
    previous = call.body.get("previous_response_id")
    new = input_items(call.body)
    if not isinstance(previous, str) or call.items is None or any(i.get("role") == "assistant" for i in new):
        return req
    messages = list(req.messages)
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].role == "assistant":
            messages[index] = dataclasses.replace(messages[index], id=previous)
            return dataclasses.replace(req, messages=messages)
    return req


async def _resume(opening: list[StreamEvent], rest: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """The events read before the stream was committed, then the rest of them."""
    for event in opening:
        yield event
    async for event in rest:
        yield event
