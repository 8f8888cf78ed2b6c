"""The fast path's edits: a client's body changed only where the route says, and how a cut stream
ends in the client's dialect.

When the client's dialect equals the upstream's, the gateway forwards the client's own JSON with
the model swapped, the route's URI parameters applied in that dialect's own field names, and (for
the Responses API) a ``previous_response_id`` the gateway expanded itself.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..dialects import openai_chat
from ..errors import ModelwireError, ProtocolError
from .routing import Target
from .taps import ChatTap, ResponsesTap


def rewrite(
    body: dict[str, Any],
    target: Target,
    *,
    chat: bool,
    native: bool,
    stream: bool,
    items: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The client's body with only what the route changes: model, URI parameters, history."""
    body = dict(body)
    body["model"] = target.model
    for name, value in target.params:
        override(body, name, value, chat=chat, native=native)
    if chat:
        if stream and not wants_usage(body):
            # Asked for on the client's behalf to account for tokens; the tap hides it again.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        if not native and "max_completion_tokens" in body:
            body["max_tokens"] = body.pop("max_completion_tokens")
    elif items is not None:
        body["input"] = items
        body.pop("previous_response_id", None)
    return body


def override(body: dict[str, Any], name: str, value: Any, *, chat: bool, native: bool) -> None:
    """Apply a route's URI parameter in the client's own dialect."""
    if name in ("temperature", "top_p"):
        body[name] = value
    elif name == "max_output_tokens":
        if chat:
            body.pop("max_tokens", None)
            body.pop("max_completion_tokens", None)
            body["max_completion_tokens" if native else "max_tokens"] = value
        else:
            body["max_output_tokens"] = value
    elif name == "reasoning_effort":
        if chat:
            body["reasoning_effort"] = value
        else:
            body["reasoning"] = {**(body.get("reasoning") or {}), "effort": value}
    elif name == "verbosity":
        if chat:
            body["verbosity"] = value
        else:
            body["text"] = {**(body.get("text") or {}), "verbosity": value}


def wants_usage(body: dict[str, Any]) -> bool:
    """Whether a Chat client asked for the final usage chunk itself."""
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def json_object(payload: bytes) -> dict[str, Any]:
    """An upstream's JSON answer, or a :class:`ProtocolError` saying what it was instead."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        snippet = payload[:80].decode("utf-8", "replace")
        raise ProtocolError(f"the upstream answered something that is not JSON: {snippet!r}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("the upstream answered JSON that is not an object")
    return doc


def cut_stream_error(tap: ChatTap | ResponsesTap, err: ModelwireError) -> bytes:
    """The dialect's error event that ends a passthrough stream early (the upstream cut it short,
    or the gateway had to), continuing the upstream's own sequence."""
    if isinstance(tap, ResponsesTap):
        event = {
            "type": "error",
            "code": err.code or "upstream_error",
            "message": err.message,
            "param": None,
            "sequence_number": tap.next_sequence(),
        }
        return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"
    return b"data: " + orjson.dumps({"error": openai_chat.error_object(err)}) + b"\n\n"
