"""The client-facing side of each dialect, in one table.

A surface knows how to read a client's request, render a neutral response or event stream back,
say an error in the client's own shape, and keep a waiting stream alive. Adding a dialect to the
gateway means adding a row here (and its module in :mod:`modelwire.dialects`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..dialects import anthropic_messages, gemini, openai_chat, openai_responses
from ..dialects.check import check_types, require
from ..dialects.sse import KEEPALIVE
from ..errors import ModelwireError
from ..types import Dialect, Request, Response, StreamError, StreamEvent
from .http import SSE_HEADERS


class Renderer(Protocol):
    """Neutral stream events to a dialect's bytes."""

    @property
    def response(self) -> dict[str, Any] | None:
        """The final answer document once finished, where the dialect has one (Responses)."""

    def feed(self, event: StreamEvent) -> bytes: ...
    def end(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Surface:
    dialect: Dialect
    decode_request: Callable[[dict[str, Any]], Request]
    render_response: Callable[[Response, Request], dict[str, Any]]
    stream_renderer: Callable[[Request, dict[str, Any]], Renderer]
    render_error: Callable[[ModelwireError], tuple[int, dict[str, Any]]]
    keepalive: bytes = KEEPALIVE
    field_types: dict[str, tuple[type, ...]] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    stream_headers: tuple[tuple[bytes, bytes], ...] = SSE_HEADERS
    json_array: bool = False  # streams one JSON array rather than SSE events
    chains: bool = False  # clients name earlier answers by previous_response_id
    name: str = ""  # what metrics and usage rows call it, when not its dialect (a media modality)

    @property
    def label(self) -> str:
        return self.name or self.dialect

    def check(self, body: dict[str, Any]) -> None:
        """Missing or wrong top-level fields fail here, before a body is forwarded undecoded."""
        require(body, self.required)
        if self.field_types:
            check_types(body, self.field_types)

    def stream_error(self, error: ModelwireError, req: Request | None, body: dict[str, Any]) -> bytes:
        """An error said inside an already-started stream, in this dialect's own event."""
        renderer = self.stream_renderer(req or Request(model=str(body.get("model") or "")), body)
        return renderer.feed(StreamError(error=error)) + renderer.end()


def _chat_renderer(req: Request, body: dict[str, Any]) -> Renderer:
    return openai_chat.StreamRenderer(model=req.model, include_usage=openai_chat.include_usage(body))


def _chat_render(resp: Response, req: Request) -> dict[str, Any]:
    return openai_chat.render_response(resp)


def _responses_renderer(req: Request, body: dict[str, Any]) -> Renderer:
    return openai_responses.StreamRenderer(req)


CHAT = Surface(
    dialect="openai_chat",
    decode_request=openai_chat.decode_request,
    render_response=_chat_render,
    stream_renderer=_chat_renderer,
    render_error=openai_chat.render_error,
    field_types=openai_chat.FIELD_TYPES,
    required=("messages",),
)


def _anthropic_renderer(req: Request, body: dict[str, Any]) -> Renderer:
    return anthropic_messages.StreamRenderer(req)


ANTHROPIC = Surface(
    dialect="anthropic_messages",
    decode_request=anthropic_messages.decode_request,
    render_response=anthropic_messages.render_response,
    stream_renderer=_anthropic_renderer,
    render_error=anthropic_messages.render_error,
    keepalive=anthropic_messages.KEEPALIVE,
)


def _gemini_decode(body: dict[str, Any]) -> Request:
    """Gemini names the model in the URL; the gateway puts it (and the action's stream flag) in the body."""
    payload = {k: v for k, v in body.items() if k not in ("model", "stream")}
    return gemini.decode_request(payload, str(body["model"]), stream=bool(body.get("stream")))


def _gemini_renderer(req: Request, body: dict[str, Any]) -> Renderer:
    return gemini.StreamRenderer(req)


def _gemini_array_renderer(req: Request, body: dict[str, Any]) -> Renderer:
    return gemini.ArrayStreamRenderer(req)


# ``:streamGenerateContent?alt=sse`` streams SSE; without ``alt=sse`` it streams one JSON array.
GEMINI = Surface(
    dialect="gemini",
    decode_request=_gemini_decode,
    render_response=gemini.render_response,
    stream_renderer=_gemini_renderer,
    render_error=gemini.render_error,
    keepalive=gemini.KEEPALIVE,
)
GEMINI_ARRAY = dataclasses.replace(
    GEMINI,
    stream_renderer=_gemini_array_renderer,
    stream_headers=((b"content-type", b"application/json; charset=utf-8"),),
    json_array=True,
)
# Gemini's embeddings: its errors, its own object so traces can tell them from generation.
GEMINI_EMBEDDINGS = dataclasses.replace(GEMINI)
# Embeddings answer in OpenAI's shape and only ever pass through: no messages, no streams.
EMBEDDINGS = dataclasses.replace(CHAT, required=("input",), field_types={})
RESPONSES = Surface(
    dialect="openai_responses",
    decode_request=openai_responses.decode_request,
    render_response=openai_responses.render_response,
    stream_renderer=_responses_renderer,
    render_error=openai_responses.render_error,
    field_types=openai_responses.FIELD_TYPES,
    chains=True,
)
# The media endpoints answer in OpenAI's shape and only ever pass through; each is its own label
# in metrics and usage rows.
IMAGES = dataclasses.replace(CHAT, required=("prompt",), field_types={}, name="images")
AUDIO = dataclasses.replace(CHAT, required=(), field_types={}, name="audio")
VIDEOS = dataclasses.replace(CHAT, required=(), field_types={}, name="videos")
