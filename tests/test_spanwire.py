"""The compiled span writer (``modelwire.gateway._spanwire``, from ``_spanwire.c``) against the
pure-Python one (``otlp._span``): built here (a C compiler is on every machine that runs these),
chosen by default, left aside with ``MODELWIRE_NO_EXTENSIONS``, and writing the same bytes for
everything the Python one accepts, bytes that opentelemetry-proto reads back as they were meant."""

from __future__ import annotations

import enum
import math
import os
import struct
import subprocess
import sys
import tracemalloc
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans

import modelwire.gateway._spanwire as spanwire
from modelwire.gateway import otlp

TRACE = bytes(range(1, 17))
SPAN = bytes(range(20, 28))
PARENT = bytes(range(40, 48))
FIXED = b"*\x04chat0\x02"  # name 5 "chat", kind 6 = 2 (server), as Protobuf.fixed writes them


class Colour(enum.StrEnum):
    RED = "rød"


class Level(enum.IntEnum):
    HIGH = -3


class Named:
    def __str__(self) -> str:
        return "named ✓"


OTHERS = [Fraction(1, 3), Decimal("-1.50"), b"\x00raw", Named(), Colour.RED, Level.HIGH, range(2), 1j]

# Strings of every size class (one byte of size, two, three), mostly not ASCII.
texts = st.text(max_size=20) | st.builds(
    lambda part, times: part * times, st.text(min_size=1, max_size=4), st.integers(1, 6000)
)
scalars = (
    texts
    | st.booleans()
    | st.integers(-(2**80), 2**80)
    | st.sampled_from([0, 127, 128, 2**63 - 1, 2**63, 2**64 - 1, 2**64, -1, -(2**63), -(2**64) - 1])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([-0.0, math.nan, -math.inf, 5e-324])
    | st.sampled_from(OTHERS)
)
values = st.recursive(
    scalars | st.none(),  # None: left out as a pair's value, "None" in an array
    lambda inner: st.lists(inner, max_size=4) | st.lists(inner, max_size=4).map(tuple),
    max_leaves=12,
)
pairs = st.lists(st.tuples(st.text(max_size=30) | texts, values), max_size=8)
events = st.lists(st.tuples(st.integers(0, 2**64 - 1), texts), max_size=3)
times = st.integers(0, 2**64 - 1)
parents = st.just(b"") | st.binary(min_size=8, max_size=8)
states = st.none() | st.just("") | texts
fixeds = st.binary(max_size=200) | st.builds(lambda b, n: b * n, st.binary(min_size=1), st.integers(1, 3000))


def both(*args: Any) -> bytes:
    """What both writers write, checked to be the same."""
    compiled = spanwire.span(*args)
    assert compiled == otlp._span(*args)
    return compiled


def test_the_compiled_writer_is_built_and_used_by_default() -> None:
    assert spanwire.__file__.endswith((".so", ".pyd"))
    if not os.environ.get("MODELWIRE_NO_EXTENSIONS"):
        assert otlp.Protobuf.span is spanwire.span


@pytest.mark.parametrize(("setting", "compiled"), [(None, True), ("0", True), ("1", False), ("true", False)])
def test_modelwire_no_extensions_chooses_the_python_writer(setting: str | None, compiled: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MODELWIRE_NO_EXTENSIONS"}
    if setting is not None:
        env["MODELWIRE_NO_EXTENSIONS"] = setting
    code = (
        "from modelwire.gateway.otlp import Protobuf; print(Protobuf.span.__module__, Protobuf.span.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    expected = "modelwire.gateway._spanwire span" if compiled else "modelwire.gateway.otlp _span"
    assert out.stdout.strip() == expected


@given(
    trace_id=st.binary(min_size=16, max_size=16),
    state=states,
    span_id=st.binary(min_size=8, max_size=8),
    parent=parents,
    start=times,
    end=times,
    fixed=fixeds,
    pairs=pairs,
    events=events,
)
def test_same_bytes_as_the_python_writer(
    trace_id: bytes,
    state: str | None,
    span_id: bytes,
    parent: bytes,
    start: int,
    end: int,
    fixed: bytes,
    pairs: list[tuple[str, Any]],
    events: list[tuple[int, str]],
) -> None:
    both(trace_id, state, span_id, parent, start, end, fixed, pairs, events)
    both(trace_id, state, span_id, parent, start, end, fixed, tuple(pairs))
    both(trace_id, state, span_id, parent, start, end, fixed)


def plain(value: AnyValue) -> Any:
    """An AnyValue as the Python value it was written from (an int as int64, a float as its bits)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [plain(v) for v in value.array_value.values]
    if kind == "double_value":
        return struct.pack("<d", value.double_value)
    return getattr(value, kind)


def meant(value: Any) -> Any:
    """What an attribute's value is meant to read back as."""
    if isinstance(value, str | bool):
        return value
    if isinstance(value, int):
        return (value + 2**63) % 2**64 - 2**63
    if isinstance(value, float):
        return struct.pack("<d", value)
    if isinstance(value, list | tuple):
        return [meant(v) for v in value]
    return str(value)


@given(state=states, parent=parents, start=times, end=times, pairs=pairs, events=events)
def test_read_back_by_opentelemetry_proto(
    state: str | None,
    parent: bytes,
    start: int,
    end: int,
    pairs: list[tuple[str, Any]],
    events: list[tuple[int, str]],
) -> None:
    data = both(TRACE, state, SPAN, parent, start, end, FIXED, pairs, events)
    scope = ScopeSpans.FromString(data)
    assert len(scope.spans) == 1
    span = scope.spans[0]
    assert (span.trace_id, span.span_id, span.parent_span_id) == (TRACE, SPAN, parent)
    assert (span.start_time_unix_nano, span.end_time_unix_nano) == (start, end)
    assert (span.name, span.kind, span.trace_state) == ("chat", 2, state or "")
    assert [(a.key, plain(a.value)) for a in span.attributes] == [
        (k, meant(v)) for k, v in pairs if v is not None
    ]
    assert [(e.time_unix_nano, e.name) for e in span.events] == events


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 2**21 - 1, 2**21])
def test_sizes_at_every_varint_boundary(size: int) -> None:
    """A string and a span each as long as the boundaries of a one, two, three and four-byte size."""
    text = "é" * (size // 2) + "x" * (size % 2)
    data = both(TRACE, text, SPAN, PARENT, 1, 2, FIXED, [("k", text), (text, [text])], [(3, text)])
    span = ScopeSpans.FromString(data).spans[0]
    assert span.trace_state == span.attributes[0].value.string_value == span.attributes[1].key == text
    head = len(both(TRACE, None, SPAN, b"", 1, 2, b"")) - 2  # its ids and times
    for body in range(max(head, size - 2), size + 3):  # a span whose body is near the boundary
        data = both(TRACE, None, SPAN, b"", 1, 2, b"\x00" * (body - head))
        assert data[0] == 0x12
        assert otlp._read_varint(data, 1) == (body, len(data) - body)


@pytest.mark.parametrize(
    "value",
    [
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        2**64,
        -(2**64) - 1,
        2**200,
        -(2**200),
        True,
        False,
        0.0,
        -0.0,
        math.nan,
        math.inf,
        -math.inf,
        5e-324,
        "",
        "ü" * 64,
        "\U0001f600",
        [],
        (),
        [None, [None, ()], (True, 1, 1.0, "1")],
        [[[[["deep"]]]]],
        *OTHERS,
    ],
    ids=lambda value: f"{type(value).__name__}-{str(value)[:24]}",  # the same in every worker
)
def test_every_kind_of_value(value: Any) -> None:
    data = both(TRACE, None, SPAN, b"", 0, 0, b"", [("k", value), ("left out", None)])
    (attribute,) = ScopeSpans.FromString(data).spans[0].attributes
    assert (attribute.key, plain(attribute.value)) == ("k", meant(value))


def test_ids_are_packed_as_struct_packs_them() -> None:
    """Short ids padded with zeros, long ones cut, bytearray taken, as struct's "16s" and "8s" do."""
    for trace_id, span_id, parent in [
        (b"short", b"s", b"p"),
        (TRACE + b"more", SPAN + b"more", PARENT + b"more"),
        (bytearray(TRACE), bytearray(SPAN), bytearray(PARENT)),
    ]:
        span = ScopeSpans.FromString(both(trace_id, "", span_id, parent, 1, 2, memoryview(FIXED))).spans[0]
        assert span.trace_id == bytes(trace_id[:16]).ljust(16, b"\x00")
        assert span.parent_span_id == bytes(parent[:8]).ljust(8, b"\x00")


def test_pairs_and_events_from_any_iterable() -> None:
    pairs = [("a", 1), ["b", "two"]]
    expected = both(TRACE, None, SPAN, b"", 1, 2, FIXED, pairs, [(5, "e")])
    for writer in (spanwire.span, otlp._span):
        assert writer(TRACE, None, SPAN, b"", 1, 2, FIXED, iter(pairs), iter([(5, "e")])) == expected
        assert writer(TRACE, None, SPAN, b"", 1, 2, FIXED, (p for p in pairs), ([5, "e"],)) == expected
    assert len(ScopeSpans.FromString(expected).spans[0].attributes) == 2


def test_an_array_changed_while_it_is_written() -> None:
    """An element's str() may empty the list being written: the rest is left out, nothing breaks."""

    class Clearing:
        def __init__(self, into: list[Any]) -> None:
            self.into = into

        def __str__(self) -> str:
            self.into.clear()
            return "cleared"

    for writer in (spanwire.span, otlp._span):
        array: list[Any] = ["a"]
        array += [Clearing(array), "b", "c"]
        span = ScopeSpans.FromString(writer(TRACE, None, SPAN, b"", 1, 2, b"", [("k", array)])).spans[0]
        assert plain(span.attributes[0].value) == ["a", "cleared"]


def test_bad_keys_raise_in_both_writers() -> None:
    for key in (1, b"bytes", None, ("k",)):
        with pytest.raises(TypeError):
            spanwire.span(TRACE, None, SPAN, b"", 1, 2, b"", [(key, "v")])
        with pytest.raises((TypeError, AttributeError)):  # Python: `1 .encode()`, an AttributeError
            otlp._span(TRACE, None, SPAN, b"", 1, 2, b"", [(key, "v")])
    for writer in (spanwire.span, otlp._span):
        with pytest.raises(UnicodeEncodeError):
            writer(TRACE, None, SPAN, b"", 1, 2, b"", [("lone \udc80", "v")])
        with pytest.raises(UnicodeEncodeError):
            writer(TRACE, None, SPAN, b"", 1, 2, b"", [("k", ["lone \ud800"])])
        with pytest.raises(UnicodeEncodeError):
            writer(TRACE, "lone \udfff", SPAN, b"", 1, 2, b"")
        with pytest.raises(UnicodeEncodeError):
            writer(TRACE, None, SPAN, b"", 1, 2, b"", (), [(1, "lone \udfff")])


def test_bad_input_raises_in_both_writers() -> None:
    selfish: list[Any] = []
    selfish.append(selfish)
    for writer in (spanwire.span, otlp._span):
        with pytest.raises(RecursionError):
            writer(TRACE, None, SPAN, b"", 1, 2, b"", [("k", selfish)])
        with pytest.raises((TypeError, struct.error)):  # struct.error in Python
            writer("not bytes", None, SPAN, b"", 1, 2, b"")
        with pytest.raises(TypeError):
            writer(TRACE, None, SPAN, b"", 1, 2, "not bytes")
        with pytest.raises(TypeError):
            writer(TRACE, None, SPAN, b"", 1, 2, b"", [1])
        with pytest.raises(ValueError):
            writer(TRACE, None, SPAN, b"", 1, 2, b"", [("k", "v", "w")])
        with pytest.raises((OverflowError, struct.error)):  # struct.error in Python
            writer(TRACE, None, SPAN, b"", -1, 2, b"")
        with pytest.raises((OverflowError, struct.error)):
            writer(TRACE, None, SPAN, b"", 1, 2**64, b"")
        with pytest.raises((OverflowError, struct.error)):
            writer(TRACE, None, SPAN, b"", 1, 2, b"", (), [(-5, "e")])
        with pytest.raises(TypeError):
            writer(TRACE, None, SPAN, b"", 1, 2)
    with pytest.raises(TypeError):
        spanwire.span(TRACE, None, SPAN, b"", 1, 2, b"", (), (), "one too many")


def test_no_references_or_memory_kept() -> None:
    """Its inputs' reference counts as they were, and no memory held after many calls, the spans
    that outgrow the stack buffer and the ones that fail among them."""
    key, value, array, other = "kéy", "välue" * 500, [1, "two", None], Named()
    pairs = [(key, value), ("a", array), ("o", other)]
    counts = [sys.getrefcount(x) for x in (key, value, array, other)]

    def write(times: int) -> int:
        failed = 0
        for _ in range(times):
            spanwire.span(TRACE, "s", SPAN, PARENT, 1, 2, FIXED, pairs, [(1, key)])
            try:
                spanwire.span(TRACE, None, SPAN, b"", 1, 2, b"", [*pairs, ("k", "\udc80")])
            except UnicodeEncodeError:
                failed += 1
        return failed

    write(200)  # warm up (interned strings, allocator pools)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert write(2000) == 2000
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000
    assert [sys.getrefcount(x) for x in (key, value, array, other)] == counts
