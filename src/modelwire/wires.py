"""The table of upstream wires: everything that differs between the wire protocols an upstream
can speak, one row each.

A :class:`Wire` says how to write a neutral request in the protocol (``encode``), how to read
its answers back (``decode_response``, ``stream_decoder``, ``usage_of``), how the gateway's fast
path edits a client's own body for it (``apply_param``) and reads its streams as they pass
(``tap``), and which endpoint it posts to. Every question of the form "chat or responses?" asks
this table instead. Adding a wire is one row here plus its dialect module in
:mod:`modelwire.dialects` (which gives the gateway a client surface of the same name), and a
host profile in :mod:`modelwire.providers.hosts` for the hosts that speak it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .dialects import anthropic_messages, gemini, openai_chat, openai_embeddings, openai_responses
from .dialects.options import WireOptions
from .dialects.taps import AnthropicTap, ChatTap, GeminiTap, ResponsesTap, StreamTap
from .providers.hosts import Endpoint, WireAPI
from .types import Dialect, EmbeddingRequest, Embeddings, Request, Response, StreamEvent, Usage


class StreamDecoder(Protocol):
    def feed(self, data: str) -> list[StreamEvent]: ...
    def end(self) -> list[StreamEvent]: ...


class TapFactory(Protocol):
    def __call__(self, body: dict[str, Any], *, filter_chunks: bool, json_array: bool) -> StreamTap: ...


@dataclass(frozen=True, slots=True)
class EmbeddingWire:
    """How an upstream of this wire embeds texts: where, and its request and answer."""

    endpoint: Endpoint
    encode: Callable[[EmbeddingRequest], dict[str, Any]]
    decode: Callable[[dict[str, Any]], Embeddings]


OPENAI_EMBEDDINGS = EmbeddingWire(
    "embeddings", openai_embeddings.encode_request, openai_embeddings.decode_response
)
GEMINI_EMBEDDINGS = EmbeddingWire("batch_embed", gemini.encode_embed_request, gemini.decode_embed_response)


@dataclass(frozen=True, slots=True)
class Wire:
    name: Dialect
    endpoint: Endpoint  # where a request goes
    stream_endpoint: Endpoint  # where a streamed request goes
    encode: Callable[[Request, WireOptions], dict[str, Any]]
    decode_response: Callable[[dict[str, Any]], Response]
    stream_decoder: Callable[[], StreamDecoder]
    usage_of: Callable[[dict[str, Any]], Usage | None]  # of a whole answer document
    apply_param: Callable[[dict[str, Any], str, Any, WireOptions], None]  # a route's URI parameter
    tap: TapFactory
    fit_forwarded: Callable[[dict[str, Any], WireOptions, bool], None] = lambda body, opts, stream: None
    api: WireAPI | None = None  # its name in OpenAI's family (``api:``, the driver's ``api=``)
    seed: bool = True  # takes a sampling seed
    stop_sequences: bool = True  # takes stop sequences (else the driver cuts at them itself)
    model_in_body: bool = True  # Gemini names the model (and streaming) in the URL instead
    chains: bool = False  # carries previous_response_id, for hosts that store answers
    client_headers: tuple[bytes, ...] = ()  # a client's headers forwarded on the fast path
    count_endpoint: Endpoint | None = None  # the upstream's own token counter
    embeddings: EmbeddingWire | None = None  # its hosts' embeddings endpoint (Anthropic has none)


def _usage_field(decode: Callable[[Any], Usage], name: str) -> Callable[[dict[str, Any]], Usage | None]:
    def usage_of(doc: dict[str, Any]) -> Usage | None:
        raw = doc.get(name)
        return decode(raw) if isinstance(raw, dict) else None

    return usage_of


def _encode_anthropic(req: Request, opts: WireOptions) -> dict[str, Any]:
    return anthropic_messages.encode_request(req)


def _encode_gemini(req: Request, opts: WireOptions) -> dict[str, Any]:
    return gemini.encode_request(req)


def _encode_responses(req: Request, opts: WireOptions) -> dict[str, Any]:
    return openai_responses.encode_request(req, opts)


WIRES: dict[Dialect, Wire] = {
    "openai_chat": Wire(
        name="openai_chat",
        endpoint="chat",
        stream_endpoint="chat",
        encode=openai_chat.encode_request,
        decode_response=openai_chat.decode_response,
        stream_decoder=openai_chat.StreamDecoder,
        usage_of=_usage_field(openai_chat.decode_usage, "usage"),
        apply_param=openai_chat.apply_param,
        tap=ChatTap,
        fit_forwarded=openai_chat.fit_forwarded,
        api="chat",
        embeddings=OPENAI_EMBEDDINGS,
    ),
    "openai_responses": Wire(
        name="openai_responses",
        endpoint="responses",
        stream_endpoint="responses",
        encode=_encode_responses,
        decode_response=openai_responses.decode_response,
        stream_decoder=openai_responses.StreamDecoder,
        usage_of=_usage_field(openai_responses.decode_usage, "usage"),
        apply_param=openai_responses.apply_param,
        tap=ResponsesTap,
        api="responses",
        chains=True,
        embeddings=OPENAI_EMBEDDINGS,
        seed=False,
        stop_sequences=False,
    ),
    "anthropic_messages": Wire(
        name="anthropic_messages",
        endpoint="messages",
        stream_endpoint="messages",
        encode=_encode_anthropic,
        decode_response=anthropic_messages.decode_response,
        stream_decoder=anthropic_messages.StreamDecoder,
        usage_of=_usage_field(anthropic_messages.decode_usage, "usage"),
        apply_param=anthropic_messages.apply_param,
        tap=AnthropicTap,
        fit_forwarded=anthropic_messages.fit_forwarded,
        client_headers=(b"anthropic-version", b"anthropic-beta"),
        seed=False,
        count_endpoint="count_tokens",
    ),
    "gemini": Wire(
        name="gemini",
        endpoint="generate",
        stream_endpoint="stream_generate",
        encode=_encode_gemini,
        decode_response=gemini.decode_response,
        stream_decoder=gemini.StreamDecoder,
        usage_of=_usage_field(gemini.decode_usage, "usageMetadata"),
        apply_param=gemini.apply_param,
        tap=GeminiTap,
        model_in_body=False,
        count_endpoint="count_gemini_tokens",
        embeddings=GEMINI_EMBEDDINGS,
    ),
}

OPENAI_APIS: dict[str, Dialect] = {w.api: w.name for w in WIRES.values() if w.api is not None}
"""The OpenAI wires by the short names the config and the driver's ``api=`` use."""
