"""The ``previous_response_id`` a client named, said back where the upstream could not say it.

When the gateway expands a stored chain itself (a stateless or Chat upstream), the upstream gets the
whole history and no id, so its answer says ``previous_response_id: null``. OpenAI's own answer
repeats the id it was given, and clients (and the stored copy) should see the same here. Translated
answers are rendered from :meth:`.Call.echoed`; forwarded ones are mended here: the whole document,
or the few lifecycle events of a stream that carry the response object. Nothing here runs unless
the gateway expanded a chain, so the fast path pays nothing for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .call import Call

# The stream events that carry the whole response object (the rest carry items and deltas).
LIFECYCLE = (
    b"response.created",
    b"response.queued",
    b"response.in_progress",
    b"response.completed",
    b"response.incomplete",
    b"response.failed",
)


def named(call: Call) -> str | None:
    """The id to say back: the client's, when the gateway expanded its chain (otherwise the
    upstream saw the id and says it itself)."""
    previous = call.body.get("previous_response_id")
    return previous if call.items is not None and isinstance(previous, str) else None


def mend(doc: dict[str, Any], previous: str) -> dict[str, Any]:
    """``doc``, when it is a response object, saying ``previous`` as its ``previous_response_id``."""
    if doc.get("object") == "response":
        doc["previous_response_id"] = previous
    return doc


def is_lifecycle(event: bytes) -> bool:
    """Whether an SSE event (its head is enough) carries the response object."""
    head = event[:80]
    return any(kind in head for kind in LIFECYCLE)


class StreamMender:
    """Mends the lifecycle events of a forwarded Responses stream. It is fed whole events (the
    wire's tap splits at event boundaries) and parses only the few that carry the response."""

    __slots__ = ("previous",)

    def __init__(self, previous: str) -> None:
        self.previous = previous

    def feed(self, out: bytes) -> bytes:
        if not out:
            return out
        events = out.removesuffix(b"\n\n").split(b"\n\n")
        return b"".join(self._event(event) + b"\n\n" for event in events)

    def _event(self, event: bytes) -> bytes:
        if not is_lifecycle(event):
            return event
        head, sep, data = event.partition(b"data:")
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:
            return event  # not ours to judge: the tap reports a broken stream
        response = doc.get("response") if isinstance(doc, dict) else None
        if not isinstance(response, dict):
            return event
        mend(response, self.previous)
        return head + sep + b" " + orjson.dumps(doc)
