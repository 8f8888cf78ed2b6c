"""Ended spans to an OTLP/HTTP collector. A span is encoded as it ends (protobuf by hand, or OTLP
JSON) into a bounded queue of bytes (a full queue drops and counts, never waits); a thread, every
``OTEL_BSP_SCHEDULE_DELAY`` ms (1 s) or as soon as a batch is full, wraps a batch of them in an
``ExportTraceServiceRequest`` and POSTs it. (Encoding in the thread instead cost twice as much:
span objects kept alive until export, and the thread contending for the GIL.) 429, 502, 503 and
504 are retried with backoff (``Retry-After`` respected) within the export timeout; whatever fails
is dropped with one log line per failing spell, naming the collector by host only. Nothing here
raises into the gateway.

Field numbers are those of opentelemetry-proto's ``trace.proto``, ``common.proto`` and
``resource.proto`` (v1).
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from .spans import Span

log = logging.getLogger("modelwire.gateway.traces")

RETRYABLE = frozenset({429, 502, 503, 504})
_CONTENT_TYPES = {"http/protobuf": "application/x-protobuf", "http/json": "application/json"}


@dataclass(frozen=True, slots=True)
class Destination:
    """Where and how batches go: from the ``telemetry:`` settings, else the ``OTEL_*`` variables."""

    url: str
    headers: dict[str, str]
    protocol: str  # http/protobuf | http/json
    timeout: float  # seconds, per export (its retries included)
    gzip: bool
    delay: float  # seconds between exports
    queue_size: int
    batch_size: int

    @classmethod
    def of(
        cls, url: str | None, headers: Mapping[str, str] | None, protocol: str, env: Mapping[str, str]
    ) -> Destination:
        if url is None:
            url = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
                env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") + "/v1/traces"
            )
        if headers is None:
            headers = _pairs(
                env.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS")
            )
        compression = env.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION") or env.get(
            "OTEL_EXPORTER_OTLP_COMPRESSION"
        )
        timeout = _number(env, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"), 10_000)
        batch = max(1, int(_number(env, ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), 512)))
        return cls(
            url=url,
            headers=dict(headers),
            protocol=protocol,
            timeout=timeout / 1000,
            gzip=(compression or "").strip().lower() == "gzip",
            delay=_number(env, ("OTEL_BSP_SCHEDULE_DELAY",), 1000) / 1000,
            queue_size=max(batch, int(_number(env, ("OTEL_BSP_MAX_QUEUE_SIZE",), 2048))),
            batch_size=batch,
        )


class Exporter:
    """The queue of ended spans and the thread that sends them (:meth:`start`; :meth:`shutdown`
    sends what is left and stops it)."""

    def __init__(self, destination: Destination, resource: Mapping[str, Any], scope: tuple[str, str]) -> None:
        self.destination = destination
        self.encoding: Protobuf | Json = (
            Protobuf(resource, scope) if destination.protocol == "http/protobuf" else Json(resource, scope)
        )
        self.queue: deque[bytes] = deque()  # ended spans, encoded
        self.dropped = 0  # spans lost to a full queue or a failed export
        self._failing = False
        self._wake = threading.Event()
        self._stop = False
        parts = urlsplit(destination.url)
        self._where = f"{parts.hostname}:{parts.port or ''}{parts.path}"  # never its credentials or query
        self._thread: threading.Thread | None = None

    def add(self, span: Span) -> None:
        """The sink of every ended span (request path: never blocks)."""
        queue = self.queue
        if len(queue) >= self.destination.queue_size:
            self.dropped += 1
            return
        try:
            queue.append(self.encoding.span(span))
        except Exception:  # a value that cannot be encoded costs its span, never the request
            self.dropped += 1
        if len(queue) == self.destination.batch_size:
            self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modelwire-trace-export", daemon=True)
        self._thread.start()
        os.register_at_fork(after_in_child=self._restart)

    def shutdown(self) -> None:
        """Send what is queued and stop the thread (blocks up to the export timeout: run off the loop)."""
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.destination.timeout + 1)

    def _restart(self) -> None:  # a forked worker has the queue but not the thread
        self.queue.clear()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelwire-trace-export", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.destination.delay)
            self._wake.clear()
            self._send_queued()
        self._send_queued()

    def _send_queued(self) -> None:
        queue, size = self.queue, self.destination.batch_size
        while queue:
            batch = [queue.popleft() for _ in range(min(size, len(queue)))]
            try:
                problem = self._post(self.encoding.batch(batch))
            except Exception as exc:  # an encoding bug must not kill the thread
                problem = type(exc).__name__
            if problem is None:
                self._failing = False
                continue
            self.dropped += len(batch)
            if not self._failing:
                self._failing = True
                log.warning(
                    "trace export to %s failed (%s); %d spans dropped so far",
                    self._where,
                    problem,
                    self.dropped,
                )

    def _post(self, body: bytes) -> str | None:
        """POSTs one batch, retrying what the spec says may be retried: None when accepted, else why not."""
        target = self.destination
        headers = {**target.headers, "Content-Type": _CONTENT_TYPES[target.protocol]}
        if target.gzip:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        deadline = time.monotonic() + target.timeout
        backoff = 0.5
        while True:
            left = deadline - time.monotonic()
            try:
                request = urllib.request.Request(target.url, body, headers, method="POST")
                with urllib.request.urlopen(request, timeout=max(0.1, left)) as reply:
                    return _partial(reply.read(), target.protocol)
            except urllib.error.HTTPError as exc:
                status, wait = exc.code, _retry_after(exc.headers.get("Retry-After"), backoff)
                exc.close()
                if status not in RETRYABLE:
                    return f"status {status}"
                problem = f"status {status}"
            except (OSError, ValueError) as exc:
                problem, wait = type(exc).__name__, backoff
            if self._stop or time.monotonic() + wait >= deadline:
                return problem
            time.sleep(wait)
            backoff = min(backoff * 2, 8)


def resource_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``key=value,…``, percent-encoded)."""
    return _pairs(env.get("OTEL_RESOURCE_ATTRIBUTES"))


# -- protobuf --------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]
_LOW64 = (1 << 64) - 1
# A span's fixed-size fields in one pack each: trace_id 1 + span_id 2 (bytes, big-endian as the
# ids read in hex), parent_span_id 4, kind 6 (a one-byte varint) + start 7 and end 8 (fixed64).
_IDS = struct.Struct(">BBQQBBQ").pack
_PARENT = struct.Struct(">BBQ").pack
_KIND_TIMES = struct.Struct("<BBBQBQ").pack


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (every field number used here is under 16: its tag is one byte)."""
    size = len(payload)
    return _SMALL[number << 3 | 2] + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _value(value: Any) -> bytes:
    """An ``AnyValue``'s payload."""
    if isinstance(value, str):
        return _field(1, value.encode())
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + struct.pack("<d", value)
    if isinstance(value, list | tuple):
        return _field(5, b"".join(_field(1, _value(v)) for v in value))
    return _field(1, str(value).encode())


def _attribute(number: int, key: str, value: Any) -> bytes:
    """A ``KeyValue`` as field ``number`` of its message."""
    return _field(number, _field(1, key.encode()) + _field(2, _value(value)))


class Protobuf:
    """Batches as ``ExportTraceServiceRequest`` protobuf bytes."""

    CACHED = 4096  # encoded attributes kept: most repeat (operation, path, model, backend, status …)

    def __init__(self, resource: Mapping[str, Any], scope: tuple[str, str]) -> None:
        self._cache: dict[tuple[str, Any, type], bytes] = {}
        self._resource = _field(1, b"".join(_attribute(1, k, v) for k, v in resource.items()))
        self._scope = _field(1, _field(1, scope[0].encode()) + _field(2, scope[1].encode()))

    def batch(self, spans: list[bytes]) -> bytes:
        return _field(1, self._resource + _field(2, self._scope + b"".join(spans)))

    def _attributes(self, attributes: Mapping[str, Any]) -> bytes:
        out = []
        cache = self._cache
        for key, value in attributes.items():
            kind = value.__class__
            if kind is list or kind is tuple:
                out.append(_attribute(9, key, value))
                continue
            pair = cache.get((key, value, kind))  # the type too: True == 1, but they encode apart
            if pair is None:
                if value is None:
                    continue
                pair = _attribute(9, key, value)
                if len(cache) >= self.CACHED:  # one-off values (request ids) filled it: start over
                    cache.clear()
                cache[key, value, kind] = pair
            out.append(pair)
        return b"".join(out)

    def span(self, span: Span) -> bytes:
        """The span as a ``ScopeSpans.spans`` field."""
        trace_id = span.trace_id
        parts = [_IDS(0x0A, 16, trace_id >> 64, trace_id & _LOW64, 0x12, 8, span.span_id)]
        if span.trace_state:
            parts.append(_field(3, span.trace_state.encode()))
        if span.parent_id:
            parts.append(_PARENT(0x22, 8, span.parent_id))
        parts += (
            _field(5, span.name.encode()),
            _KIND_TIMES(0x30, span.kind, 0x39, span.start_ns, 0x41, span.end_ns),
            self._attributes(span.attributes),
        )
        for at, name in span.events:
            parts.append(_field(11, b"\x09" + struct.pack("<Q", at) + _field(2, name.encode())))
        if span.status:
            status = (
                (_field(2, span.message.encode()) if span.message else b"") + b"\x18" + _SMALL[span.status]
            )
            parts.append(_field(15, status))
        return _field(2, b"".join(parts))


# -- JSON ------------------------------------------------------------------------------------------


def _json_value(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 as a string, per the OTLP JSON mapping
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [_json_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _json_attributes(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _json_value(v)} for k, v in attributes.items() if v is not None]


class Json:
    """Batches in the OTLP JSON mapping (ids as hex, enums as numbers)."""

    def __init__(self, resource: Mapping[str, Any], scope: tuple[str, str]) -> None:
        head = {"attributes": _json_attributes(resource)}
        self._head = (
            b'{"resourceSpans":[{"resource":'
            + orjson.dumps(head)
            + b',"scopeSpans":[{"scope":'
            + orjson.dumps({"name": scope[0], "version": scope[1]})
            + b',"spans":['
        )

    def span(self, span: Span) -> bytes:
        return orjson.dumps(_json_span(span))

    def batch(self, spans: list[bytes]) -> bytes:
        return self._head + b",".join(spans) + b"]}]}]}"


def _json_span(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": f"{span.trace_id:032x}",
        "spanId": f"{span.span_id:016x}",
        "name": span.name,
        "kind": span.kind,
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "attributes": _json_attributes(span.attributes),
    }
    if span.parent_id:
        out["parentSpanId"] = f"{span.parent_id:016x}"
    if span.trace_state:
        out["traceState"] = span.trace_state
    if span.events:
        out["events"] = [{"timeUnixNano": str(at), "name": name} for at, name in span.events]
    if span.status:
        out["status"] = {"code": span.status, "message": span.message}
    return out


# -- replies and variables ---------------------------------------------------------------------


def _partial(reply: bytes, protocol: str) -> str | None:
    """An accepted export's partial success: None when every span was taken, else what the
    collector said (``ExportTraceServiceResponse.partial_success``: rejected_spans 1, error_message 2)."""
    if not reply:
        return None
    rejected, message = 0, ""
    if protocol == "http/json":
        try:
            partial = orjson.loads(reply).get("partialSuccess") or {}
            rejected, message = int(partial.get("rejectedSpans") or 0), str(partial.get("errorMessage") or "")
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            return None
    else:
        for number, value in _fields(reply):
            if number == 1 and isinstance(value, bytes):
                for inner, item in _fields(value):
                    if inner == 1 and isinstance(item, int):
                        rejected = item
                    elif inner == 2 and isinstance(item, bytes):
                        message = item.decode(errors="replace")
    if rejected:
        return f"{rejected} spans rejected: {message[:200]}"
    return None


def _fields(data: bytes) -> Iterable[tuple[int, int | bytes]]:
    """The varint and length-delimited fields of a protobuf message (stops at anything else)."""
    at = 0
    while at < len(data):
        key, at = _read_varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(data, at)
            yield number, value
        elif wire == 2:
            size, at = _read_varint(data, at)
            yield number, data[at : at + size]
            at += size
        else:
            return


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7
    return value, at


def _retry_after(value: str | None, default: float) -> float:
    try:
        return min(max(float(value), 0.0), 30.0) if value else default
    except ValueError:
        return default


def _pairs(text: str | None) -> dict[str, str]:
    """``key=value,…`` with percent-encoding, as the OTEL_* header and resource variables are written."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip())] = unquote(value.strip())
    return out


def _number(env: Mapping[str, str], names: tuple[str, ...], default: float) -> float:
    for name in names:
        try:
            value = float(env.get(name, ""))
        except ValueError:
            continue
        if value > 0:
            return value
    return default
