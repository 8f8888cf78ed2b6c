"""A real OTLP/HTTP trace receiver for the tests: an aiohttp server on loopback, in a thread, that
accepts ``POST /v1/traces`` (protobuf or OTLP JSON, decoded with ``opentelemetry-proto``, the
collector's own message types) and keeps every span it is sent. It never imports modelwire."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

KINDS = {
    ProtoSpan.SPAN_KIND_SERVER: "server",
    ProtoSpan.SPAN_KIND_CLIENT: "client",
    ProtoSpan.SPAN_KIND_INTERNAL: "internal",
}


@dataclass
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str  # hex, as in a traceparent
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    status: str  # "unset" | "ok" | "error"
    events: list[str]
    resource: dict[str, Any] = field(default_factory=dict)


class OtlpReceiver:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.posts: list[dict[str, str]] = []  # each export's request headers
        self.bodies: list[bytes] = []  # each export as it came, for searches over every byte
        self.batches: list[
            tuple[Any, int]
        ] = []  # each accepted export's peer (its connection) and span count
        self.url = ""
        self.refusals: list[int] = []  # statuses to answer the next exports with, before accepting
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def clear(self) -> None:
        with self._lock:
            self.spans.clear()
            self.posts.clear()
            self.bodies.clear()
            self.batches.clear()
            self.refusals.clear()

    def wait_for(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 15
    ) -> list[ReceivedSpan]:
        """The spans received, once ``predicate`` holds for them (an AssertionError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans never matched; received: {[s.name for s in spans]}")
            time.sleep(0.05)

    def trace_of(self, request_id: str, count: int, timeout: float = 15) -> list[ReceivedSpan]:
        """The ``count`` spans of the trace whose server span has ``modelwire.request_id``."""

        def complete(spans: list[ReceivedSpan]) -> bool:
            return len(_trace(spans, request_id)) >= count

        return _trace(self.wait_for(complete, timeout), request_id)

    # -- the server ---------------------------------------------------------------------------

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            refusal = self.refusals.pop(0) if self.refusals else None
            if refusal is not None:
                self.posts.append({k.lower(): v for k, v in request.headers.items()})
        if refusal is not None:
            return web.Response(status=refusal, headers={"Retry-After": "0"})
        message = ExportTraceServiceRequest()
        if request.content_type == "application/x-protobuf":
            message.ParseFromString(body)
        elif request.content_type == "application/json":
            json_format.Parse(_base64_ids(body), message)
        else:
            return web.Response(status=415, text="protobuf or JSON only")
        received = []
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                received += [_span(s, resource) for s in scope_spans.spans]
        with self._lock:
            self.spans.extend(received)
            self.posts.append({k.lower(): v for k, v in request.headers.items()})
            self.bodies.append(body)
            self.batches.append(
                (request.transport.get_extra_info("peername") if request.transport else None, len(received))
            )
        if request.content_type == "application/json":
            return web.Response(body=b"{}", content_type="application/json")
        reply = ExportTraceServiceResponse().SerializeToString()
        return web.Response(body=reply, content_type="application/x-protobuf")

    def start(self) -> OtlpReceiver:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="otlp-receiver", daemon=True)
        self._thread.start()
        if not ready.wait(30):
            raise RuntimeError("OTLP receiver did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._loop = self._thread = None

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()


def _base64_ids(body: bytes) -> bytes:
    """OTLP JSON writes ids in hex where protobuf's JSON mapping has base64 (the one departure the
    OTLP spec makes from it): a wrong-length or non-hex id fails here, as a collector would refuse it."""
    doc = json.loads(body)
    for resource_spans in doc.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for name, size in (("traceId", 16), ("spanId", 8), ("parentSpanId", 8)):
                    if name in span:
                        raw = bytes.fromhex(span[name])
                        assert len(raw) == size, (name, span[name])
                        span[name] = base64.b64encode(raw).decode()
    return json.dumps(doc).encode()


def _trace(spans: list[ReceivedSpan], request_id: str) -> list[ReceivedSpan]:
    roots = [
        s for s in spans if s.kind == "server" and s.attributes.get("modelwire.request_id") == request_id
    ]
    if not roots:
        return []
    return [s for s in spans if s.trace_id == roots[0].trace_id]


def _span(span: ProtoSpan, resource: dict[str, Any]) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        kind=KINDS.get(span.kind, str(span.kind)),
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_id=span.parent_span_id.hex(),
        attributes=_attributes(span.attributes),
        status={0: "unset", 1: "ok", 2: "error"}[span.status.code],
        events=[e.name for e in span.events],
        resource=resource,
    )


def _attributes(items: Any) -> dict[str, Any]:
    return {item.key: _value(item.value) for item in items}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None
