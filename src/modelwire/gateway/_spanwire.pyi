from collections.abc import Iterable, Sequence
from typing import Any

def span(
    trace_id: bytes,
    trace_state: str | None,
    span_id: bytes,
    parent_id: bytes,
    start: int,
    end: int,
    fixed: bytes,
    pairs: Iterable[tuple[str, Any]] = (),
    events: Sequence[tuple[int, str]] = (),
    /,
) -> bytes: ...
