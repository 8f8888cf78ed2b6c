"""A generation request from admission to its last byte: the failover search over the route's
targets, each attempt forwarded or translated, then the answer whole or streamed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ContextLengthError, ModelwireError, NotFoundError, PreviousResponseNotFound
from ..providers.catalog import Catalog
from ..tokens import count_request_tokens
from . import http
from .accounting import Accounting
from .admission import Admission
from .call import Call
from .config import Config
from .forwarding import Forwarder, Passthrough
from .http import Receive, Scope, Send
from .routing import Route, Target
from .surfaces import ANTHROPIC
from .translation import Translated, Translator
from .upstream import Backend, Failover, Outcome
from .upstream_runs import UpstreamRuns
from .upstream_sockets import SOCKET_TURN

if TYPE_CHECKING:
    from .background import Background


class LateAnswers:
    """Streams still waiting for their first answer, each told when it has waited ``after``
    seconds. One timer, ticking every eighth of ``after`` while any stream waits, serves them all,
    so a stream is told between ``after`` and ``after`` plus a tick; a timer per stream cost about
    2% of a stream's CPU (uvloop makes a libuv timer for each), for the rare stream that waits, and
    a stream that is answered in time pays for a dict entry made and removed."""

    def __init__(self, after: float) -> None:
        self._after = after
        self._tick = after / 8
        self._waiting: dict[Call, Callable[[], None]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, call: Call, late: Callable[[], None]) -> None:
        self._waiting[call] = late
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._tick, self._told)

    def discard(self, call: Call) -> None:
        self._waiting.pop(call, None)

    def _told(self) -> None:
        waited = time.monotonic() - self._after
        for call in [c for c in self._waiting if c.started <= waited]:
            self._waiting.pop(call)()
        self._timer = asyncio.get_running_loop().call_later(self._tick, self._told) if self._waiting else None


@dataclass(eq=False)
class Generation:
    config: Config
    catalog: Catalog
    failover: Failover
    admission: Admission
    accounting: Accounting
    forwarder: Forwarder
    translator: Translator
    upstream_runs: UpstreamRuns
    # Runs background responses through serve(), so it is set once both exist.
    background: Background | None = None
    late: LateAnswers = field(init=False)

    def __post_init__(self) -> None:
        self.late = LateAnswers(self.config.server.keepalive_seconds)

    async def generate(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        from_path: tuple[str, bool] | None = None,
    ) -> None:
        call.socket = scope.get(SOCKET_TURN)
        try:
            route = await self.admission.admit(call, scope, receive, from_path)
            if call.surface.chains:
                await self.admission.expand_chain(call)
                if self.background is not None and await self.background.detach(call, route, receive, send):
                    return
        except ModelwireError as err:
            await self._failed(call, send, err)
            return
        await self.serve(call, route, receive, send)

    async def serve(self, call: Call, route: Route, receive: Receive, send: Send) -> None:
        """An admitted request's answer, or its error in the client's dialect; accounted either way."""
        try:
            if call.stream:
                await self._stream(call, route, receive, send)
            else:
                await self._complete(call, route, send)
        except ModelwireError as err:
            await self._failed(call, send, err)

    async def _failed(self, call: Call, send: Send, err: ModelwireError) -> None:
        if isinstance(err, ContextLengthError) and call.surface is ANTHROPIC:
            err = await self._too_long(call, err)
        await self.accounting.failed(call, send, err)

    async def _attempt(
        self, call: Call, target: Target, backend: Backend, index: int
    ) -> Passthrough | Translated:
        if call.items is None and call.body.get("previous_response_id") and not backend.chains:
            # Neither we nor this upstream know the chain: forwarding the id would lose its context.
            raise PreviousResponseNotFound(
                f"Previous response with id '{call.body['previous_response_id']}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        if call.missing_item is not None and not backend.chains:
            raise NotFoundError(
                f"Item with id '{call.missing_item}' not found. Items are not persisted when `store` "
                "is set to false. Try again with `store` set to true, or remove this item from your input.",
                type="invalid_request_error",
                param="input",
            )
        if self.forwarder.takes(call, backend):
            return await self.forwarder.attempt(call, target, backend, index)
        return await self.translator.attempt(call, target, backend, index)

    async def _complete(self, call: Call, route: Route, send: Send) -> None:
        outcome = await self.failover.run(route.order(), lambda t, b, i: self._attempt(call, t, b, i))
        call.served_by(outcome.target, outcome.backend, outcome.hops)
        headers = self.accounting.served_headers(call, outcome)
        if call.trace is not None:
            call.trace.answered(outcome)
        if isinstance(outcome.value, Passthrough):
            status, payload, usage = await self.forwarder.finish(call, outcome)
        else:
            status, payload, usage = await self.translator.finish(call, outcome)
        await self.accounting.respond(call, send, status, payload, headers)
        self.accounting.record("client_response", call, payload)
        call.ttft = time.monotonic() - call.started
        value = outcome.value
        if isinstance(value, Passthrough) and self.upstream_runs.settle_later(
            call, outcome.backend, value.key_index, value.doc
        ):
            return  # running upstream in the background: accounted when it ends
        self.accounting.account(call, usage, status)

    async def _stream(self, call: Call, route: Route, receive: Receive, send: Send) -> None:
        # A failure is said by generate: as an error response, or in the stream once it is open.
        outcome = await self._first_answer(call, route, send)
        call.served_by(outcome.target, outcome.backend, outcome.hops)
        if call.trace is not None:
            call.trace.streaming()
        if not call.responding:
            call.responding = True
            headers = self.accounting.served_headers(call, outcome)
            await http.start_stream(send, headers, call.surface.stream_headers)
        watch = http.ClientWatch(receive)
        try:
            if isinstance(outcome.value, Passthrough):
                usage, status, last = await self.forwarder.pump(call, outcome, send, watch)
            else:
                usage, status, last = await self.translator.pump(call, outcome, send, watch)
        finally:
            watch.stop()
        await http.end_stream(send, last)
        if status == 499:
            call.error = "client_closed"
            usage = usage or await self.accounting.estimate(call)
        self.accounting.account(call, usage, status)

    async def _first_answer(self, call: Call, route: Route, send: Send) -> Outcome[Any]:
        """The failover search; while it runs long, the stream is opened and kept alive.

        The keep-alive starts a task only when the search outlasts its period: most answers come
        first, and then a stream pays for two dict entries, not for a task and a wait."""
        pinger: list[asyncio.Future[None]] = []
        self.late.add(call, lambda: pinger.append(asyncio.ensure_future(self._keep_alive(call, send))))
        try:
            return await self.failover.run(route.order(), lambda t, b, i: self._attempt(call, t, b, i))
        finally:
            self.late.discard(call)
            if pinger:
                pinger[0].cancel()
                await asyncio.wait(pinger)  # never mid-write when the answer starts
                if not pinger[0].cancelled():
                    pinger[0].exception()  # a client gone mid-ping: the stream's watch says so

    async def _keep_alive(self, call: Call, send: Send) -> None:
        if not call.responding:
            call.responding = True
            await http.start_stream(
                send, [(b"x-request-id", call.request_id.encode())], call.surface.stream_headers
            )
        while True:
            await http.stream_chunk(send, call.surface.keepalive)
            await asyncio.sleep(self.config.server.keepalive_seconds)

    async def _too_long(self, call: Call, err: ContextLengthError) -> ContextLengthError:
        """The overflow in Anthropic's own words, which Claude Code recognises (and then compacts)."""
        backend = self.failover.backends.get(err.backend or "")
        model = err.upstream_model or call.model
        window = backend.context_window(model) if backend else self.catalog.context_window(model)
        try:
            tokens = await asyncio.to_thread(count_request_tokens, call.decoded())
        except ModelwireError:
            return err
        if window is None or tokens <= window:
            window = tokens - 1  # the upstream's limit is lower than the catalog knows
        message = f"prompt is too long: {tokens} tokens > {window} maximum"
        return ContextLengthError(message, status=err.status, code=err.code, request_id=err.request_id)
