"""Helpers shared by the driver tests: a driver pointed at the fake upstream, event capture."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from modelwire import OpenAI, RetryPolicy
from modelwire.observe import Event
from modelwire.providers.transport import AiohttpTransport
from modelwire.types import StreamEvent

from .fake_upstream import FakeUpstream

FAST_RETRY = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=2.0)


class Recorder:
    """Collects observability events."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def driver(upstream: FakeUpstream, *, host: str = "openai", api: str = "responses", **kw: Any) -> OpenAI:
    """A driver on the fake, over SSE unless ``transport=`` says otherwise (the WebSocket tests do)."""
    kw.setdefault("retry", FAST_RETRY)
    kw.setdefault("http", AiohttpTransport())
    kw.setdefault("transport", "sse")
    return OpenAI(
        api_key="sk-test-key-123456",
        base_url=kw.pop("base_url", upstream.url),
        host=host,  # type: ignore[arg-type]
        api=api,  # type: ignore[arg-type]
        **kw,
    )


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]
