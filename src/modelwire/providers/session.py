"""Sessions: one conversation on one WebSocket, for agents.

A tool loop that calls :meth:`OpenAI.complete` already gets a pooled socket that remembers its
conversation, but another call of the same client may take that socket in between. A session
keeps one socket for itself and runs its turns one at a time, so every follow-up chains onto the
previous answer and sends only its new items. The transcript stays the caller's: each turn passes
the messages so far, exactly as with the client, and any turn may also go over SSE (a host without
WebSocket, ``transport="sse"``, or a fallback) without the conversation noticing.

::

    async with client.session(model="gpt-5.5", tools=tools) as s:
        reply = await s.complete(messages=messages)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..types import Request, Response, StreamEvent
from .driver import raising
from .websocket import Pinned

if TYPE_CHECKING:
    from .openai import OpenAI


class Session:
    """Turns of one conversation on one socket. ``defaults`` are settings each call takes unless it
    names its own (they apply to keyword calls; a :class:`Request` passed whole is sent as it is)."""

    def __init__(
        self, client: OpenAI, *, warmup: bool = False, defaults: dict[str, Any] | None = None
    ) -> None:
        self.client = client
        self.defaults = dict(defaults or {})
        self._warmup = warmup
        self._socket = Pinned()
        self._turn = asyncio.Lock()  # a connection carries one response at a time

    async def complete(self, request: Request | None = None, /, **settings: Any) -> Response:
        async with self._turn:
            return await self.client._complete_on(self._socket, request, self._settings(request, settings))

    async def stream(self, request: Request | None = None, /, **settings: Any) -> AsyncIterator[StreamEvent]:
        async for event in raising(self.events(request, **settings)):
            yield event

    async def events(self, request: Request | None = None, /, **settings: Any) -> AsyncIterator[StreamEvent]:
        """Like :meth:`stream`, but a failure after the stream started is a :class:`StreamError`
        event (as :meth:`OpenAI.events` says it), for a caller that renders it (a gateway)."""
        async with self._turn:
            events = self.client._events_on(self._socket, request, self._settings(request, settings))
            async for event in events:
                yield event

    async def warmup(self, request: Request | None = None, /, **settings: Any) -> bool:
        """Open the session's socket and prime it (``generate: false``) with the instructions and
        tools of ``settings``, within a short timeout. Whether it worked; a failure is not raised."""
        async with self._turn:
            return await self.client._warmup_on(self._socket, request, self._settings(request, settings))

    async def aclose(self) -> None:
        # Not behind the turn lock: a stream abandoned but still referenced would hold it forever.
        await self._socket.aclose()

    async def __aenter__(self) -> Session:
        if self._warmup:
            await self.warmup()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _settings(self, request: Request | None, settings: dict[str, Any]) -> dict[str, Any]:
        return dict(settings) if request is not None else {**self.defaults, **settings}
