"""OpenTelemetry traces of the gateway's requests, exported over OTLP/HTTP (:mod:`.otlp`).
Imported only when tracing is on (:mod:`.telemetry`); the request path reaches it through
``Call.trace`` and ``Failover.tracer``.

One trace per request, continuing the client's ``traceparent`` when it sent one::

    chat gpt-5.5          SERVER    the client's request: GenAI and HTTP server attributes
    ├── admission         INTERNAL  key, body, route, limits
    ├── chat gpt-4.1      CLIENT    one per upstream attempt (modelwire.hop 1, 2 …): the upstream
    │                               gets this span's traceparent (HTTP and WebSocket handshakes)
    └── stream            INTERNAL  the answer streaming to the client; ``first_token`` event

What it costs: a request's hooks only note clock readings, ids and the values its spans will say, in
two records (:class:`RequestTrace` for the server, admission and stream spans; an :class:`Attempt`
per upstream attempt), written out as OTLP bytes once each ends, most of them encoded once per
backend, route and model and reused; a task sends them in batches (:mod:`.otlp`).

Attribute names follow the OpenTelemetry GenAI and HTTP semantic conventions; the gateway's own
are under ``modelwire.*``. A client key appears only by name. Prompts and completions are recorded
only with ``capture_content`` on, with anything key-shaped redacted as the wire capture does.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import sys
from collections.abc import Coroutine, Mapping
from time import time_ns
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from .. import __version__
from ..errors import ModelwireError
from ..observe import redact
from ..providers.http1 import Http1Transport
from ..providers.transport import Body
from ..types import Message, Part, Reasoning, Refusal, Response, Text, ToolCall, ToolResult
from .call import MINTED_ID_PREFIX
from .http import Scope
from .otlp import Destination, Exporter, resource_attributes
from .spans import (
    CLIENT,
    ERROR,
    INTERNAL,
    SAMPLED,
    SERVER,
    UNSET,
    Context,
    Encoding,
    Fixed,
    Pairs,
    new_span_id,
    new_trace_id,
    parse,
)
from .surfaces import EMBEDDINGS, GEMINI_EMBEDDINGS, Surface

if TYPE_CHECKING:
    import aiohttp

    from .call import Call
    from .routing import Target
    from .telemetry import TraceSettings
    from .upstream import Backend, Outcome

# gen_ai.provider.name by backend type; an OpenAI-compatible server is "openai", as the
# conventions say for a product reached through OpenAI's API.
PROVIDERS = {
    "openai": "openai",
    "openai-compatible": "openai",
    "codex": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
}
# gen_ai.operation.name by the wire (the client's for its request, the upstream's for attempts).
OPERATIONS = {"gemini": "generate_content"}
# Where each dialect's body says how many tokens it may produce.
MAX_TOKENS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# The request this task serves (the parent of its attempts), and the upstream attempt it is making
# (for the transport to send its traceparent and record the upstream's status on it).
_REQUEST: contextvars.ContextVar[RequestTrace | None] = contextvars.ContextVar(
    "modelwire_trace", default=None
)
_ATTEMPT: contextvars.ContextVar[Attempt | None] = contextvars.ContextVar("modelwire_attempt", default=None)


class Tracer:
    """The gateway's tracer: one per process, built at start-up, shut down (flushed) at the end."""

    def __init__(self, settings: TraceSettings, env: Mapping[str, str] = os.environ) -> None:
        resource = {
            "telemetry.sdk.name": "modelwire",
            "telemetry.sdk.language": "python",
            **resource_attributes(env),
            "service.name": settings.service_name,
            "service.version": __version__,
        }
        destination = Destination.of(settings.endpoint, settings.headers, settings.protocol, env)
        self.exporter = Exporter(destination, resource, ("modelwire.gateway", __version__))
        self.sink = self.exporter.add
        self.ratio, self.follow_parent = settings.sample_ratio, settings.follow_parent
        self.capture_content = settings.capture_content
        self._redacted: dict[str, str] = {}
        # each backend's attributes, worked out once (a tuple: a key of the encoder's cache)
        self.backends: dict[str, tuple[tuple[str, Any], ...]] = {}

    def transport(self) -> Http1Transport:
        """The upstream client that sends each attempt's trace context."""
        return TracedTransport()

    def begin(self, call: Call, scope: Scope) -> RequestTrace:
        """The request's trace, current for this task from here on (and for the tasks it starts:
        the failover search's attempts go under it)."""
        parent = _client_context(scope)
        if parent is not None and self.follow_parent:
            sampled = parent.sampled
        else:
            sampled = self.ratio >= 1.0 or random.random() < self.ratio
        request = RequestTrace(self, parent, sampled, call, scope)
        request.token = _REQUEST.set(request)
        return request

    def attempt(self, target: Target, backend: Backend, hop: int, retry: int) -> Attempt | None:
        """A client span for one upstream attempt, under the current request's span (None when
        that request is not sampled)."""
        request = _REQUEST.get()
        if request is None or not request.recorded:
            return None
        if backend.name not in self.backends:
            self.backends[backend.name] = _backend_attributes(backend)
        operation = (
            "embeddings" if request.operation == "embeddings" else OPERATIONS.get(backend.wire.name, "chat")
        )
        attempt = Attempt(request, backend.name, operation, target.model, hop, retry)
        attempt.token = _ATTEMPT.set(attempt)
        return attempt

    def redacted(self, text: str) -> str:
        """``redact(text)`` for what repeats (paths, model names), worked out once each."""
        known = self._redacted.get(text)
        if known is None:
            if len(self._redacted) >= 1024:  # bounded: a client may send any model name
                self._redacted.clear()
            known = self._redacted[text] = redact(text)
        return known

    def start(self) -> None:
        """Starts exporting, from the gateway's event loop."""
        self.exporter.start()

    async def shutdown(self) -> None:
        """Exports what is left (within the export timeout) and stops."""
        await self.exporter.shutdown()


class RequestTrace(Context):
    """One request's trace context, and (when sampled) what its server, admission and stream spans
    will say, noted by the hooks on its way (admitted, streaming, answered, end) and written out
    once it ends (:meth:`write`). Unsampled, it is only the context sent upstream."""

    __slots__ = (
        "admission_error",
        "admitted_ns",
        "answer",
        "answer_id",
        "asked",
        "attempts",
        "backend",
        "client",
        "content",
        "cost",
        "dialect",
        "end_ns",
        "error",
        "first_token_ns",
        "method",
        "operation",
        "parent_id",
        "path",
        "recorded",
        "request_id",
        "start_ns",
        "status",
        "stream_ns",
        "token",
        "tracer",
        "ttft",
        "upstream_model",
        "usage",
    )

    def __init__(
        self, tracer: Tracer, parent: Context | None, sampled: bool, call: Call, scope: Scope
    ) -> None:
        # Context's fields set here, not through its __init__: this runs for every request.
        if parent is None:
            self.trace_id, self.trace_state, self.parent_id = new_trace_id(), None, b""
        else:
            self.trace_id, self.trace_state, self.parent_id = (
                parent.trace_id,
                parent.trace_state,
                parent.span_id,
            )
        self.span_id, self.flags, self.recorded = new_span_id(), SAMPLED if sampled else 0, sampled
        self.tracer, self.operation = tracer, _operation(call.surface)
        self.token: contextvars.Token[RequestTrace | None] | None = None
        self.end_ns = 0
        if sampled:  # the first notes; every later one is given its empty value here
            self.start_ns = time_ns()
            self.method, self.path, self.client = scope["method"], scope["path"], call.client
            self.request_id, self.dialect = call.request_id, call.surface.dialect
            self.admitted_ns = self.stream_ns = self.first_token_ns = 0
            self.admission_error: str | None = None
            self.asked: tuple[Any, ...] | None = None  # model, stream, key name, max tokens, temperature …
            self.answer_id: Any = None
            self.answer: tuple[Any, tuple[str, ...]] | None = None  # the model that answered, why it ended
            self.content: dict[str, Any] | None = None
            self.attempts: list[Attempt] = []  # ended, written out with the request

    @property
    def spans(self) -> int:  # server, admission, the stream's and the attempts'
        return (3 if self.stream_ns else 2) + len(self.attempts)

    def admitted(self, call: Call) -> None:
        """Admission passed: what the client asked for."""
        if not self.recorded:
            return
        if not self.admitted_ns:
            self.admitted_ns = time_ns()
        body = call.body
        key = call.key.name if call.key is not None else None
        temperature, top_p = body.get("temperature"), body.get("top_p")
        # their types too, as they key a cache: 1 == 1.0, but one is an int, the other a double
        self.asked = (
            call.model,
            call.stream,
            key,
            _max_tokens(body),
            temperature,
            top_p,
            type(temperature),
            type(top_p),
        )
        if self.tracer.capture_content:
            self.content = _input_content(call)

    def streaming(self) -> None:
        """The answer's stream opens to the client."""
        if self.recorded:
            self.stream_ns = time_ns()

    def first_token(self) -> None:
        """The first answer bytes went to the client."""
        if self.recorded and not self.first_token_ns:
            self.first_token_ns = time_ns()

    def answered(self, outcome: Outcome[Any]) -> None:
        """A whole answer came back: its id, model and why it ended (and its text, when captured)."""
        if not self.recorded:
            return
        value = outcome.value
        response: Response | None = getattr(value, "response", None)
        doc: dict[str, Any] | None = getattr(value, "doc", None)
        if response is not None:
            self.answer_id = response.id
            self.answer = (self.tracer.redacted(outcome.target.model), (response.stop_reason,))
        elif doc is not None:
            self.answer_id, self.answer = _answer(doc)
        if self.tracer.capture_content:
            output = _output_content(outcome, response, doc)
            if output is not None:
                self.content = {**(self.content or {}), "gen_ai.output.messages": output}

    def end(self, call: Call) -> None:
        """The request is over: its outcome noted, and the record handed to the exporter."""
        if self.token is not None:
            _REQUEST.reset(self.token)
            self.token = None
        if not self.recorded or self.end_ns:
            return
        self.end_ns = time_ns()
        if not self.admitted_ns and call.status >= 400:  # refused (a listing only authenticates)
            self.admission_error = call.error or str(call.status)
        self.status, self.error, self.backend = call.status, call.error, call.backend
        self.upstream_model, self.usage, self.cost, self.ttft = (
            call.upstream_model,
            call.usage,
            call.cost,
            call.ttft,
        )
        self.tracer.sink(self)

    # -- written out once ended

    def write(self, encoding: Encoding) -> list[bytes]:
        """The request's spans (server, admission, stream), then its attempts', as ``encoding``
        writes them. One function, the encoder's cache read inline: this runs for every request."""
        known, span = encoding.known, encoding.span
        trace_id, state, own_id, start, end = (
            self.trace_id,
            self.trace_state,
            self.span_id,
            self.start_ns,
            self.end_ns,
        )
        first, stream = self.first_token_ns, self.stream_ns
        # what repeats from request to request: the route, the model, the key, the outcome
        shared: tuple[Any, ...] = (
            self.operation,
            self.method,
            self.path,
            self.dialect,
            self.asked,
            self.status,
            self.backend,
        )
        shared += (self.upstream_model, self.answer, self.error)
        fixed = known.get(shared) or encoding.fixed(shared, _server_fixed, self)
        events = ((first, "first_token"),) if first and not stream else ()
        spans = [span(trace_id, state, own_id, self.parent_id, start, end, fixed, self._own(), events)]
        failed = self.admission_error
        key = _ADMITTED if failed is None else ("admission", failed)
        fixed = known.get(key) or encoding.fixed(key, _admission_fixed, failed)
        spans.append(span(trace_id, state, new_span_id(), own_id, start, self.admitted_ns or end, fixed))
        if stream:
            fixed = known.get(_STREAM) or encoding.fixed(_STREAM, _stream_fixed)
            events = ((first, "first_token"),) if first else ()
            spans.append(span(trace_id, state, new_span_id(), own_id, stream, end, fixed, (), events))
        for attempt in self.attempts:
            spans.append(attempt.encoded(encoding))
        return spans

    def _own(self) -> tuple[tuple[str, Any], ...]:
        """The server span's attributes of this request (client, tokens, ids, cost, content)."""
        rid = self.request_id  # a client's own id may hold anything; one made here is known clean
        own: tuple[tuple[str, Any], ...] = (
            ("client.address", self.client),
            ("modelwire.request_id", rid if rid.startswith(MINTED_ID_PREFIX) else redact(rid)),
            ("gen_ai.response.id", self.answer_id or None),
            ("modelwire.cost_usd", self.cost),
            ("modelwire.ttft_ms", self.ttft * 1000 if self.ttft is not None else None),
        )
        usage = self.usage
        if usage is not None and usage.total_tokens:
            own += (
                ("gen_ai.usage.input_tokens", usage.input_tokens),
                ("gen_ai.usage.output_tokens", usage.output_tokens),
                ("modelwire.usage.cached_input_tokens", usage.cached_input_tokens or None),
                ("modelwire.usage.reasoning_tokens", usage.reasoning_tokens or None),
            )
        return own + tuple(self.content.items()) if self.content else own


class Attempt(Context):
    """One upstream attempt's client span, current for its task until :meth:`close`; then written
    out with its request (or on its own, should it end after the request)."""

    __slots__ = (
        "backend",
        "end_ns",
        "error",
        "hop",
        "message",
        "model",
        "operation",
        "parent_id",
        "reply",
        "request",
        "retry",
        "start_ns",
        "token",
        "tracer",
    )
    spans = 1

    def __init__(
        self,
        request: RequestTrace,
        backend: str,
        operation: str,
        model: str,
        hop: int,
        retry: int,
    ) -> None:
        self.trace_id, self.span_id, self.flags = request.trace_id, new_span_id(), SAMPLED
        self.trace_state, self.parent_id, self.tracer = request.trace_state, request.span_id, request.tracer
        self.request: RequestTrace | None = request  # until it ends: then the request holds it
        self.backend, self.operation, self.model, self.hop, self.retry = backend, operation, model, hop, retry
        self.token: contextvars.Token[Attempt | None] | None = None
        self.reply: int | None = None
        self.error: str | None = None
        self.message = ""
        self.start_ns, self.end_ns = time_ns(), 0

    def replied(self, status: int) -> None:
        self.reply = status

    def failed(self, err: ModelwireError) -> None:
        self._end(type(err).__name__, redact(err.message))

    def close(self) -> None:
        """The attempt is over (answered, failed, or cut short: then its error is ``cancelled``)."""
        if self.token is not None:
            _ATTEMPT.reset(self.token)
            self.token = None
        if self.end_ns:
            return  # ended by failed()
        # close() runs in the attempt's ``finally``: a CancelledError on its way out means the attempt
        # was cut short (cheaper to ask than the task whether it is being cancelled).
        self._end("cancelled" if isinstance(sys.exc_info()[1], asyncio.CancelledError) else None)

    def _end(self, error: str | None, message: str = "") -> None:
        if not self.end_ns:
            self.end_ns = time_ns()
            self.error, self.message = error, message
            request, self.request = self.request, None
            if request is None or request.end_ns:
                self.tracer.sink(self)
            else:
                request.attempts.append(self)

    def write(self, encoding: Encoding) -> list[bytes]:
        return [self.encoded(encoding)]

    def encoded(self, encoding: Encoding) -> bytes:
        message = self.message
        key = (
            self.backend,
            self.operation,
            self.model,
            self.hop,
            self.retry,
            self.reply,
            self.error,
            message,
        )
        # an error's long message may be one of a kind: not kept
        fixed = encoding.known.get(key) or encoding.fixed(key if len(message) < 64 else None, self._fixed)
        return encoding.span(
            self.trace_id, self.trace_state, self.span_id, self.parent_id, self.start_ns, self.end_ns, fixed
        )

    def _fixed(self) -> Fixed:
        model = self.tracer.redacted(self.model)
        attributes = (
            *self.tracer.backends[self.backend],
            ("gen_ai.operation.name", self.operation),
            ("gen_ai.request.model", model),
            ("modelwire.hop", self.hop),
            ("modelwire.retry", self.retry),
            ("http.response.status_code", self.reply),
            ("error.type", self.error),
        )
        status = (ERROR, self.message) if self.error is not None else (UNSET, "")
        return f"{self.operation} {model}", CLIENT, status, attributes


class TracedTransport(Http1Transport):
    """The upstream client, sending the current attempt's trace context with every request and
    WebSocket handshake, and recording each reply's status on the attempt's span."""

    def send(  # the same awaitable as the transport's, without a coroutine of its own
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        read_timeout: float | None = None,
    ) -> Coroutine[Any, Any, Any]:
        # Not a coroutine itself: outside a recorded attempt (an unsampled request) the transport's
        # own is awaited directly, one frame fewer on every upstream request.
        attempt = _ATTEMPT.get()
        sent = super().send(method, url, _traced(headers, attempt), body, read_timeout=read_timeout)
        return sent if attempt is None else _replied(sent, attempt)

    async def connect_socket(
        self, url: str, headers: Mapping[str, str], within: float
    ) -> aiohttp.ClientWebSocketResponse[bool]:
        return await super().connect_socket(url, _traced(headers, _ATTEMPT.get()), within)


async def _replied(sent: Coroutine[Any, Any, Any], attempt: Attempt) -> Any:
    """The reply, its status recorded on the attempt's span."""
    reply = await sent
    attempt.replied(reply.status)
    return reply


def _traced(headers: Mapping[str, str], attempt: Attempt | None) -> dict[str, str]:
    """The headers with the attempt's W3C trace context (outside one, as for a background poll or an
    unsampled request: the request's)."""
    context = attempt if attempt is not None else _REQUEST.get()
    if context is None:
        return dict(headers)
    carrier = dict(headers)
    carrier["traceparent"] = context.traceparent()
    if context.trace_state:
        carrier["tracestate"] = context.trace_state
    return carrier


def _client_context(scope: Scope) -> Context | None:
    """The client's W3C trace context, when it sent a valid one (several tracestate headers are one list)."""
    traceparent: str | None = None
    states: list[str] = []
    for name, value in scope["headers"]:
        if name == b"traceparent":
            traceparent = value.decode("latin-1")
        elif name == b"tracestate":
            states.append(value.decode("latin-1"))
    return parse(traceparent, ",".join(states)) if traceparent is not None else None


def _operation(surface: Surface) -> str:
    if surface is EMBEDDINGS or surface is GEMINI_EMBEDDINGS:
        return "embeddings"
    return OPERATIONS.get(surface.dialect, "chat")


def _backend_attributes(backend: Backend) -> tuple[tuple[str, Any], ...]:
    """What an attempt's span says of its backend, worked out once per backend."""
    parts = urlsplit(backend.config.base_url or "")
    attributes: list[tuple[str, Any]] = [
        ("gen_ai.provider.name", PROVIDERS.get(backend.config.type, backend.config.type)),
        ("modelwire.backend", backend.name),
    ]
    if parts.hostname:
        attributes.append(("server.address", parts.hostname))
        attributes.append(("server.port", parts.port or (443 if parts.scheme in ("https", "wss") else 80)))
    return tuple(attributes)


def _server_fixed(request: RequestTrace) -> Fixed:
    """The server span's name, status and the attributes that many requests share (the route, the
    model, the key, the outcome): worked out once per distinct set."""
    model = request.tracer.redacted(request.asked[0]) if request.asked is not None else None
    name = f"{request.operation} {model}" if model is not None else request.operation
    status = (ERROR, "") if request.status >= 500 else (UNSET, "")  # a server span errs on 5xx only
    return name, SERVER, status, _server_shared(request, model)


def _server_shared(request: RequestTrace, model: str | None) -> Pairs:
    tracer = request.tracer
    yield "gen_ai.operation.name", request.operation
    yield "http.request.method", request.method
    # What the client chose (the path naming a model) may hold a key pasted by mistake: redacted.
    yield "url.path", tracer.redacted(request.path)
    yield "modelwire.dialect", request.dialect
    if request.asked is not None:
        _, stream, key_name, limit, temperature, top_p = request.asked[:6]
        yield "gen_ai.request.model", model
        yield "modelwire.stream", stream
        yield "modelwire.key_name", key_name
        if isinstance(limit, int):
            yield "gen_ai.request.max_tokens", limit
        for name, value in (("temperature", temperature), ("top_p", top_p)):
            if isinstance(value, int | float) and not isinstance(value, bool):
                yield f"gen_ai.request.{name}", value
    yield "http.response.status_code", request.status
    if request.backend is not None:
        yield "modelwire.backend", request.backend
        yield from ((k, v) for k, v in tracer.backends.get(request.backend, ()) if k.startswith("gen_ai."))
    upstream = tracer.redacted(request.upstream_model) if request.upstream_model is not None else None
    yield "modelwire.upstream_model", upstream
    response_model, reasons = request.answer or (None, ())
    yield "gen_ai.response.model", response_model or upstream
    if reasons:
        yield "gen_ai.response.finish_reasons", list(reasons)
    yield "error.type", request.error


# The admission and stream spans' keys in the encoder's cache (a failed admission's has its error too).
_ADMITTED, _STREAM = ("admission", None), ("stream",)


def _admission_fixed(failed: str | None) -> Fixed:
    return "admission", INTERNAL, (ERROR if failed is not None else UNSET, ""), (("error.type", failed),)


def _stream_fixed() -> Fixed:
    return "stream", INTERNAL, (UNSET, ""), ()


def _answer(doc: dict[str, Any]) -> tuple[Any, tuple[Any, tuple[str, ...]]]:
    """A forwarded answer's id, model and finish reasons, in whichever wire it came."""
    choices = doc.get("choices") or doc.get("candidates")
    reasons: list[str] = []
    if isinstance(choices, list):
        for choice in choices:
            if isinstance(choice, dict):
                reason = choice.get("finish_reason") or choice.get("finishReason")
                if reason:
                    reasons.append(str(reason))
    else:
        reason = doc.get("stop_reason") or doc.get("status")
        if reason:
            reasons.append(str(reason))
    return doc.get("id") or doc.get("responseId"), (
        doc.get("model") or doc.get("modelVersion"),
        tuple(reasons),
    )


def _max_tokens(body: dict[str, Any]) -> Any:
    """How many tokens the request may produce, as its dialect says it (None when it does not)."""
    for name in MAX_TOKENS:
        value = body.get(name)
        if isinstance(value, int):
            return value
    settings = body.get("generationConfig")
    return settings.get("maxOutputTokens") if isinstance(settings, dict) else None


def _output_content(
    outcome: Outcome[Any], response: Response | None, doc: dict[str, Any] | None
) -> str | None:
    """The answer's text in the conventions' JSON shape, redacted (content capture only)."""
    if response is None and doc is not None:
        try:
            response = outcome.backend.wire.decode_response(doc)
        except ModelwireError:
            return None
    if response is None:
        return None
    return _messages([Message(role="assistant", content=response.content)])


def _input_content(call: Call) -> dict[str, str]:
    """The request's instructions and messages, in the conventions' JSON shape, redacted."""
    try:
        messages = call.decoded().messages
    except ModelwireError:
        return {}
    system = [m for m in messages if m.role in ("system", "developer")]
    rest = [m for m in messages if m.role not in ("system", "developer")]
    content = {"gen_ai.input.messages": _messages(rest)}
    if system:
        content["gen_ai.system_instructions"] = _json([_part(p) for m in system for p in m.content])
    return content


def _messages(messages: list[Message]) -> str:
    return _json([{"role": m.role, "parts": [_part(p) for p in m.content]} for m in messages])


def _part(part: Part) -> dict[str, Any]:
    if isinstance(part, Text | Refusal):
        return {"type": "text", "content": part.text}
    if isinstance(part, ToolCall):
        return {"type": "tool_call", "id": part.id, "name": part.name, "arguments": part.arguments}
    if isinstance(part, ToolResult):
        text = "".join(p.text for p in part.content if isinstance(p, Text))
        return {"type": "tool_call_response", "id": part.call_id, "response": text}
    if isinstance(part, Reasoning):
        return {"type": "reasoning", "content": part.text or "\n".join(part.summary)}
    return {"type": type(part).__name__.lower()}  # media: its kind, never its bytes


def _json(value: Any) -> str:
    return redact(orjson.dumps(value).decode())
