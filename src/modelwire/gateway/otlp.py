"""Ended spans to an OTLP/HTTP collector. A record of ended spans (:mod:`.spans`) is encoded as it
is handed over (protobuf by hand, each span by the compiled writer ``_spanwire`` where it was
built, or OTLP JSON; the attributes a backend, a route and a model give a span encoded once and
reused) into a bounded queue (a full queue drops and counts, never waits). A task on the event
loop POSTs them, in batches of ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` (512) as soon as one is full,
and whatever is left every ``OTEL_BSP_SCHEDULE_DELAY`` ms (1 s), each an
``ExportTraceServiceRequest`` over one kept-alive connection. 429, 502, 503 and 504 are retried
with backoff (``Retry-After`` respected) within the export timeout; whatever fails is dropped
with one log line per failing spell, naming the collector by host only. Nothing here raises into
the gateway.

Field numbers are those of opentelemetry-proto's ``trace.proto``, ``common.proto`` and
``resource.proto`` (v1).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import os
import struct
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from ..errors import ModelwireError
from ..providers.http1 import Http1Transport
from .spans import Fixed, Pairs, Record

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
    """The queue of ended spans and the task that sends them, both on the gateway's event loop
    (:meth:`start` there; :meth:`shutdown` sends what is left and stops it). No thread: a thread
    of its own cost the loop more than the sending itself, each batch's work taking the GIL from it."""

    def __init__(self, destination: Destination, resource: Mapping[str, Any], scope: tuple[str, str]) -> None:
        self.destination = destination
        self.encoding: Protobuf | Json = (
            Protobuf(resource, scope) if destination.protocol == "http/protobuf" else Json(resource, scope)
        )
        self.ended: deque[Record] = deque()  # handed over, not yet encoded
        self.queue: list[bytes] = []  # spans encoded, not yet sent
        self._added = self._taken = 0  # spans held = added - taken
        self._refused = self._lost = 0  # spans dropped: by add() (a full queue), on their way out
        self._failing = False
        self._stop = False
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        parts = urlsplit(destination.url)
        self._where = f"{parts.hostname}:{parts.port or ''}{parts.path}"  # never its credentials or query
        self._transport = Http1Transport(connect_timeout=destination.timeout)

    ENCODE_EVERY = 64  # records, encoded in one go: the same work cost half again one at a time

    @property
    def dropped(self) -> int:
        """Spans lost to a full queue, an encoding error or a failed export."""
        return self._refused + self._lost

    @property
    def held(self) -> int:
        """Spans handed over and not yet taken for export."""
        return self._added - self._taken

    def add(self, record: Record) -> None:
        """The sink of every ended span or request (request path: never blocks)."""
        spans = record.spans
        held = self._added - self._taken
        if held + spans > self.destination.queue_size:
            self._refused += spans
            return
        self._added += spans
        ended = self.ended
        ended.append(record)
        filled = held + spans >= self.destination.batch_size
        if len(ended) >= self.ENCODE_EVERY or filled:
            self._encode()
            if filled and self._wake is not None:
                self._wake.set()

    def _encode(self) -> None:
        """Encodes the records handed over so far (one that cannot be encoded costs its spans only)."""
        ended, queue, encoding = self.ended, self.queue, self.encoding
        while ended:
            record = ended.popleft()
            try:
                queue += record.write(encoding)
            except Exception:
                self._lost += record.spans
                self._taken += record.spans

    def start(self) -> None:
        """Starts sending, from the running event loop."""
        self._stop = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="modelwire-trace-export")

    async def shutdown(self) -> None:
        """Sends what is held (within the export timeout) and stops."""
        self._stop = True
        if self._wake is not None:
            self._wake.set()
        if self._task is not None:
            with contextlib.suppress(TimeoutError):  # then wait_for cancelled it: the rest is dropped
                await asyncio.wait_for(self._task, self.destination.timeout + 1)
        await self._transport.aclose()

    async def _run(self) -> None:
        """Whole batches as soon as there are some; everything held once the delay has passed
        without a batch filling up."""
        assert self._wake is not None
        wake, delay = self._wake, self.destination.delay
        while not self._stop:
            try:
                async with asyncio.timeout(delay):
                    await wake.wait()
            except TimeoutError:
                pass
            filled = wake.is_set() and not self._stop
            wake.clear()
            if not filled:
                self._encode()
            await self._send_queued(whole=filled)
        self._encode()
        await self._send_queued(whole=False)

    async def _send_queued(self, whole: bool) -> None:
        """Batches of what is encoded: only whole ones (``whole``), or all of it."""
        size = self.destination.batch_size
        while len(self.queue) >= size or (not whole and self.queue):
            batch, self.queue = self.queue[:size], self.queue[size:]
            self._taken += len(batch)
            await self._export(batch)

    async def _export(self, spans: list[bytes]) -> None:
        try:
            problem = await self._post(self.encoding.batch(spans))
        except Exception as exc:  # an encoding bug must not end the exports
            problem = type(exc).__name__
        if problem is None:
            self._failing = False
            return
        self._lost += len(spans)
        if not self._failing:
            self._failing = True
            log.warning(
                "trace export to %s failed (%s); %d spans dropped so far", self._where, problem, self.dropped
            )

    async def _post(self, body: bytes) -> str | None:
        """POSTs one batch, retrying what the spec says may be retried: None when accepted, else why not."""
        target = self.destination
        headers = {**target.headers, "Content-Type": _CONTENT_TYPES[target.protocol]}
        if target.gzip:
            body = await asyncio.to_thread(gzip.compress, body, 6)  # zlib lets go of the GIL
            headers["Content-Encoding"] = "gzip"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + target.timeout
        backoff = 0.5
        while True:
            status, wait, reply = await self._exchange(body, headers, deadline - loop.time())
            if 200 <= status < 300:
                return _partial(reply, target.protocol)
            problem = f"status {status}" if status else reply.decode()
            if status and status not in RETRYABLE:
                return problem
            wait = wait if wait is not None else backoff
            if self._stop or loop.time() + wait >= deadline:
                return problem
            await asyncio.sleep(wait)
            backoff = min(backoff * 2, 8)

    async def _exchange(
        self, body: bytes, headers: dict[str, str], left: float
    ) -> tuple[int, float | None, bytes]:
        """One POST over the kept-alive connection: its status, the ``Retry-After`` wait it asked
        for, and its body (status 0 and why, when it could not be made)."""
        try:
            async with asyncio.timeout(max(0.1, left)):
                reply = await self._transport.send("POST", self.destination.url, headers, body)
                data = await reply.read()
        except (ModelwireError, OSError, TimeoutError) as exc:
            return 0, None, type(exc).__name__.encode()
        return reply.status, _retry_after(reply.headers.get("Retry-After")), data


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
# A span's fixed-size fields, tags and sizes in one pack: trace_id 1 and span_id 2 (bytes), start 7
# and end 8 (fixed64); a child's parent_span_id 4 (bytes) too.
_SPAN_HEAD = struct.Struct("<2s16s2s8sBQBQ").pack
_CHILD_SPAN_HEAD = struct.Struct("<2s16s2s8s2s8sBQBQ").pack
_EVENT_TIME = struct.Struct("<BQ").pack  # an event's time_unix_nano, field 1 (fixed64)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (every field number used here is under 16: its tag is one byte)."""
    size = len(payload)
    if size < 0x80:
        return _SMALL[number << 3 | 2] + _SMALL[size] + payload
    if size < 0x4000:  # a span, mostly: a two-byte size without the loop
        return bytes((number << 3 | 2, size & 0x7F | 0x80, size >> 7)) + payload
    return _SMALL[number << 3 | 2] + _varint(size) + payload


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


def _span(
    trace_id: bytes,
    trace_state: str | None,
    span_id: bytes,
    parent_id: bytes,
    start: int,
    end: int,
    fixed: bytes,
    pairs: Pairs = (),
    events: Sequence[tuple[int, str]] = (),
) -> bytes:
    """A span as a ``ScopeSpans.spans`` field (2): its ids and times in one pack, then ``fixed``
    (name, kind, status, shared attributes), ``pairs`` (its own attributes; None values left out),
    its tracestate and events. ``_spanwire.span`` writes the same bytes (tests/test_spanwire.py)."""
    if parent_id:
        head = _CHILD_SPAN_HEAD(
            b"\n\x10", trace_id, b"\x12\x08", span_id, b'"\x08', parent_id, 0x39, start, 0x41, end
        )
    else:
        head = _SPAN_HEAD(b"\n\x10", trace_id, b"\x12\x08", span_id, 0x39, start, 0x41, end)
    body = head + fixed + _one_offs(pairs) if pairs else head + fixed
    if trace_state:
        body += _field(3, trace_state.encode())
    for at, event in events:
        body += _field(11, _EVENT_TIME(0x09, at) + _field(2, event.encode()))
    return _field(2, body)


# Protobuf.span: the compiled writer (_spanwire.c, built where there is a C compiler; the same bytes)
# unless MODELWIRE_NO_EXTENSIONS is set to a true value (as AIOHTTP_NO_EXTENSIONS is), else _span.
_write_span: Callable[..., bytes] = _span
if os.environ.get("MODELWIRE_NO_EXTENSIONS", "").strip().lower() in ("", "0", "false", "no", "off"):
    with contextlib.suppress(ImportError):
        from ._spanwire import span as _write_span


class Protobuf:
    """Spans as ``ScopeSpans.spans`` fields, batches as ``ExportTraceServiceRequest`` protobuf bytes."""

    CACHED = 4096  # encodings kept per cache: bounded, as a client may send any model name

    def __init__(self, resource: Mapping[str, Any], scope: tuple[str, str]) -> None:
        self.known: dict[Hashable, bytes] = {}  # fixed()'s, by key
        self._resource = _field(1, b"".join(_attribute(1, k, v) for k, v in resource.items()))
        self._scope = _field(1, _field(1, scope[0].encode()) + _field(2, scope[1].encode()))

    def batch(self, spans: list[bytes]) -> bytes:
        return _field(1, self._resource + _field(2, self._scope + b"".join(spans)))

    def fixed(self, key: Hashable, describe: Callable[..., Fixed], *args: Any) -> bytes:
        """The name (5), kind (6), status (15) and attribute (9) fields, once per ``key`` (None: not kept)."""
        known = self.known.get(key)
        if known is None:
            name, kind, (code, message), pairs = describe(*args)
            known = _field(5, name.encode()) + bytes((0x30, kind))
            if code:
                known += _field(
                    15, (_field(2, message.encode()) if message else b"") + b"\x18" + _SMALL[code]
                )
            known += b"".join([_attribute(9, k, v) for k, v in pairs if v is not None])
            if key is not None:
                _bounded(self.known)[key] = known
        return known

    # The span as a ``ScopeSpans.spans`` field: compiled (``_spanwire``) when it was built, else ``_span``.
    span = staticmethod(_write_span)


def _one_offs(pairs: Pairs) -> bytes:
    """A span's ``KeyValue`` fields (9): a string's or a double's value after the field's head,
    which is worked out once per name (and a string's size); anything else (a count, a flag) whole,
    encoded once per value."""
    out = []
    heads, known = _HEADS, _PAIRS
    for key, value in pairs:
        kind = value.__class__
        if kind is str:
            text = value.encode()
            head = heads.get((key, len(text)))
            if head is None:
                if len(text) > 0x7F:  # long (captured content): too many sizes to keep a head each
                    out.append(_attribute(9, key, value))
                    continue
                head = _string_head(key, value, len(text))
            out.append(head + text)
        elif kind is float:
            out.append((heads.get(key) or _double_head(key)) + _DOUBLE(value))
        elif kind is list or kind is tuple:
            out.append(_attribute(9, key, value))
        elif value is not None:
            pair = known.get((key, value, kind))  # the type too: True == 1, but they encode apart
            if pair is None:
                pair = _bounded(known)[key, value, kind] = _attribute(9, key, value)
            out.append(pair)
    return b"".join(out)


def _string_head(key: str, value: str, size: int) -> bytes:
    """A string KeyValue field's bytes up to its value's (``size`` of them, last), kept by name and size."""
    head = _bounded(_HEADS)[key, size] = _attribute(9, key, value)[: -size or None]
    return head


def _double_head(key: str) -> bytes:
    """A double KeyValue field's bytes up to its value's 8 (AnyValue{double_value 4}), kept by name."""
    head = _bounded(_HEADS)[key] = _attribute(9, key, 0.0)[:-8]
    return head


_HEADS: dict[Any, bytes] = {}
_PAIRS: dict[tuple[str, Any, type], bytes] = {}
_DOUBLE = struct.Struct("<d").pack


def _bounded(cache: dict[Any, Any]) -> dict[Any, Any]:
    """The cache, emptied first when full (one-off values filled it): start over."""
    if len(cache) >= Protobuf.CACHED:
        cache.clear()
    return cache


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


def _json_attributes(attributes: Pairs) -> list[dict[str, Any]]:
    return [{"key": k, "value": _json_value(v)} for k, v in attributes if v is not None]


class Json:
    """Spans and batches in the OTLP JSON mapping (ids as hex, enums as numbers). Kept simple: the
    protobuf encoding is the default and the one made fast."""

    def __init__(self, resource: Mapping[str, Any], scope: tuple[str, str]) -> None:
        self.known: dict[Hashable, Any] = {}  # never filled: a JSON span is built whole each time
        head = {"attributes": _json_attributes(resource.items())}
        self._head = (
            b'{"resourceSpans":[{"resource":'
            + orjson.dumps(head)
            + b',"scopeSpans":[{"scope":'
            + orjson.dumps({"name": scope[0], "version": scope[1]})
            + b',"spans":['
        )

    def fixed(self, key: Hashable, describe: Callable[..., Fixed], *args: Any) -> dict[str, Any]:
        name, kind, (code, message), pairs = describe(*args)
        out: dict[str, Any] = {"name": name, "kind": kind, "attributes": _json_attributes(pairs)}
        if code:
            out["status"] = {"code": code, "message": message}
        return out

    @staticmethod
    def span(
        trace_id: bytes,
        trace_state: str | None,
        span_id: bytes,
        parent_id: bytes,
        start: int,
        end: int,
        fixed: dict[str, Any],
        pairs: Pairs = (),
        events: Sequence[tuple[int, str]] = (),
    ) -> bytes:
        out: dict[str, Any] = {
            "traceId": trace_id.hex(),
            "spanId": span_id.hex(),
            **fixed,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end),
            "attributes": fixed["attributes"] + _json_attributes(pairs),
        }
        if parent_id:
            out["parentSpanId"] = parent_id.hex()
        if trace_state:
            out["traceState"] = trace_state
        if events:
            out["events"] = [{"timeUnixNano": str(at), "name": event} for at, event in events]
        return orjson.dumps(out)

    def batch(self, spans: list[bytes]) -> bytes:
        return self._head + b",".join(spans) + b"]}]}]}"


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


def _retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds (capped at 30), or None when there is none to read."""
    try:
        return min(max(float(value), 0.0), 30.0) if value else None
    except ValueError:
        return None


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
