"""OpenTelemetry traces of the gateway's requests, as lean spans (:mod:`.spans`) exported over
OTLP/HTTP by a thread (:mod:`.otlp`: export is never on the request path). Imported only when tracing is on
(:mod:`.telemetry`); the request path reaches it through ``Call.trace`` and ``Failover.tracer``.

One trace per request, continuing the client's ``traceparent`` when it sent one::

    chat gpt-5.5          SERVER    the client's request: GenAI and HTTP server attributes
    ├── admission         INTERNAL  key, body, route, limits
    ├── chat gpt-4.1      CLIENT    one per upstream attempt (modelwire.hop 1, 2 …): the upstream
    │                               gets this span's traceparent (HTTP and WebSocket handshakes)
    └── stream            INTERNAL  the answer streaming to the client; ``first_token`` event

Attribute names follow the OpenTelemetry GenAI and HTTP semantic conventions; the gateway's own
are under ``modelwire.*``. A client key appears only by name. Prompts and completions are recorded
only with ``capture_content`` on, with anything key-shaped redacted as the wire capture does.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from .. import __version__
from ..errors import ModelwireError
from ..observe import redact
from ..providers.http1 import Http1Transport
from ..providers.transport import Body
from ..types import Message, Part, Reasoning, Refusal, Response, Text, ToolCall, ToolResult
from .http import Scope
from .otlp import Destination, Exporter, resource_attributes
from .spans import CLIENT, ERROR, INTERNAL, SERVER, Context, Span, parse, unsampled
from .surfaces import EMBEDDINGS, Surface

if TYPE_CHECKING:
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
        self.exporter.start()
        self.sink = self.exporter.add
        self.ratio, self.follow_parent = settings.sample_ratio, settings.follow_parent
        self.capture_content = settings.capture_content
        self._redacted: dict[str, str] = {}
        self.backends: dict[str, dict[str, Any]] = {}  # each backend's attributes, worked out once

    def transport(self) -> Http1Transport:
        """The upstream client that sends each attempt's trace context."""
        return TracedTransport()

    def begin(self, call: Call, scope: Scope) -> RequestTrace:
        """The request's server span, current for this task from here on (and for the tasks it
        starts: the failover search's attempts go under it)."""
        parent = _client_context(scope)
        operation = _operation(call.surface)
        if not self._sampled(parent):  # nothing recorded; the context still goes upstream, unsampled
            request = RequestTrace(self, unsampled(parent), None, None, operation)
            request.token = _REQUEST.set(request)
            return request
        span = Span(
            self.sink,
            operation,
            SERVER,
            parent,
            {
                "gen_ai.operation.name": operation,
                "http.request.method": scope["method"],
                # What the client chose (its request id, the path naming a model) may hold a key
                # pasted by mistake: redacted, as in the request log.
                "url.path": self.redacted(scope["path"]),
                "client.address": call.client,
                "modelwire.request_id": redact(call.request_id),
                "modelwire.dialect": call.surface.dialect,
            },
        )
        request = RequestTrace(self, span, span, Span(self.sink, "admission", INTERNAL, span), operation)
        request.token = _REQUEST.set(request)
        return request

    def attempt(self, target: Target, backend: Backend, hop: int, retry: int) -> Attempt | None:
        """A client span for one upstream attempt, under the current request's span (None when
        that request is not sampled)."""
        request = _REQUEST.get()
        if request is None or request.span is None:
            return None
        known = self.backends.get(backend.name)
        if known is None:
            known = self.backends[backend.name] = _backend_attributes(backend)
        operation = OPERATIONS.get(backend.wire.name, "chat")
        model = self.redacted(target.model)
        if request.operation == "embeddings":
            operation = "embeddings"
        span = Span(
            self.sink,
            f"{operation} {model}",
            CLIENT,
            request.span,
            {
                **known,
                "gen_ai.operation.name": operation,
                "gen_ai.request.model": model,
                "modelwire.hop": hop,
                "modelwire.retry": retry,
            },
        )
        attempt = Attempt(span)
        attempt.token = _ATTEMPT.set(attempt)
        return attempt

    def _sampled(self, parent: Context | None) -> bool:
        if parent is not None and self.follow_parent:
            return parent.sampled
        return self.ratio >= 1.0 or random.random() < self.ratio

    def redacted(self, text: str) -> str:
        """``redact(text)`` for what repeats (paths, model names), worked out once each."""
        known = self._redacted.get(text)
        if known is None:
            if len(self._redacted) >= 1024:  # bounded: a client may send any model name
                self._redacted.clear()
            known = self._redacted[text] = redact(text)
        return known

    def shutdown(self) -> None:
        """Export what is left and stop the exporter's thread (blocks: run it off the loop)."""
        self.exporter.shutdown()


class RequestTrace:
    """One request's spans, fed by the hooks on its way (admitted, streaming, answered, end)."""

    __slots__ = ("_admission", "_stream", "context", "operation", "span", "token", "tracer")

    def __init__(
        self, tracer: Tracer, context: Context, span: Span | None, admission: Span | None, operation: str
    ) -> None:
        # context goes upstream; span is None when the request is not sampled (nothing recorded)
        self.tracer, self.context, self.span, self.operation = tracer, context, span, operation
        self.token: contextvars.Token[RequestTrace | None] | None = None
        self._admission = admission
        self._stream: Span | None = None

    def admitted(self, call: Call) -> None:
        """Admission passed: what the client asked for."""
        span = self.span
        if span is None:
            return
        if self._admission is not None:
            self._admission.end()
            self._admission = None
        body = call.body
        model = self.tracer.redacted(call.model)
        attributes: dict[str, Any] = {"gen_ai.request.model": model, "modelwire.stream": call.stream}
        if call.key is not None:
            attributes["modelwire.key_name"] = call.key.name
        limit = next((body[k] for k in MAX_TOKENS if isinstance(body.get(k), int)), None)
        settings = body.get("generationConfig")
        if limit is None and isinstance(settings, dict):
            limit = settings.get("maxOutputTokens")
        if isinstance(limit, int):
            attributes["gen_ai.request.max_tokens"] = limit
        for name in ("temperature", "top_p"):
            value = body.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                attributes[f"gen_ai.request.{name}"] = value
        if self.tracer.capture_content:
            attributes.update(_input_content(call))
        span.attributes.update(attributes)
        span.name = f"{self.operation} {model}"

    def streaming(self) -> None:
        """The answer's stream opens to the client."""
        if self.span is not None:
            self._stream = Span(self.tracer.sink, "stream", INTERNAL, self.span)

    def first_token(self) -> None:
        """The first answer bytes went to the client."""
        span = self._stream or self.span
        if span is not None:
            span.event("first_token")

    def answered(self, outcome: Outcome[Any]) -> None:
        """A whole answer came back: its id, model and why it ended (and its text, when captured)."""
        span = self.span
        if span is None:
            return
        value = outcome.value
        response: Response | None = getattr(value, "response", None)
        doc: dict[str, Any] | None = getattr(value, "doc", None)
        attributes: dict[str, Any] = {}
        if response is not None:
            attributes.update(
                {
                    "gen_ai.response.id": response.id,
                    "gen_ai.response.model": self.tracer.redacted(outcome.target.model),
                    "gen_ai.response.finish_reasons": [response.stop_reason],
                }
            )
        elif doc is not None:
            attributes.update(_answer_attributes(doc))
        if self.tracer.capture_content:
            if response is None and doc is not None:
                try:
                    response = outcome.backend.wire.decode_response(doc)
                except ModelwireError:
                    response = None
            if response is not None:
                attributes["gen_ai.output.messages"] = _messages(
                    [Message(role="assistant", content=response.content)]
                )
        span.attributes.update({k: v for k, v in attributes.items() if v})

    def end(self, call: Call) -> None:
        """The request is over: its outcome on the server span; every span of it ended."""
        if self.token is not None:
            _REQUEST.reset(self.token)
            self.token = None
        span = self.span
        if span is None:
            return
        if self._admission is not None:  # refused, or a route that only authenticates (listings)
            if call.status < 400:
                self._admission.end()
            else:
                self._admission.fail(call.error or str(call.status))
        if self._stream is not None:
            self._stream.end()
        attributes: dict[str, Any] = {"http.response.status_code": call.status}
        if call.backend is not None:
            attributes["modelwire.backend"] = call.backend
            attributes.update(
                {
                    k: v
                    for k, v in self.tracer.backends.get(call.backend, {}).items()
                    if k.startswith("gen_ai.")
                }
            )
        if call.upstream_model is not None:
            upstream_model = self.tracer.redacted(call.upstream_model)
            attributes["modelwire.upstream_model"] = upstream_model
            attributes.setdefault("gen_ai.response.model", upstream_model)
        usage = call.usage
        if usage is not None and usage.total_tokens:
            attributes["gen_ai.usage.input_tokens"] = usage.input_tokens
            attributes["gen_ai.usage.output_tokens"] = usage.output_tokens
            if usage.cached_input_tokens:
                attributes["modelwire.usage.cached_input_tokens"] = usage.cached_input_tokens
            if usage.reasoning_tokens:
                attributes["modelwire.usage.reasoning_tokens"] = usage.reasoning_tokens
        if call.cost is not None:
            attributes["modelwire.cost_usd"] = call.cost
        if call.ttft is not None:
            attributes["modelwire.ttft_ms"] = round(call.ttft * 1000, 3)
        if call.error is not None:
            attributes["error.type"] = call.error
        span.attributes.update(attributes)
        if call.status >= 500:  # a server span errs on 5xx only: 4xx are the client's
            span.status = ERROR
        span.end()


class Attempt:
    """One upstream attempt's client span, current for its task until :meth:`close`."""

    __slots__ = ("_failed", "span", "token")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.token: contextvars.Token[Attempt | None] | None = None
        self._failed = False

    def replied(self, status: int) -> None:
        self.span.attributes["http.response.status_code"] = status

    def failed(self, err: ModelwireError) -> None:
        self._failed = True
        self.span.fail(type(err).__name__, redact(err.message))

    def close(self) -> None:
        """The attempt is over (answered, failed, or cut short: then its error is ``cancelled``)."""
        if self.token is not None:
            _ATTEMPT.reset(self.token)
            self.token = None
        if self._failed:
            return  # ended by failed()
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            self.span.fail("cancelled")
        else:
            self.span.end()


class TracedTransport(Http1Transport):
    """The upstream client, sending the current attempt's trace context with every request and
    WebSocket handshake, and recording each reply's status on the attempt's span."""

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        read_timeout: float | None = None,
    ) -> Any:
        attempt = _ATTEMPT.get()
        reply = await super().send(method, url, _traced(headers, attempt), body, read_timeout=read_timeout)
        if attempt is not None:
            attempt.replied(reply.status)
        return reply

    async def connect_socket(
        self, url: str, headers: Mapping[str, str], within: float
    ) -> aiohttp.ClientWebSocketResponse[bool]:
        return await super().connect_socket(url, _traced(headers, _ATTEMPT.get()), within)


def _traced(headers: Mapping[str, str], attempt: Attempt | None) -> dict[str, str]:
    """The headers with the attempt's W3C trace context (outside one, as for a background poll or an
    unsampled request: the request's)."""
    context = attempt.span if attempt is not None else _current_context()
    if context is None:
        return dict(headers)
    carrier = dict(headers)
    carrier["traceparent"] = context.traceparent()
    if context.trace_state:
        carrier["tracestate"] = context.trace_state
    return carrier


def _current_context() -> Context | None:
    request = _REQUEST.get()
    return request.context if request is not None else None


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
    return "embeddings" if surface is EMBEDDINGS else OPERATIONS.get(surface.dialect, "chat")


def _backend_attributes(backend: Backend) -> dict[str, Any]:
    """What an attempt's span says of its backend, worked out once per backend."""
    parts = urlsplit(backend.config.base_url or "")
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": PROVIDERS.get(backend.config.type, backend.config.type),
        "modelwire.backend": backend.name,
    }
    if parts.hostname:
        attributes["server.address"] = parts.hostname
        attributes["server.port"] = parts.port or (443 if parts.scheme in ("https", "wss") else 80)
    return attributes


def _answer_attributes(doc: dict[str, Any]) -> dict[str, Any]:
    """A forwarded answer's id, model and finish reasons, in whichever wire it came."""
    choices = doc.get("choices") or doc.get("candidates")
    if isinstance(choices, list):
        reasons = [c.get("finish_reason") or c.get("finishReason") for c in choices if isinstance(c, dict)]
    else:
        reasons = [doc.get("stop_reason") or doc.get("status")]
    return {
        "gen_ai.response.id": doc.get("id") or doc.get("responseId"),
        "gen_ai.response.model": doc.get("model") or doc.get("modelVersion"),
        "gen_ai.response.finish_reasons": [str(r) for r in reasons if r],
    }


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
