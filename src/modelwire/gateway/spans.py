"""The gateway's spans and their W3C trace context. The request path only notes what happened
(ids, clock readings, a few values) in small records; a record is written out as OTLP spans once it
ends, through an :class:`Encoding` (:mod:`.otlp`). No OpenTelemetry SDK: noting a span costs a few
slot writes, where the SDK's cost the gateway hundreds of microseconds.

Trace context follows W3C Trace Context level 1: ``traceparent`` is ``00-<trace id>-<span id>-<flags>``
(lowercase hex; all-zero ids and version ``ff`` are invalid; a later version is read by its first
four fields), ``tracestate`` is passed on as the client sent it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from random import getrandbits
from typing import Any, Protocol

INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP's SpanKind numbers
UNSET, ERROR = 0, 2  # OTLP's status codes
SAMPLED = 1  # the trace flag
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16  # all-zero ids: invalid
_TRACESTATE_MAX = 512  # the W3C limit; a longer one is dropped, as the spec allows

Pairs = Iterable[tuple[str, Any]]  # attributes, as (key, value); a None value is left out
Fixed = tuple[str, int, tuple[int, str], Pairs]  # a span's name, kind, status and shared attributes


class Encoding(Protocol):
    """How the exporter writes spans (OTLP protobuf or JSON). What many spans share (a span's name,
    kind and status with the attributes a backend, a route or a model give it) is encoded once per
    distinct ``key`` and reused; what is a span's own (ids, times, counts) every time, in one call."""

    @property
    def known(self) -> Mapping[Hashable, Any]:
        """What :meth:`fixed` keeps, by key: read first, inline, by the spans' writers."""

    def fixed(self, key: Hashable, describe: Callable[..., Fixed], *args: Any) -> Any:
        """The span's name, kind, status and shared attributes, as ``describe(*args)`` says them,
        worked out and encoded once per ``key`` (which must tell apart everything they say; None:
        every time)."""

    def span(
        self,
        trace_id: bytes,
        trace_state: str | None,
        span_id: bytes,
        parent_id: bytes,  # empty for a trace's root
        start: int,
        end: int,
        fixed: Any,  # what fixed() returned
        pairs: Pairs = (),  # the span's own attributes (ids, counts, times), written every time
        events: Sequence[tuple[int, str]] = (),
    ) -> bytes: ...


class Record(Protocol):
    """What the exporter's queue holds: an ended span, or several of one request."""

    @property
    def spans(self) -> int:  # how many (the queue is bounded in spans)
        ...

    def write(self, encoding: Encoding) -> list[bytes]: ...


class Context:
    """Where a span sits in its trace: what goes upstream in a ``traceparent``. Ids are kept as the
    bytes they are on the wire (OTLP's), which read as the ``traceparent``'s hex."""

    __slots__ = ("flags", "span_id", "trace_id", "trace_state")

    def __init__(self, trace_id: bytes, span_id: bytes, flags: int, trace_state: str | None = None) -> None:
        self.trace_id, self.span_id, self.flags, self.trace_state = trace_id, span_id, flags, trace_state

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def traceparent(self) -> str:
        return f"00-{self.trace_id.hex()}-{self.span_id.hex()}-{'01' if self.flags & SAMPLED else '00'}"


def new_trace_id() -> bytes:
    return (getrandbits(128) or 1).to_bytes(16, "big")


def new_span_id() -> bytes:
    return (getrandbits(64) or 1).to_bytes(8, "big")


def parse(traceparent: str | None, tracestate: str | None = None) -> Context | None:
    """A client's trace context, or None when its ``traceparent`` is missing or invalid."""
    if not traceparent:
        return None
    value = traceparent.strip()
    fields = value.split("-")
    if len(fields) < 4 or len(fields[0]) != 2 or not _hex(fields[0]) or fields[0] == "ff":
        return None
    if fields[0] == "00" and len(fields) != 4:
        return None  # version 00 has exactly four fields
    trace_hex, span_hex, flags_hex = fields[1:4]
    if len(trace_hex) != 32 or len(span_hex) != 16 or len(flags_hex) != 2:
        return None
    if not (_hex(trace_hex) and _hex(span_hex) and _hex(flags_hex)):
        return None
    if trace_hex == _ZERO_TRACE or span_hex == _ZERO_SPAN:
        return None
    state = tracestate.strip() if tracestate else None
    if state is not None and (not state or len(state) > _TRACESTATE_MAX):
        state = None
    return Context(bytes.fromhex(trace_hex), bytes.fromhex(span_hex), int(flags_hex, 16) & SAMPLED, state)


def _hex(text: str) -> bool:
    return _HEX.issuperset(text)
