"""The gateway's spans and their W3C trace context: small records, filled on the request path and
handed, once ended, to a sink (the exporter's queue, :mod:`.otlp`). No OpenTelemetry SDK: a span
here costs a few attribute writes, where the SDK's cost the gateway hundreds of microseconds.

Trace context follows W3C Trace Context level 1: ``traceparent`` is ``00-<trace id>-<span id>-<flags>``
(lowercase hex; all-zero ids and version ``ff`` are invalid; a later version is read by its first
four fields), ``tracestate`` is passed on as the client sent it.
"""

from __future__ import annotations

from collections.abc import Callable
from random import getrandbits
from time import time_ns
from typing import Any

INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP's SpanKind numbers
UNSET, ERROR = 0, 2  # OTLP's status codes
SAMPLED = 1  # the trace flag
_HEX = frozenset("0123456789abcdef")
_TRACESTATE_MAX = 512  # the W3C limit; a longer one is dropped, as the spec allows


class Context:
    """Where a span sits in its trace: what goes upstream in a ``traceparent``."""

    __slots__ = ("flags", "span_id", "trace_id", "trace_state")

    def __init__(self, trace_id: int, span_id: int, flags: int, trace_state: str | None = None) -> None:
        self.trace_id, self.span_id, self.flags, self.trace_state = trace_id, span_id, flags, trace_state

    @property
    def sampled(self) -> bool:
        return bool(self.flags & SAMPLED)

    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"


class Span(Context):
    """One recorded operation. Ended once; then the sink has it and it is no longer touched."""

    __slots__ = (
        "attributes",
        "end_ns",
        "events",
        "kind",
        "message",
        "name",
        "parent_id",
        "sink",
        "start_ns",
        "status",
    )

    def __init__(
        self,
        sink: Callable[[Span], None],
        name: str,
        kind: int,
        parent: Context | None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        # Context's fields set here, not through its __init__: a span is made on the request path.
        if parent is None:
            self.trace_id, self.trace_state, self.parent_id = getrandbits(128) or 1, None, 0
        else:
            self.trace_id, self.trace_state, self.parent_id = (
                parent.trace_id,
                parent.trace_state,
                parent.span_id,
            )
        self.span_id, self.flags = getrandbits(64) or 1, SAMPLED
        self.sink, self.name, self.kind = sink, name, kind
        self.attributes = attributes if attributes is not None else {}
        self.events: list[tuple[int, str]] = []
        self.status, self.message = UNSET, ""
        self.start_ns, self.end_ns = time_ns(), 0

    def event(self, name: str) -> None:
        self.events.append((time_ns(), name))

    def fail(self, kind: str, message: str | None = None) -> None:
        """In error (``error.type`` ``kind``), and ended."""
        self.attributes["error.type"] = kind
        self.status, self.message = ERROR, message or ""
        self.end()

    def end(self) -> None:
        if not self.end_ns:
            self.end_ns = time_ns()
            self.sink(self)


def new_trace_id() -> int:
    return getrandbits(128) or 1


def new_span_id() -> int:
    return getrandbits(64) or 1


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
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    state = tracestate.strip() if tracestate else None
    if state is not None and (not state or len(state) > _TRACESTATE_MAX):
        state = None
    return Context(trace_id, span_id, int(flags_hex, 16) & SAMPLED, state)


def unsampled(parent: Context | None) -> Context:
    """The context of a request left out by sampling: the client's trace (or a new one), marked so."""
    if parent is None:
        return Context(new_trace_id(), new_span_id(), 0)
    return Context(parent.trace_id, new_span_id(), 0, parent.trace_state)


def _hex(text: str) -> bool:
    return _HEX.issuperset(text)
