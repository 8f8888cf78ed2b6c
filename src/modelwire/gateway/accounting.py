"""What the gateway says back and writes down about each request: its answer's head and body, its
errors in the client's dialect, the wire capture, the usage row, the metrics, the limit counters,
and the Responses answers it keeps for ``previous_response_id``.

Nothing here makes a client wait on a database write, except :meth:`Accounting.remember`, which a
follow-up on another replica needs committed before the client can name the answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Mapping
from typing import Any

import orjson

from ..errors import ModelwireError
from ..observe import Tap, redact
from ..providers.catalog import Catalog
from ..tokens import count_request_tokens
from ..types import Usage
from . import http
from .call import Call
from .capture import Capture
from .chains import input_items, stored
from .http import Headers, Send
from .metrics import Metrics
from .state import State
from .store import UsageRecord
from .upstream import Backend, Outcome

log = logging.getLogger("modelwire.gateway")
# (request id, client key name) of the request being served, for the wire capture of drivers.
_CURRENT: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar(
    "modelwire_call", default=("", None)
)
_DRIVER_DIRECTIONS = {
    "request": "upstream_request",
    "response": "upstream_response",
    "error": "upstream_response",
    "stream": "upstream_chunk",
}


class Accounting:
    def __init__(self, state: State, metrics: Metrics, capture: Capture | None, catalog: Catalog) -> None:
        self.state = state
        self.metrics = metrics
        self.capture = capture
        self.catalog = catalog

    # ------------------------------------------------------------------------------ capture

    def bind(self, call: Call) -> None:
        """From here on, what drivers capture for this task is filed under ``call``."""
        _CURRENT.set((call.request_id, call.key.name if call.key else None))

    def driver_tap(self, backend: str) -> Tap:
        """Wire capture of what a translating driver sends and receives for ``backend``."""

        def tap(direction: str, url: str, headers: Mapping[str, str], body: bytes | str) -> None:
            request_id, key_name = _CURRENT.get()
            assert self.capture is not None
            self.capture.record(
                _DRIVER_DIRECTIONS.get(direction, direction),
                request_id=request_id,
                payload=body,
                backend=backend,
                key_name=key_name,
                headers=headers,
                url=url or None,
            )

        return tap

    def record(self, direction: str, call: Call, payload: bytes | dict[str, Any], **kw: Any) -> None:
        if self.capture is not None:
            kw.setdefault("backend", call.backend)
            key_name = call.key.name if call.key else None
            self.capture.record(
                direction, request_id=call.request_id, payload=payload, key_name=key_name, **kw
            )

    # ------------------------------------------------------------------------- the answer

    def served_headers(self, call: Call, outcome: Outcome[Any]) -> Headers:
        headers = [
            (b"x-request-id", call.request_id.encode()),
            (b"x-modelwire-backend", outcome.backend.name.encode()),
            (b"x-modelwire-model", outcome.target.model.encode()),
        ]
        dropped = getattr(outcome.value, "dropped", None)
        if dropped:
            headers.append((b"x-modelwire-dropped-params", ", ".join(dropped).encode()))
        return headers

    async def respond(self, call: Call, send: Send, status: int, payload: bytes, headers: Headers) -> None:
        """A whole answer; from here on an error can no longer be a response of its own."""
        call.status, call.responding = status, True
        await http.respond(send, status, payload, headers)

    async def answer(self, call: Call, send: Send, doc: Any) -> None:
        await self.respond(call, send, 200, orjson.dumps(doc), [(b"x-request-id", call.request_id.encode())])

    def chunk(self, call: Call, send: Send, out: bytes) -> Awaitable[None]:
        """Answer bytes of an open stream (not empty), on their way: the send to await. A plain
        function, not a coroutine: this runs for every read of every stream."""
        self.emitted(call, out)
        return send(http.more(out))

    def emitted(self, call: Call, out: bytes) -> None:
        """Answer bytes on their way to the client (now, or with the end of the response): the
        first of them time the first token."""
        if call.ttft is None:
            call.ttft = time.monotonic() - call.started
            if call.trace is not None:
                call.trace.first_token()
        call.events += 1
        if self.capture is not None:
            self.record("client_chunk", call, out)

    async def failed(self, call: Call, send: Send, err: ModelwireError) -> None:
        """A request that ends in ``err``: said to the client, accounted against whoever failed it."""
        call.backend, call.upstream_model, call.hops = err.backend, err.upstream_model, err.hops
        await self.error(call, send, err)
        self.account(call, None, call.status)

    async def served(
        self, call: Call, send: Send, outcome: Outcome[Any], payload: bytes, usage: Usage | None
    ) -> None:
        """A whole forwarded answer (embeddings, compaction): sent with the served headers, accounted."""
        call.served_by(outcome.target, outcome.backend, outcome.hops)
        await self.respond(call, send, 200, payload, self.served_headers(call, outcome))
        self.account(call, usage, 200)

    async def error(self, call: Call, send: Send, err: ModelwireError) -> None:
        """``err`` in the client's dialect: an error response, or the stream's own error event when
        the response has begun."""
        err = safe(err)
        call.status, call.error = err.status, call.error or _error_code(err)  # a stream's HTTP status was 200
        self.metrics.error(call.surface.label, type(err).__name__)
        if call.responding:
            end = call.failing_end or (lambda e: call.surface.stream_error(e, None, call.body))
            await http.stream_chunk(send, end(err))
            await http.end_stream(send)
            return
        status, doc = call.surface.render_error(err)
        extra = [(b"x-request-id", call.request_id.encode())]
        if err.retry_after is not None:
            extra.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
        if status == 401:  # a bad key stays bad: Claude Code retries a 401 ten times unless told so
            extra.append((b"x-should-retry", b"false"))
        await self.respond(call, send, status, orjson.dumps(doc), extra)

    # --------------------------------------------------------------------- stored answers

    def keeps(self, call: Call, backend: Backend, *, translated: bool) -> bool:
        """Whether the gateway stores this answer: Responses answers from upstreams that keep none
        (a native upstream stores what it served and chains it itself), unless ``store: false``."""
        if not call.surface.chains or call.body.get("store") is False:
            return False
        return translated or not backend.chains

    async def remember(
        self, call: Call, doc: dict[str, Any] | None, backend: Backend, *, translated: bool
    ) -> None:
        """Keep a Responses answer for ``previous_response_id``, durably: the caller sends the end of
        the answer only after this returns, so a follow-up on any replica finds it."""
        if doc is None or not self.keeps(call, backend, translated=translated):
            return
        items = call.items if call.items is not None else input_items(call.body)
        await self.state.chains.put(stored(call.body, items, doc, call.key.name if call.key else None))

    # ------------------------------------------------------------------------------ usage

    def account(self, call: Call, usage: Usage | None, status: int, cost: float | None = None) -> None:
        """Record usage and metrics without making the client wait for either. ``cost`` is given
        when tokens do not price the request (media priced per image, second or
        character; Realtime prices audio apart from text)."""
        backend, upstream_model = call.backend, call.upstream_model
        usage = usage or Usage()
        if cost is None and usage.total_tokens:
            cost = self.catalog.cost(upstream_model or call.model, usage)
        call.status, call.usage, call.cost = status, usage, cost
        if self.state.usage is not None:
            self.state.usage.add(_usage_record(call, usage, cost, status))
        if usage.total_tokens or cost:
            self.metrics.usage(
                call.model,
                backend or "",
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens,
                usage.reasoning_tokens,
                cost or 0.0,
            )
        if call.key is not None:
            self.state.limiter.tally(call.key.policy, tokens=usage.total_tokens, cost=cost)

    async def estimate(self, call: Call) -> Usage:
        """What a cut request used, when the upstream never said: its input counted offline, and
        about one output token per stream event that reached the client."""
        return Usage(input_tokens=await asyncio.to_thread(_input_tokens, call), output_tokens=call.events)


def _input_tokens(call: Call) -> int:
    """Counted in a worker thread, decoding included: when a thousand streams are cut at once, only
    as many decoded requests as there are workers are alive at a time, not one per stream."""
    try:
        return count_request_tokens(call.decoded())
    except ModelwireError:
        return 0


def _usage_record(call: Call, usage: Usage, cost: float | None, status: int) -> UsageRecord:
    return UsageRecord(
        time=time.time(),
        key_name=call.key.name if call.key else None,
        public_model=call.model,
        backend=call.backend,
        upstream_model=call.upstream_model,
        dialect=call.surface.label,
        input_tokens=usage.input_tokens,
        cached_tokens=usage.cached_input_tokens,
        output_tokens=usage.output_tokens,
        reasoning_tokens=usage.reasoning_tokens,
        cost=cost,
        latency_ms=(time.monotonic() - call.started) * 1000,
        ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
        status=status,
        request_id=call.request_id,
        stream=call.stream,
        error=call.error,
        hops=call.hops,
    )


def _error_code(err: ModelwireError) -> str:
    """A short code for the usage record and the log line: the error's own, or its kind."""
    if err.code:
        return err.code[:64]
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in type(err).__name__).lstrip("_")


def safe(err: Exception) -> ModelwireError:
    """The error with any key-looking text removed from its message."""
    if not isinstance(err, ModelwireError):
        log.error("unexpected error type in a stream: %r", err)
        return ModelwireError("internal gateway error")
    cleaned = redact(err.message)
    if cleaned != err.message:
        err.message = cleaned
        err.args = (cleaned,)
    return err
