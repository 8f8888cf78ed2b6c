"""The one streaming state machine every dialect shares.

A dialect's stream decoder only maps its raw chunks onto :class:`EventBuilder` calls (``text``,
``reasoning``, ``tool_call``, ``arguments``, ``close``); the builder numbers blocks, keeps at most
one open at a time, and emits neutral events whose :class:`BlockStop` carries the whole part.
:class:`ResponseAccumulator` folds such events back into a :class:`Response`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

from ..types import (
    BlockDelta,
    BlockStart,
    BlockStop,
    Finish,
    Part,
    Reasoning,
    Refusal,
    Response,
    Start,
    StopReason,
    StreamError,
    StreamEvent,
    Text,
    ToolCall,
    Usage,
    UsageUpdate,
)

log = logging.getLogger("modelwire.stream")


@dataclass(slots=True)
class _Open:
    key: Hashable
    index: int
    part: Part
    pieces: list[str] = field(default_factory=list)
    summaries: dict[int, list[str]] = field(default_factory=dict)


class EventBuilder:
    """Builds neutral stream events from a dialect's chunks, keyed by the dialect's own block key."""

    __slots__ = ("_closed", "_count", "_current", "events")

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []
        self._current: _Open | None = None
        self._closed: dict[Hashable, Part] = {}
        self._count = 0

    def take(self) -> list[StreamEvent]:
        events, self.events = self.events, []
        return events

    def start(self, id: str, model: str, created: int = 0) -> None:
        self.events.append(Start(id=id, model=model, created=created))

    def open(self, key: Hashable, part: Part) -> None:
        """Open a block for ``part`` (a skeleton), closing the one that is open."""
        if self._current is not None:
            self.close()
        self._current = _Open(key, self._count, part)
        self._count += 1
        self.events.append(BlockStart(index=self._current.index, part=part))

    def _ensure(self, key: Hashable, kind: type, skeleton: Part) -> _Open:
        cur = self._current
        if cur is None or cur.key != key or not isinstance(cur.part, kind):
            self.open(key, skeleton)
            cur = self._current
            assert cur is not None
        return cur

    def text(self, key: Hashable, delta: str) -> None:
        if not delta:
            return
        cur = self._ensure(key, Text, Text(text=""))
        cur.pieces.append(delta)
        self.events.append(BlockDelta(index=cur.index, text=delta))

    def refusal(self, key: Hashable, delta: str) -> None:
        if not delta:
            return
        cur = self._ensure(key, Refusal, Refusal(text=""))
        cur.pieces.append(delta)
        self.events.append(BlockDelta(index=cur.index, text=delta))

    def reasoning(
        self, key: Hashable, delta: str, summary_index: int | None = 0, id: str | None = None
    ) -> None:
        """Reasoning text: a summary part's text, or raw reasoning when ``summary_index`` is None."""
        cur = self._ensure(key, Reasoning, Reasoning(id=id))
        if summary_index is None:
            cur.pieces.append(delta)
        else:
            cur.summaries.setdefault(summary_index, []).append(delta)
        self.events.append(BlockDelta(index=cur.index, text=delta, summary_index=summary_index))

    def tool_call(self, key: Hashable, id: str, name: str, item_id: str | None = None) -> None:
        self.open(key, ToolCall(id=id, name=name, arguments="", item_id=item_id))

    def arguments(self, key: Hashable, delta: str) -> None:
        if not delta:
            return
        cur = self._current
        if cur is None or cur.key != key:
            late = self._closed.get(key)
            if isinstance(late, ToolCall):
                # Interleaved parallel-call fragments: the block already closed, so keep the
                # arguments whole in the part rather than emit a delta for a closed block.
                log.debug("late arguments for closed tool call %s", late.id)
                late.arguments += delta
            return
        cur.pieces.append(delta)
        self.events.append(BlockDelta(index=cur.index, text=delta))

    def was_closed(self, key: Hashable) -> bool:
        return key in self._closed

    def is_open(self, key: Hashable) -> bool:
        return self._current is not None and self._current.key == key

    def close(self, key: Hashable | None = None, final: Part | None = None) -> None:
        """Close the open block (only if it is ``key``, when given). ``final``, when the dialect
        sends the whole finished part, replaces what the deltas built."""
        cur = self._current
        if cur is None or (key is not None and cur.key != key):
            if final is not None and key is not None and key not in self._closed:
                # A part that arrived whole, with no deltas before it.
                self.open(key, _skeleton(final))
                self.close(key, final)
            return
        part = final if final is not None else _assemble(cur)
        if final is not None:
            _backfill(final, cur)
        self._closed[cur.key] = part
        self._current = None
        self.events.append(BlockStop(index=cur.index, part=part))

    def usage(self, usage: Usage) -> None:
        self.events.append(UsageUpdate(usage=usage))

    def finish(
        self, stop_reason: StopReason, usage: Usage | None = None, stop_sequence: str | None = None
    ) -> None:
        self.close()
        self.events.append(Finish(stop_reason=stop_reason, usage=usage, stop_sequence=stop_sequence))

    def error(self, error: Exception) -> None:
        self.close()
        self.events.append(StreamError(error=error))


def _skeleton(part: Part) -> Part:
    if isinstance(part, Text):
        return Text(text="")
    if isinstance(part, Refusal):
        return Refusal(text="")
    if isinstance(part, ToolCall):
        return ToolCall(id=part.id, name=part.name, arguments="", item_id=part.item_id)
    if isinstance(part, Reasoning):
        return Reasoning(id=part.id)
    return part


def _assemble(cur: _Open) -> Part:
    part = cur.part
    text = "".join(cur.pieces)
    if isinstance(part, Text):
        return Text(text=text)
    if isinstance(part, Refusal):
        return Refusal(text=text)
    if isinstance(part, ToolCall):
        return ToolCall(
            id=part.id, name=part.name, arguments=text, item_id=part.item_id, signature=part.signature
        )
    if isinstance(part, Reasoning):
        summary = ["".join(cur.summaries[i]) for i in sorted(cur.summaries)]
        return Reasoning(
            summary=summary or part.summary,
            text=text or part.text,
            id=part.id,
            data=part.data,
            dialect=part.dialect,
            redacted=part.redacted,
        )
    return part


def _backfill(final: Part, cur: _Open) -> None:
    """A finished part sent whole may omit what only the deltas carried (summaries, text)."""
    if isinstance(final, Reasoning):
        built = _assemble(cur)
        assert isinstance(built, Reasoning)
        if not final.summary:
            final.summary = built.summary
        if final.text is None:
            final.text = built.text


class ResponseAccumulator:
    """Folds a neutral event stream back into one :class:`Response`."""

    __slots__ = ("_parts", "response")

    def __init__(self) -> None:
        self.response = Response(id="", model="")
        self._parts: dict[int, Part] = {}

    def feed(self, event: StreamEvent) -> None:
        r = self.response
        if isinstance(event, BlockStop):
            self._parts[event.index] = event.part
        elif isinstance(event, UsageUpdate):
            r.usage = event.usage
        elif isinstance(event, Finish):
            r.stop_reason = event.stop_reason
            r.stop_sequence = event.stop_sequence
            if event.usage is not None:
                r.usage = event.usage
        elif isinstance(event, Start):
            r.id, r.model, r.created = event.id, event.model, event.created
        elif isinstance(event, StreamError):
            raise event.error

    @property
    def block_count(self) -> int:
        return max(self._parts, default=-1) + 1

    def result(self) -> Response:
        self.response.content = [self._parts[i] for i in sorted(self._parts)]
        return self.response


def events_from_response(resp: Response) -> list[StreamEvent]:
    """The stream a finished response would have produced (for upstreams that answered whole)."""
    b = EventBuilder()
    b.start(resp.id, resp.model, resp.created)
    for i, part in enumerate(resp.content):
        b.open(i, _skeleton(part))
        if isinstance(part, Reasoning):
            for si, summary in enumerate(part.summary):
                b.events.append(BlockDelta(index=i, text=summary, summary_index=si))
            if part.text:
                b.events.append(BlockDelta(index=i, text=part.text, summary_index=None))
        elif _delta_text(part):
            b.events.append(BlockDelta(index=i, text=_delta_text(part)))
        b.close(i, part)
    b.usage(resp.usage)
    b.finish(resp.stop_reason, resp.usage, resp.stop_sequence)
    return b.take()


def _delta_text(part: Part) -> str:
    if isinstance(part, Text | Refusal):
        return part.text
    if isinstance(part, ToolCall):
        return part.arguments
    return ""
