"""Anthropic Messages, both ways.

Surface (an Anthropic client such as Claude Code talks to us): :func:`decode_request`,
:func:`render_response`, :class:`StreamRenderer`, :func:`render_error`, :data:`KEEPALIVE`.
Driver (we talk to an Anthropic upstream): :func:`encode_request`, :func:`decode_response`,
:class:`StreamDecoder`.

Reasoning travels as ``thinking`` blocks whose ``signature`` is Anthropic's own, or, for reasoning
another dialect minted (Responses ``encrypted_content``), a :mod:`.replay` envelope: Anthropic
clients replay thinking blocks verbatim, so the upstream's data comes back on the next turn.

Usage differs in one way that matters: Anthropic's ``input_tokens`` excludes cache reads and
writes, while the neutral :class:`~modelwire.types.Usage` includes them.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidRequestError, ModelwireError, ProtocolError, from_response
from ..types import (
    Audio,
    BlockDelta,
    BlockStart,
    BlockStop,
    Dialect,
    File,
    Finish,
    Image,
    Message,
    Part,
    ProviderItem,
    Reasoning,
    Refusal,
    Request,
    Response,
    ResponseFormat,
    Start,
    StopReason,
    StreamError,
    StreamEvent,
    Text,
    Tool,
    ToolCall,
    ToolName,
    ToolResult,
    Usage,
    UsageUpdate,
)
from . import check as check
from . import replay
from .ids import random_hex
from .sse import frame
from .stream import EventBuilder

DIALECT: Dialect = "anthropic_messages"
log = logging.getLogger("modelwire.dialects.anthropic")

KEEPALIVE = b'event: ping\ndata: {"type":"ping"}\n\n'
"""What a waiting stream sends to stay alive: Anthropic's own ``ping`` event, which SDKs skip."""

DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024  # Anthropic refuses smaller budgets
THINKING_BUDGETS = {"minimal": 1024, "low": 2048, "medium": 8192, "high": 24576, "xhigh": 32768, "max": 32768}
# The smallest output limit of the Claude models that think (Opus 4 and 4.1): with no limit asked, a
# budget and the answer's room after it stay under it, so no such model refuses the request.
THINKING_MAX_TOKENS = 32_000

_STOP_IN: dict[str, StopReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "pause_turn": "pause",
    "refusal": "refusal",
}
_STOP_OUT: dict[StopReason, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "refusal": "refusal",
    "pause": "pause_turn",
    "error": "end_turn",
}

# Block types only Anthropic understands (server tools, their results, compaction): kept verbatim
# as ProviderItems so an Anthropic upstream gets them back, dropped by every other encoder.
_PROVIDER_BLOCKS = frozenset(
    "server_tool_use mcp_tool_use mcp_tool_result web_search_tool_result web_fetch_tool_result "
    "code_execution_tool_result bash_code_execution_tool_result text_editor_code_execution_tool_result "
    "tool_search_tool_result container_upload search_result compaction".split()
)
_THINKING_BLOCKS = ("thinking", "redacted_thinking")

# The input blocks each place may hold; a known block elsewhere is a 400 naming it.
_SYSTEM_BLOCKS = frozenset({"text"})
_RESULT_BLOCKS = frozenset({"text", "image", "document"})
_ROLE_BLOCKS = {
    "user": _RESULT_BLOCKS | {"tool_result", "search_result", "container_upload"},
    "assistant": frozenset({"text", "tool_use", *_THINKING_BLOCKS}) | _PROVIDER_BLOCKS,
    "system": _SYSTEM_BLOCKS,
}
_KNOWN_BLOCKS: frozenset[str] = frozenset().union(*_ROLE_BLOCKS.values())

# Anthropic's request tiers in OpenAI's terms (the neutral ones): "standard_only" is OpenAI's
# "default"; OpenAI's flex, scale and priority have no Anthropic request value.
_TIER_IN = {"auto": "auto", "standard_only": "default"}
_TIER_OUT = {"auto": "auto", "default": "standard_only"}

# The fields decode_request reads and the types each takes (null aside); anything else is kept in
# Request.extra for an Anthropic upstream.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "messages": (list,),
    "max_tokens": (int,),
    "system": (str, list),
    "tools": (list,),
    "tool_choice": (dict,),
    "temperature": check.NUMBER,
    "top_p": check.NUMBER,
    "stop_sequences": (list,),
    "metadata": (dict,),
    "stream": (bool,),
    "thinking": (dict,),
    "output_config": (dict,),
    "service_tier": (str,),
}
_REQUIRED = ("model", "messages", "max_tokens")


def message_id(upstream_id: str) -> str:
    """An Anthropic-looking message id (``msg_…``) for an upstream's response id."""
    if upstream_id.startswith("msg_"):
        return upstream_id
    return f"msg_{upstream_id or random_hex()}"


def tool_input(arguments: str) -> dict[str, Any]:
    """A tool call's JSON arguments as the object Anthropic wants; empty or invalid gives ``{}``."""
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        log.debug("tool arguments are not JSON; sending {}: %.80r", arguments)
        return {}
    return _object(value)


def _object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one (upstream payloads are read leniently)."""
    return value if isinstance(value, dict) else {}


def _json_text(value: Any) -> str:
    return orjson.dumps(_object(value)).decode()


# ============================================================================== usage and reasoning


def decode_usage(raw: dict[str, Any] | None) -> Usage:
    """Neutral usage from Anthropic's, whose ``input_tokens`` leaves out cache reads and writes."""
    if not raw:
        return Usage()
    read = raw.get("cache_read_input_tokens") or 0
    write = raw.get("cache_creation_input_tokens") or 0
    details = raw.get("output_tokens_details")
    thinking = details.get("thinking_tokens") if isinstance(details, dict) else None
    return Usage(
        input_tokens=(raw.get("input_tokens") or 0) + read + write,
        cached_input_tokens=read,
        cache_write_tokens=write,
        output_tokens=raw.get("output_tokens") or 0,
        reasoning_tokens=thinking or 0,
    )


def _usage_counts(u: Usage) -> dict[str, Any]:
    """The token counts Anthropic reports, both in ``Message.usage`` and ``message_delta.usage``."""
    counts: dict[str, Any] = {
        "input_tokens": max(0, u.input_tokens - u.cached_input_tokens - u.cache_write_tokens),
        "output_tokens": u.output_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cached_input_tokens,
        "server_tool_use": None,
    }
    if u.reasoning_tokens:
        counts["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return counts


def render_usage(u: Usage, service_tier: str | None = None) -> dict[str, Any]:
    usage = _usage_counts(u)
    usage["cache_creation"] = None
    usage["service_tier"] = service_tier if service_tier in ("standard", "priority", "batch") else "standard"
    usage["inference_geo"] = None
    return usage


def decode_thinking(text: str, token: str | None, *, redacted: bool = False) -> Reasoning:
    """A ``thinking`` (or ``redacted_thinking``) block as neutral reasoning.

    A signature that is a modelwire envelope gives back the reasoning another dialect minted, so a
    Responses upstream gets its ``encrypted_content`` again; anything else is Anthropic's own.
    """
    summary = [text] if text else []
    data, dialect, inner_id, inner_redacted = replay.unwrap(token, DIALECT)
    if token and (data, inner_id) != (token, None):
        return Reasoning(summary=summary, id=inner_id, data=data, dialect=dialect, redacted=inner_redacted)
    return Reasoning(summary=summary, data=token or None, dialect=DIALECT, redacted=redacted)


def signature_for(part: Reasoning) -> str | None:
    """What goes in a thinking block's ``signature``: our own data, else an envelope of the rest."""
    return replay.token_for(part, DIALECT) or replay.wrap(part)


def render_thinking(part: Reasoning) -> dict[str, Any] | None:
    """The response block for ``part``; None when there is nothing to show and nothing to replay."""
    token = signature_for(part)
    if part.redacted and token:
        return {"type": "redacted_thinking", "data": token}
    text = part.summary_text or part.text or ""
    if not text and token is None:
        return None
    return {"type": "thinking", "thinking": text, "signature": token or ""}


def _own_reasoning(part: Reasoning) -> Reasoning | None:
    """``part`` if an Anthropic upstream can take it back (it minted it), else None."""
    if part.dialect in (None, DIALECT):
        return part if part.data else None
    if part.data and part.data.startswith(replay.PREFIX):
        data, dialect, _, redacted = replay.unwrap(part.data, part.dialect)
        if dialect == DIALECT and data:
            return Reasoning(
                summary=part.summary, text=part.text, data=data, dialect=DIALECT, redacted=redacted
            )
    return None


# =========================================================================================== driver


def encode_request(req: Request, *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict[str, Any]:
    """The ``POST /v1/messages`` body for ``req``."""
    system, turns = _encode_messages(req.messages)
    max_tokens = req.max_output_tokens if req.max_output_tokens is not None else default_max_tokens
    body: dict[str, Any] = {"model": req.model, "max_tokens": max_tokens, "messages": turns}
    if system:
        body["system"] = system
    tools = [_encode_tool(t) for t in req.tools]
    if req.dialect == DIALECT and req.extra.get("tools"):
        tools += req.extra["tools"]
    if tools:
        body["tools"] = tools
        choice = _encode_tool_choice(req)
        if choice is not None:
            body["tool_choice"] = choice
    thinking = _encode_thinking(req, _thinking_room(req.max_output_tokens, default_max_tokens), turns)
    if thinking is not None:
        body["thinking"] = thinking
        if req.max_output_tokens is None:  # no limit asked: the answer keeps its room after the budget
            ceiling = max(default_max_tokens, THINKING_MAX_TOKENS)
            body["max_tokens"] = min(thinking["budget_tokens"] + default_max_tokens, ceiling)
    _encode_sampling(body, req, thinking is not None)
    if req.response_format is not None and req.response_format.type == "json_schema":
        schema = req.response_format.schema or {"type": "object"}
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.service_tier in _TIER_OUT:
        body["service_tier"] = _TIER_OUT[req.service_tier]
    if req.stream:
        body["stream"] = True
    if req.extra and req.dialect in (None, DIALECT):
        body.update({k: v for k, v in req.extra.items() if k != "tools"})
    return body


def _encode_messages(messages: list[Message]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system blocks, turns)``: every system or developer message is lifted into ``system``, as
    Anthropic has no system role; consecutive same-role turns merge, as Anthropic requires."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role in ("system", "developer"):
            system += [_text_block(p) for p in msg.content if isinstance(p, Text) and p.text]
            continue
        role = "assistant" if msg.role == "assistant" else "user"
        encode = _encode_assistant_part if role == "assistant" else _encode_user_part
        blocks = [b for b in (encode(p) for p in msg.content) if b is not None]
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:
        # Tool results must open a user turn; thinking must open an assistant turn.
        first = ("tool_result",) if turn["role"] == "user" else _THINKING_BLOCKS
        turn["content"].sort(key=lambda b: b["type"] not in first)
    return system, turns


def _text_block(part: Text) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": part.text}
    if part.cache_control is not None:
        block["cache_control"] = part.cache_control
    return block


def _encode_user_part(part: Part) -> dict[str, Any] | None:
    if isinstance(part, Text):
        return _text_block(part) if part.text else None  # Anthropic refuses empty text blocks
    if isinstance(part, Refusal):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, Image):
        return _image_block(part)
    if isinstance(part, File):
        return _document_block(part)
    if isinstance(part, ToolResult):
        return _tool_result_block(part)
    if isinstance(part, Audio):
        raise InvalidRequestError("Anthropic Messages does not take audio input")
    if isinstance(part, ProviderItem) and part.dialect == DIALECT:
        return part.data
    return None


def _image_block(part: Image) -> dict[str, Any]:
    inline = check.parse_data_url(part.url, "image_url") if part.url else None
    if inline is not None:
        media_type, data = inline
    elif part.url:
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    elif part.data is not None:
        media_type, data = part.media_type or "image/png", part.data
    else:
        raise InvalidRequestError("Anthropic Messages cannot take an image by file id")
    source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(data).decode()}
    return {"type": "image", "source": source}


def _document_block(part: File) -> dict[str, Any]:
    media_type = part.media_type or "application/pdf"
    if part.url:
        source: dict[str, Any] = {"type": "url", "url": part.url}
    elif part.data is None:
        raise InvalidRequestError("Anthropic Messages cannot take a file by file id")
    elif media_type.startswith("image/"):
        return _image_block(Image(data=part.data, media_type=media_type))
    elif media_type == "text/plain":
        source = {"type": "text", "media_type": media_type, "data": part.data.decode("utf-8", "replace")}
    else:
        source = {"type": "base64", "media_type": media_type, "data": base64.b64encode(part.data).decode()}
    block: dict[str, Any] = {"type": "document", "source": source}
    if part.filename:
        block["title"] = part.filename
    return block


def _tool_result_block(part: ToolResult) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": part.call_id}
    content = part.content
    if len(content) == 1 and isinstance(content[0], Text) and content[0].cache_control is None:
        block["content"] = content[0].text
    elif content:
        block["content"] = [b for b in (_encode_user_part(p) for p in content) if b is not None]
    if part.is_error:
        block["is_error"] = True
    return block


def _encode_assistant_part(part: Part) -> dict[str, Any] | None:
    if isinstance(part, Text):
        return _text_block(part) if part.text else None
    if isinstance(part, Refusal):
        return {"type": "text", "text": part.text} if part.text else None
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": tool_input(part.arguments)}
    if isinstance(part, Reasoning):
        own = _own_reasoning(part)  # another dialect's reasoning means nothing to Anthropic
        if own is None or own.data is None:
            return None
        if own.redacted:
            return {"type": "redacted_thinking", "data": own.data}
        return {"type": "thinking", "thinking": own.summary_text or own.text or "", "signature": own.data}
    if isinstance(part, ProviderItem) and part.dialect == DIALECT:
        return part.data
    return None


def _encode_tool(tool: Tool) -> dict[str, Any]:
    out: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        out["description"] = tool.description
    out["input_schema"] = (
        tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    )
    if tool.strict is not None:
        out["strict"] = tool.strict
    if tool.cache_control is not None:
        out["cache_control"] = tool.cache_control
    return out


def _encode_tool_choice(req: Request) -> dict[str, Any] | None:
    choice = req.tool_choice
    if choice == "none":
        return {"type": "none"}
    if choice is None and req.parallel_tool_calls is not False:
        return None
    if isinstance(choice, ToolName):
        out: dict[str, Any] = {"type": "tool", "name": choice.name}
    else:
        out = {"type": "any" if choice == "required" else "auto"}
    if req.parallel_tool_calls is not None:
        out["disable_parallel_tool_use"] = not req.parallel_tool_calls
    return out


def _thinking_room(limit: int | None, default_max_tokens: int) -> int:
    """The ``max_tokens`` a thinking budget must stay under: the client's limit; with none, what
    :data:`THINKING_MAX_TOKENS` leaves after the default answer room, or the default itself when it
    leaves too little (an operator who set a large default knows the model)."""
    if limit is not None:
        return limit
    spare = THINKING_MAX_TOKENS - default_max_tokens
    return spare + 1 if spare >= MIN_THINKING_BUDGET else default_max_tokens


def _encode_thinking(req: Request, max_tokens: int, turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``thinking: {type: enabled, budget_tokens}`` for the effort, or None where Anthropic would
    refuse it: a forced tool, no room under ``max_tokens``, or a tool loop it cannot continue."""
    effort = req.reasoning_effort
    if effort is None or effort == "none":
        return None
    if req.tool_choice == "required" or isinstance(req.tool_choice, ToolName):
        return None
    budget = min(THINKING_BUDGETS.get(effort, THINKING_BUDGETS["medium"]), max_tokens - 1)
    if budget < MIN_THINKING_BUDGET or not _thinking_can_continue(turns):
        return None
    return {"type": "enabled", "budget_tokens": budget}


def _thinking_can_continue(turns: list[dict[str, Any]]) -> bool:
    """With thinking on, Anthropic wants the last assistant turn that called tools to open with its
    thinking block; reasoning another dialect minted was dropped, so that turn may lack one."""
    for turn in reversed(turns):
        if turn["role"] == "assistant":
            blocks = turn["content"]
            calls = any(b.get("type") == "tool_use" for b in blocks)
            return not calls or blocks[0].get("type") in _THINKING_BLOCKS
    return True


def _encode_sampling(body: dict[str, Any], req: Request, thinking: bool) -> None:
    if req.stop:
        body["stop_sequences"] = req.stop
    temperature = min(req.temperature, 1.0) if req.temperature is not None else None
    # With thinking on Anthropic accepts only temperature 1 and top_p of at least 0.95.
    if temperature is not None and (not thinking or temperature == 1.0):
        body["temperature"] = temperature
    if req.top_p is not None and (not thinking or req.top_p >= 0.95):
        body["top_p"] = req.top_p


def decode_response(body: dict[str, Any]) -> Response:
    """A neutral response from a ``message`` object; an error object raises."""
    if body.get("type") == "error":
        raise _error_from(body.get("error"))
    content = body.get("content")
    if not isinstance(content, list):
        raise ProtocolError("upstream message has no content list")
    usage = _object(body.get("usage"))
    stop_reason = body.get("stop_reason")
    return Response(
        id=body.get("id") or "",
        model=body.get("model") or "",
        content=[p for block in content if isinstance(block, dict) for p in _decode_response_block(block)],
        stop_reason=_STOP_IN.get(stop_reason or "end_turn", "stop"),
        stop_sequence=body.get("stop_sequence") if stop_reason == "stop_sequence" else None,
        usage=decode_usage(usage),
        service_tier=usage.get("service_tier"),
    )


def _decode_response_block(block: dict[str, Any]) -> list[Part]:
    kind = block.get("type")
    if kind == "text":
        return [Text(text=block.get("text") or "")]
    if kind == "tool_use":
        return [
            ToolCall(
                id=block.get("id") or "",
                name=block.get("name") or "",
                arguments=_json_text(block.get("input")),
            )
        ]
    if kind == "thinking":
        return [decode_thinking(block.get("thinking") or "", block.get("signature"))]
    if kind == "redacted_thinking":
        return [decode_thinking("", block.get("data"), redacted=True)]
    if isinstance(kind, str):
        return [ProviderItem(dialect=DIALECT, data=block)]
    return []


_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def _error_from(error: Any) -> ModelwireError:
    """Classify an Anthropic error object that arrived without its HTTP status (inside a stream)."""
    error = _object(error)
    status = _ERROR_STATUS.get(str(error.get("type")), 500)
    return from_response(status, orjson.dumps({"error": error}))


class StreamDecoder:
    """Maps Anthropic stream events onto neutral events, keyed by the block ``index``."""

    def __init__(self) -> None:
        self._b = EventBuilder()
        self._usage: dict[str, Any] = {}
        self._stop: StopReason = "stop"
        self._stop_sequence: str | None = None
        self._signatures: dict[int, str] = {}  # thinking blocks still open, with their signature so far
        self._whole_input: set[int] = set()  # tool_use blocks whose input came whole in their start
        self._provider: dict[int, tuple[dict[str, Any], list[str]]] = {}
        self._finished = False
        self._handlers: dict[str, Callable[[dict[str, Any]], None]] = {
            "message_start": self._message_start,
            "content_block_start": self._block_start,
            "content_block_delta": self._block_delta,
            "content_block_stop": self._block_stop,
            "message_delta": self._message_delta,
            "message_stop": self._message_stop,
            "error": self._error,
            "ping": lambda _: None,
        }

    def feed(self, data: str) -> list[StreamEvent]:
        """One SSE ``data`` payload; Anthropic repeats the event name as its ``type``."""
        if data == "[DONE]":  # not Anthropic's, but some compatible proxies end with it
            return self.end()
        if self._finished:
            return []
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._finished = True
            self._b.error(ProtocolError(f"upstream sent an event that is not JSON: {data[:80]!r}"))
            return self._b.take()
        kind = event.get("type") if isinstance(event, dict) else None
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            log.debug("skipping Anthropic event %r", kind)
            return []
        handler(event)
        return self._b.take()

    def end(self) -> list[StreamEvent]:
        """The connection closed; a stream that never reached ``message_stop`` was cut short."""
        if not self._finished:
            self._finished = True
            self._b.error(ProtocolError("upstream stream ended before message_stop"))
        return self._b.take()

    def _merge_usage(self, usage: Any) -> None:
        # Counts are cumulative totals; a null or missing one leaves the earlier value standing.
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    def _message_start(self, e: dict[str, Any]) -> None:
        message = _object(e.get("message"))
        self._b.start(message.get("id") or "", message.get("model") or "")
        self._merge_usage(message.get("usage"))

    def _block_start(self, e: dict[str, Any]) -> None:
        index = e.get("index", 0)
        block = _object(e.get("content_block"))
        kind = block.get("type")
        if kind == "text":
            self._b.open(index, Text(text=""))
            self._b.text(index, block.get("text") or "")
        elif kind == "thinking":
            self._b.open(index, Reasoning(dialect=DIALECT))
            self._signatures[index] = block.get("signature") or ""
            if block.get("thinking"):
                self._b.reasoning(index, block["thinking"], summary_index=0)
        elif kind == "redacted_thinking":
            self._b.close(index, decode_thinking("", block.get("data"), redacted=True))
        elif kind == "tool_use":
            self._b.tool_call(index, block.get("id") or "", block.get("name") or "")
            if block.get("input"):  # some proxies send the input whole here and no deltas
                self._whole_input.add(index)
                self._b.arguments(index, _json_text(block["input"]))
        elif isinstance(kind, str):
            self._provider[index] = (block, [])

    def _block_delta(self, e: dict[str, Any]) -> None:
        index = e.get("index", 0)
        delta = _object(e.get("delta"))
        kind = delta.get("type")
        if kind == "text_delta":
            self._b.text(index, delta.get("text") or "")
        elif kind == "input_json_delta":
            if index in self._provider:
                self._provider[index][1].append(delta.get("partial_json") or "")
            elif index not in self._whole_input:
                self._b.arguments(index, delta.get("partial_json") or "")
        elif kind == "thinking_delta":
            if delta.get("thinking"):
                self._b.reasoning(index, delta["thinking"], summary_index=0)
        elif kind == "signature_delta":
            self._signatures[index] = self._signatures.get(index, "") + (delta.get("signature") or "")
        else:
            log.debug("skipping Anthropic delta %r", kind)

    def _block_stop(self, e: dict[str, Any]) -> None:
        index = e.get("index", 0)
        if index in self._signatures:
            # The summary is left empty so the builder fills it from the deltas.
            self._b.close(index, decode_thinking("", self._signatures.pop(index) or None))
        elif index in self._provider:
            block, pieces = self._provider.pop(index)
            if pieces:
                block = {**block, "input": tool_input("".join(pieces))}
            self._b.close(index, ProviderItem(dialect=DIALECT, data=block))
        else:
            self._b.close(index)

    def _message_delta(self, e: dict[str, Any]) -> None:
        delta = _object(e.get("delta"))
        reason = delta.get("stop_reason")
        if reason:
            self._stop = _STOP_IN.get(reason, "stop")
            self._stop_sequence = delta.get("stop_sequence") if reason == "stop_sequence" else None
        self._merge_usage(e.get("usage"))

    def _message_stop(self, e: dict[str, Any]) -> None:
        self._finished = True
        usage = decode_usage(self._usage)
        self._b.usage(usage)
        self._b.finish(self._stop, usage, self._stop_sequence)

    def _error(self, e: dict[str, Any]) -> None:
        self._finished = True
        self._b.error(_error_from(e.get("error")))


# ========================================================================================== surface


def decode_request(body: dict[str, Any]) -> Request:
    """A neutral request from a client's ``POST /v1/messages`` body."""
    check.check_types(body, _FIELD_TYPES)  # one pass over the fields the body holds
    check.require(body, _REQUIRED)
    get = body.get
    messages = _decode_system(get("system"))
    for i, raw in enumerate(body["messages"]):
        messages += _decode_message(raw, f"messages[{i}]")
    req = Request(
        model=body["model"],
        messages=messages,
        max_output_tokens=body["max_tokens"],
        temperature=check.to_float(get("temperature")),
        top_p=check.to_float(get("top_p")),
        stop=_decode_stop_sequences(get("stop_sequences")),
        stream=get("stream") is True,
        dialect=DIALECT,
    )
    if not body.keys() <= _FIELD_TYPES.keys():  # (a subset test in C: most bodies hold no others)
        req.extra = {name: value for name, value in body.items() if name not in _FIELD_TYPES}
    if tools := get("tools"):
        req.tools, foreign_tools = _decode_tools(tools)
        if foreign_tools:
            req.extra["tools"] = foreign_tools
    if get("tool_choice") is not None:
        _decode_tool_choice(req, body["tool_choice"])
    if metadata := get("metadata"):
        req.user = check.get(metadata, "user_id", str, "metadata.")
    if (tier := get("service_tier")) is not None:
        req.service_tier = _TIER_IN.get(tier, tier)
    if get("thinking") or get("output_config"):
        _decode_reasoning(req, body)
    return req


def _decode_system(raw: Any) -> list[Message]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [Message(role="system", content=[Text(text=raw)])]
    return [
        Message(role="system", content=_decode_blocks(raw, "system", _SYSTEM_BLOCKS, "the system prompt"))
    ]


def _decode_message(raw: Any, path: str) -> list[Message]:
    """One Anthropic message; a user turn carrying tool results becomes a tool message (results)
    followed by a user message with whatever else it held."""
    m = check.as_dict(raw, path)
    role = check.need(m, "role", str, path + ".")
    allowed = _ROLE_BLOCKS.get(role)
    if allowed is None:
        check.fail(path + ".role", f"expected 'user' or 'assistant', got {role!r}")
    content = m.get("content")
    if isinstance(content, str):  # the short form of one text block
        return [Message(role=role, content=[Text(text=content)])]  # type: ignore[arg-type]
    parts = _decode_blocks(content, path + ".content", allowed, role + " messages")
    if role != "user":  # Claude Code sends system messages inside messages as well
        return [Message(role=role, content=parts)]  # type: ignore[arg-type]
    results: list[Part] = [p for p in parts if isinstance(p, ToolResult)]
    if not results:
        return [Message(role="user", content=parts)]
    rest: list[Part] = [p for p in parts if not isinstance(p, ToolResult)]
    out = [Message(role="tool", content=results)]
    if rest:
        out.append(Message(role="user", content=rest))
    return out


def _decode_blocks(raw: Any, path: str, allowed: frozenset[str], where: str) -> list[Part]:
    parts: list[Part] = []
    for i, item in enumerate(check.as_list(raw, path)):
        block_path = f"{path}[{i}]"
        block = check.as_dict(item, block_path)
        kind = check.need(block, "type", str, block_path + ".")
        if kind not in allowed and kind in _KNOWN_BLOCKS:
            check.fail(block_path + ".type", f"a {kind!r} block is not allowed in {where}")
        parts.append(_decode_block(block, kind, block_path))
    return parts


def _decode_block(b: dict[str, Any], kind: str, path: str) -> Part:
    if kind == "text":
        text = check.need(b, "text", str, path + ".")
        return Text(text=text, cache_control=check.get(b, "cache_control", dict, path + "."))
    if kind == "image":
        return _decode_image(check.as_dict(b.get("source"), path + ".source"), path + ".source")
    if kind == "document":
        return _decode_document(b, path)
    if kind == "tool_use":
        return ToolCall(
            id=check.need(b, "id", str, path + "."),
            name=check.need(b, "name", str, path + "."),
            arguments=_json_text(check.get(b, "input", dict, path + ".") or {}),
        )
    if kind == "tool_result":
        return _decode_tool_result(b, path)
    if kind == "thinking":
        text = check.need(b, "thinking", str, path + ".")
        return decode_thinking(text, check.get(b, "signature", str, path + "."))
    if kind == "redacted_thinking":
        return decode_thinking("", check.need(b, "data", str, path + "."), redacted=True)
    if kind in _PROVIDER_BLOCKS:
        return ProviderItem(dialect=DIALECT, data=b)
    check.fail(path + ".type", f"unsupported content block type {kind!r}")


def _decode_image(source: dict[str, Any], path: str) -> Image:
    kind = source.get("type")
    if kind == "base64":
        data = check.b64decode(check.need(source, "data", str, path + "."), path + ".data")
        return Image(data=data, media_type=check.need(source, "media_type", str, path + "."))
    if kind == "url":
        return Image(url=check.need(source, "url", str, path + "."))
    check.fail(path + ".type", "expected 'base64' or 'url'")


def _decode_document(b: dict[str, Any], path: str) -> File:
    spath = path + ".source"
    source = check.as_dict(b.get("source"), spath)
    title = check.get(b, "title", str, path + ".")
    kind = source.get("type")
    if kind == "base64":
        data = check.b64decode(check.need(source, "data", str, spath + "."), spath + ".data")
        media_type = check.get(source, "media_type", str, spath + ".") or "application/pdf"
        return File(data=data, media_type=media_type, filename=title)
    if kind == "text":
        text = check.need(source, "data", str, spath + ".")
        return File(data=text.encode(), media_type="text/plain", filename=title)
    if kind == "url":
        return File(url=check.need(source, "url", str, spath + "."), filename=title)
    if kind == "content":
        # A document made of blocks: its text is what any other upstream can read.
        inner = source.get("content")
        if isinstance(inner, str):
            parts: list[Part] = [Text(text=inner)]
        else:
            parts = _decode_blocks(inner, spath + ".content", _RESULT_BLOCKS, "document content")
        text = "".join(p.text for p in parts if isinstance(p, Text))
        return File(data=text.encode(), media_type="text/plain", filename=title)
    check.fail(spath + ".type", "expected 'base64', 'text', 'url' or 'content'")


def _decode_tool_result(b: dict[str, Any], path: str) -> ToolResult:
    call_id = check.need(b, "tool_use_id", str, path + ".")
    raw = b.get("content")
    if raw is None or isinstance(raw, str):
        content: list[Part] = [Text(text=raw)] if raw is not None else []
    else:
        content = _decode_blocks(raw, path + ".content", _RESULT_BLOCKS, "tool_result content")
    return ToolResult(
        call_id=call_id,
        content=[p for p in content if isinstance(p, (Text, Image, File))],
        is_error=bool(check.get(b, "is_error", bool, path + ".")),
    )


def _decode_tools(raw: list[Any]) -> tuple[list[Tool], list[dict[str, Any]]]:
    """Client tools, and server tools (versioned ``type``s) kept for an Anthropic upstream."""
    tools: list[Tool] = []
    server: list[dict[str, Any]] = []
    for i, t in enumerate(raw):
        path = f"tools[{i}]."
        spec = check.as_dict(t, path[:-1])
        if spec.get("type") not in (None, "custom"):
            server.append(spec)
            continue
        tools.append(
            Tool(
                name=check.need(spec, "name", str, path),
                description=check.get(spec, "description", str, path),
                parameters=check.get(spec, "input_schema", dict, path),
                strict=check.get(spec, "strict", bool, path),
                cache_control=check.get(spec, "cache_control", dict, path),
            )
        )
    return tools, server


def _decode_tool_choice(req: Request, raw: dict[str, Any]) -> None:
    kind = raw.get("type")
    if kind == "auto":
        req.tool_choice = "auto"
    elif kind == "any":
        req.tool_choice = "required"
    elif kind == "none":
        req.tool_choice = "none"
    elif kind == "tool":
        req.tool_choice = ToolName(check.need(raw, "name", str, "tool_choice."))
    else:
        check.fail("tool_choice.type", "expected 'auto', 'any', 'tool' or 'none'")
    disable = check.get(raw, "disable_parallel_tool_use", bool, "tool_choice.")
    if disable is not None:
        req.parallel_tool_calls = not disable


def _decode_stop_sequences(stops: list[Any] | None) -> list[str] | None:
    if stops is not None and not all(isinstance(s, str) for s in stops):
        check.fail("stop_sequences", "expected an array of strings")
    return stops


def effort_for_budget(budget: int) -> str:
    """The reasoning effort a thinking budget stands for."""
    if budget < 4096:
        return "low"
    return "medium" if budget < 16384 else "high"


def _decode_reasoning(req: Request, body: dict[str, Any]) -> None:
    """``thinking`` and ``output_config`` (their types checked by decode_request): effort, summaries,
    structured output."""
    thinking = body.get("thinking") or {}
    output = body.get("output_config") or {}
    effort = check.get(output, "effort", str, "output_config.")
    kind = thinking.get("type")
    if kind == "enabled":
        budget = check.need(thinking, "budget_tokens", int, "thinking.")
        req.reasoning_effort = effort or effort_for_budget(budget)
    elif kind == "adaptive":
        req.reasoning_effort = effort or "medium"
    elif kind is None:
        req.reasoning_effort = effort
    elif kind != "disabled":
        check.fail("thinking.type", "expected 'enabled', 'adaptive' or 'disabled'")
    if kind in ("enabled", "adaptive") and thinking.get("display") != "omitted":
        req.reasoning_summary = "auto"  # so an OpenAI upstream sends summaries to show as thinking
    fmt = check.get(output, "format", dict, "output_config.")
    if fmt is not None:
        if fmt.get("type") != "json_schema":
            check.fail("output_config.format.type", "expected 'json_schema'")
        schema = check.need(fmt, "schema", dict, "output_config.format.")
        req.response_format = ResponseFormat(type="json_schema", name="response", schema=schema)


def stop_reason_for(stop: StopReason, stop_sequence: str | None, refused: bool = False) -> str:
    if refused and stop in ("stop", "error"):
        return "refusal"
    if stop == "stop" and stop_sequence:
        return "stop_sequence"
    return _STOP_OUT[stop]


def render_part(part: Part) -> dict[str, Any] | None:
    """The response content block for a neutral part, or None when Anthropic has no place for it."""
    if isinstance(part, (Text, Refusal)):
        return {"type": "text", "text": part.text, "citations": None}
    if isinstance(part, ToolCall):
        return {
            "type": "tool_use",
            "id": part.id,
            "name": part.name,
            "input": tool_input(part.arguments),
            "caller": {"type": "direct"},
        }
    if isinstance(part, Reasoning):
        return render_thinking(part)
    if isinstance(part, ProviderItem) and part.dialect == DIALECT:
        return part.data
    return None


def render_response(resp: Response, req: Request) -> dict[str, Any]:
    """A ``message`` object for a neutral response."""
    content = []
    refused = False
    for part in resp.content:
        refused = refused or isinstance(part, Refusal)
        block = render_part(part)
        if block is not None:
            content.append(block)
    stop = stop_reason_for(resp.stop_reason, resp.stop_sequence, refused)
    return {
        "id": message_id(resp.id),
        "type": "message",
        "role": "assistant",
        "model": resp.model or req.model,
        "content": content,
        "stop_reason": stop,
        "stop_sequence": resp.stop_sequence if stop == "stop_sequence" else None,
        "stop_details": None,
        "container": None,
        "usage": render_usage(resp.usage, resp.service_tier),
    }


def ping() -> bytes:
    """A keep-alive event for a stream waiting on a slow upstream."""
    return KEEPALIVE


@dataclass(slots=True)
class _Block:
    """One neutral block as the renderer sees it."""

    part: Part  # the skeleton from BlockStart
    index: int | None = None  # the Anthropic index, once its content_block_start went out
    closed: bool = False
    raw: bool | None = None  # reasoning: streams raw text (True) or summaries (False)
    summary_index: int | None = None  # reasoning: the summary part the last delta extended


class StreamRenderer:
    """Neutral events to Anthropic SSE events (``event:`` lines included: the SDK dispatches on them).

    Blocks are numbered 0, 1, 2… in the order their ``content_block_start`` goes out, one open at a
    time. A reasoning block opens only at its first delta or its stop, because whether it is
    redacted, or empty and to be left out, is known only from the finished part.
    """

    response = None  # no final document in this dialect

    def __init__(self, req: Request, *, input_tokens: int = 0) -> None:
        self._id = message_id("")
        self._model = req.model
        self._input_tokens = input_tokens
        self._blocks: dict[int, _Block] = {}
        self._open: _Block | None = None
        self._next_index = 0
        self._usage: Usage | None = None
        self._refused = False
        self._started = False
        self._done = False

    def end(self) -> bytes:
        """Bytes to write when the stream ends (none: closing the connection ends it)."""
        return b""

    def feed(self, event: StreamEvent) -> bytes:
        if self._done:
            return b""
        if isinstance(event, StreamError):
            self._done = True
            return frame({"type": "error", "error": error_object(event.error)[1]}, "error")
        out = self._message_start(event)
        if isinstance(event, BlockStart):
            out += self._block_start(event.index, event.part)
        elif isinstance(event, BlockDelta):
            out += self._delta(event)
        elif isinstance(event, BlockStop):
            out += self._block_stop(event.index, event.part)
        elif isinstance(event, UsageUpdate):
            self._usage = event.usage
        elif isinstance(event, Finish):
            out += self._finish(event)
        return out

    def _emit(self, kind: str, payload: dict[str, Any]) -> bytes:
        return frame({"type": kind, **payload}, kind)

    def _message_start(self, event: StreamEvent) -> bytes:
        if self._started:
            return b""
        self._started = True
        if isinstance(event, Start):
            self._id = message_id(event.id)
            self._model = event.model or self._model
        # The neutral stream reports usage only at the end; message_delta carries the totals.
        message: dict[str, Any] = {
            "id": self._id,
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": self._model,
            "stop_reason": None,
            "stop_sequence": None,
            "stop_details": None,
            "container": None,
            "usage": render_usage(Usage(input_tokens=self._input_tokens)),
        }
        return self._emit("message_start", {"message": message})

    def _start(self, block: _Block, content_block: dict[str, Any]) -> bytes:
        out = self._close_open()
        block.index = self._next_index
        self._next_index += 1
        self._open = block
        return out + self._emit("content_block_start", {"index": block.index, "content_block": content_block})

    def _close_open(self) -> bytes:
        block, self._open = self._open, None
        if block is None:
            return b""
        block.closed = True
        return self._emit("content_block_stop", {"index": block.index})

    def _delta_event(self, block: _Block, delta: dict[str, Any]) -> bytes:
        return self._emit("content_block_delta", {"index": block.index, "delta": delta})

    def _block_start(self, index: int, part: Part) -> bytes:
        block = self._blocks[index] = _Block(part)
        self._refused = self._refused or isinstance(part, Refusal)
        if isinstance(part, (Text, Refusal)):
            return self._start(block, _TEXT_START)
        if isinstance(part, ToolCall):
            return self._start(block, _tool_use_start(part))
        return self._close_open()  # reasoning and provider items open at their first content

    def _delta(self, event: BlockDelta) -> bytes:
        block = self._blocks.get(event.index)
        if block is None or block.closed:
            return b""
        if isinstance(block.part, (Text, Refusal)):
            return self._delta_event(block, {"type": "text_delta", "text": event.text})
        if isinstance(block.part, ToolCall):
            return self._delta_event(block, {"type": "input_json_delta", "partial_json": event.text})
        if isinstance(block.part, Reasoning):
            return self._thinking_delta(block, event)
        return b""

    def _thinking_delta(self, block: _Block, event: BlockDelta) -> bytes:
        raw = event.summary_index is None
        if block.raw is None:
            block.raw = raw
        elif block.raw != raw:
            return b""  # one kind per block: summaries, or raw text when there are none
        out = b""
        if block.index is None:
            out = self._start(block, {"type": "thinking", "thinking": "", "signature": ""})
        text = event.text
        if not raw and block.summary_index is not None and event.summary_index != block.summary_index:
            text = "\n\n" + text  # summary parts join as render_response joins them
        block.summary_index = event.summary_index
        return out + self._delta_event(block, {"type": "thinking_delta", "thinking": text})

    def _block_stop(self, index: int, part: Part) -> bytes:
        block = self._blocks.get(index)
        if block is None:  # a part that arrived whole, with no BlockStart
            block = self._blocks[index] = _Block(part)
            self._refused = self._refused or isinstance(part, Refusal)
        if block.closed:
            return b""
        if isinstance(part, Reasoning):
            return self._thinking_stop(block, part)
        out = b""
        if block.index is None:
            out = self._start_whole(block, part)
        if self._open is block:
            out += self._close_open()
        return out

    def _start_whole(self, block: _Block, part: Part) -> bytes:
        """A block never started: open it and give its whole content as one delta."""
        if isinstance(part, (Text, Refusal)):
            out = self._start(block, _TEXT_START)
            return out + (
                self._delta_event(block, {"type": "text_delta", "text": part.text}) if part.text else b""
            )
        if isinstance(part, ToolCall):
            out = self._start(block, _tool_use_start(part))
            delta = {"type": "input_json_delta", "partial_json": part.arguments}
            return out + (self._delta_event(block, delta) if part.arguments else b"")
        if isinstance(part, ProviderItem) and part.dialect == DIALECT:
            return self._start(block, part.data)
        block.closed = True
        return b""

    def _thinking_stop(self, block: _Block, part: Reasoning) -> bytes:
        out = b""
        if block.index is None:
            rendered = render_thinking(part)
            if rendered is None:  # nothing to show and nothing to replay
                block.closed = True
                return b""
            if rendered["type"] == "redacted_thinking":
                return self._start(block, rendered) + self._close_open()
            out = self._start(block, {"type": "thinking", "thinking": "", "signature": ""})
            if rendered["thinking"]:
                out += self._delta_event(block, {"type": "thinking_delta", "thinking": rendered["thinking"]})
        signature = signature_for(part)
        if signature:
            out += self._delta_event(block, {"type": "signature_delta", "signature": signature})
        return out + self._close_open()

    def _finish(self, event: Finish) -> bytes:
        out = self._close_open()
        self._done = True
        usage = event.usage or self._usage or Usage()
        stop = stop_reason_for(event.stop_reason, event.stop_sequence, self._refused)
        delta = {
            "stop_reason": stop,
            "stop_sequence": event.stop_sequence if stop == "stop_sequence" else None,
            "stop_details": None,
            "container": None,
        }
        out += self._emit("message_delta", {"delta": delta, "usage": _usage_counts(usage)})
        return out + self._emit("message_stop", {})


_TEXT_START = {"type": "text", "text": "", "citations": None}


def _tool_use_start(part: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": part.id, "name": part.name, "input": {}, "caller": {"type": "direct"}}


# ============================================================================================ errors

# HTTP status -> (status the client sees, Anthropic error type). Upstream unavailability is
# Anthropic's 529 "overloaded", which Anthropic clients know to retry.
_ERRORS: dict[int, tuple[int, str]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    402: (402, "billing_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    500: (500, "api_error"),
    502: (529, "overloaded_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
    529: (529, "overloaded_error"),
}


def error_object(err: Exception) -> tuple[int, dict[str, Any]]:
    """``(status, {"type", "message"})`` for an error, in Anthropic's terms."""
    if not isinstance(err, ModelwireError):
        return 500, {"type": "api_error", "message": "internal error"}
    if isinstance(err, ProtocolError):  # the upstream answered garbage: not an overload
        return 502, {"type": "api_error", "message": err.message}
    fallback = (err.status, "api_error" if err.status >= 500 else "invalid_request_error")
    status, kind = _ERRORS.get(err.status, fallback)
    return status, {"type": kind, "message": err.message}


def render_error(err: ModelwireError) -> tuple[int, dict[str, Any]]:
    status, error = error_object(err)
    return status, {"type": "error", "error": error, "request_id": None}


def apply_param(body: dict[str, Any], name: str, value: Any, opts: object = None) -> None:
    """A route's URI parameter written into a client's own Messages body (``verbosity`` has no
    field here)."""
    if name in ("temperature", "top_p"):
        body[name] = value
    elif name == "max_output_tokens":
        body["max_tokens"] = value
    elif name == "reasoning_effort":
        if value == "none":
            body.pop("thinking", None)
            return
        budget = THINKING_BUDGETS.get(value, MIN_THINKING_BUDGET)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] <= budget:
            body["max_tokens"] = budget + DEFAULT_MAX_TOKENS


def fit_forwarded(body: dict[str, Any], opts: object, stream: bool) -> None:
    """A client's own Messages body made fit for an Anthropic upstream: Claude Code puts
    ``role: "system"`` messages inside ``messages`` as well, and the Messages API has no system
    role, so their blocks are lifted into the top-level ``system``, after what it held (as a
    translated request's system messages are)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not any(_is_system(m) for m in messages):
        return
    system = body.get("system")
    blocks = _system_blocks(system) if system is not None else []
    for message in messages:
        if _is_system(message):
            blocks += _system_blocks(message.get("content"))
    if blocks:
        body["system"] = blocks
    body["messages"] = [m for m in messages if not _is_system(m)]


def _is_system(message: Any) -> bool:
    return isinstance(message, dict) and message.get("role") == "system"


def _system_blocks(content: Any) -> list[Any]:
    """``system`` (or a system message's ``content``) as a list of blocks; an empty text gives none
    (Anthropic refuses empty text blocks)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return list(content) if isinstance(content, list) else []
