"""The SSE parser against the framings every vendor uses, split at every possible byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from modelwire.dialects.sse import SSEEvent, SSEParser, frame

STREAM = (
    b'event: response.created\ndata: {"a":1}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"b":2}\r\n\r\n'
    b"data:no-space\n\n"
    b"data: line one\ndata: line two\n\n"
    b"event: message_stop\r"
    b'data: {"type":"message_stop"}\r\r'
)
EXPECTED = [
    SSEEvent("response.created", '{"a":1}'),
    SSEEvent(None, '{"b":2}'),
    SSEEvent(None, "no-space"),
    SSEEvent(None, "line one\nline two"),
    SSEEvent("message_stop", '{"type":"message_stop"}'),
]


def parse_in_pieces(data: bytes, cuts: list[int]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    start = 0
    for cut in sorted(set(cuts)):
        events += parser.feed(data[start:cut])
        start = cut
    events += parser.feed(data[start:])
    return events + parser.flush()


def test_whole_stream() -> None:
    assert parse_in_pieces(STREAM, []) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    assert parse_in_pieces(STREAM, cuts) == EXPECTED


def test_every_single_byte_split() -> None:
    assert parse_in_pieces(STREAM, list(range(len(STREAM)))) == EXPECTED


def test_unterminated_last_event_is_flushed() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"x":1}') == []
    assert parser.flush() == [SSEEvent(None, '{"x":1}')]


def test_frame_is_one_compact_data_line() -> None:
    assert frame({"a": "b\nc"}) == b'data: {"a":"b\\nc"}\n\n'
    assert frame({"type": "ping"}, "ping") == b'event: ping\ndata: {"type":"ping"}\n\n'
