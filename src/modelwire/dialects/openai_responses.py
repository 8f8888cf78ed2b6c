"""OpenAI Responses API, both ways.

Surface: :func:`decode_request`, :func:`render_response`, :class:`StreamRenderer`,
:func:`render_error`. Driver: :func:`encode_request`, :func:`decode_response`,
:class:`StreamDecoder`.

Reasoning items carry ``encrypted_content``; reasoning minted by another dialect travels inside it
wrapped by :mod:`.replay`, so a client that replays our items gets the upstream's data back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
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
    ToolChoice,
    ToolName,
    ToolResult,
    Usage,
)
from . import check as check
from . import replay
from .ids import ordered_hex
from .openai_chat import end_user_id, error_object, openai_tier
from .openai_chat import render_error as render_error  # the same envelope and statuses
from .options import NATIVE, WireOptions
from .sse import frame
from .stream import EventBuilder

DIALECT: Dialect = "openai_responses"
log = logging.getLogger("modelwire.dialects.responses")

_KNOWN = frozenset(
    "model input instructions tools tool_choice parallel_tool_calls max_output_tokens temperature top_p "
    "text reasoning service_tier metadata user safety_identifier stream store previous_response_id "
    "prompt_cache_key prompt_cache_retention include".split()
)


MIN_OUTPUT_TOKENS = 16


def new_id(prefix: str) -> str:
    """A response's or an item's id: the store keys rows by them, so they sort by time (ids.py)."""
    return f"{prefix}_{ordered_hex()}"


# The types of the top-level fields, checked before a body is forwarded without decoding.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "input": (str, list),
    "instructions": (str,),
    "temperature": check.NUMBER,
    "top_p": check.NUMBER,
    "max_output_tokens": (int,),
    "max_tool_calls": (int,),
    "top_logprobs": (int,),
    "tools": (list,),
    "include": (list,),
    "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,),
    "store": (bool,),
    "background": (bool,),
    "text": (dict,),
    "reasoning": (dict,),
    "metadata": (dict,),
    "stream_options": (dict,),
    "previous_response_id": (str,),
    "user": (str,),
    "safety_identifier": (str,),
    "service_tier": (str,),
    "prompt_cache_key": (str,),
    "truncation": (str,),
}


# =========================================================================================== driver


def encode_request(
    req: Request, opts: WireOptions = NATIVE, *, include: list[str] | None = None
) -> dict[str, Any]:
    """The ``POST /responses`` body for ``req``."""
    instructions, items = encode_input(req.messages, opts)
    body: dict[str, Any] = {"model": req.model, "input": items}
    if instructions:
        body["instructions"] = instructions
    tools = [encode_tool(t) for t in req.tools]
    if req.dialect == DIALECT and req.extra.get("tools"):
        tools += req.extra["tools"]
    if tools:
        body["tools"] = tools
    if req.tool_choice is not None:
        body["tool_choice"] = encode_tool_choice(req.tool_choice)
    if req.parallel_tool_calls is not None and tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_output_tokens is not None:
        # The Responses API refuses limits under 16; a smaller one would only be a 400.
        body["max_output_tokens"] = max(MIN_OUTPUT_TOKENS, req.max_output_tokens)
    for name in ("temperature", "top_p"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    text = _encode_text(req)
    if text:
        body["text"] = text
    reasoning = {k: v for k, v in (("effort", req.reasoning_effort), ("summary", req.reasoning_summary)) if v}
    if reasoning:
        body["reasoning"] = reasoning
    if req.metadata:
        body["metadata"] = req.metadata
    if opts.native:
        for name in (
            "service_tier",
            "store",
            "previous_response_id",
            "prompt_cache_key",
            "prompt_cache_retention",
        ):
            value = getattr(req, name)
            if value is not None:
                body[name] = value
        if req.user is not None:
            body["safety_identifier"] = end_user_id(req.user)
        if include:
            body["include"] = include
    elif req.user is not None:
        body["user"] = end_user_id(req.user)
    if req.stream:
        body["stream"] = True
    if req.extra and req.dialect in (None, DIALECT):
        body.update({k: v for k, v in req.extra.items() if k != "tools"})
    return body


def encode_input(
    messages: list[Message], opts: WireOptions = NATIVE
) -> tuple[str | None, list[dict[str, Any]]]:
    """``(instructions, input items)``: leading system/developer messages become instructions."""
    lead = 0
    while lead < len(messages) and messages[lead].role in ("system", "developer"):
        lead += 1
    instructions = "\n\n".join(m.text for m in messages[:lead]) or None
    items: list[dict[str, Any]] = []
    for msg in messages[lead:]:
        if msg.role == "assistant":
            items.extend(_encode_assistant(msg, opts))
            continue
        # Results become items of their own; another dialect's opaque items mean nothing here.
        content = [p for p in msg.content if not isinstance(p, ToolResult | ProviderItem)]
        if content or msg.role != "tool":
            role = msg.role if msg.role != "developer" or opts.developer_role else "system"
            items.append({"type": "message", "role": role, "content": _encode_user_content(content)})
        items.extend(_encode_result(p) for p in msg.content if isinstance(p, ToolResult))
    return instructions, items


def _encode_user_content(parts: Sequence[Part]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, Text) for p in parts):
        return "".join(p.text for p in parts if isinstance(p, Text))
    return [encode_input_part(p) for p in parts]


def encode_input_part(part: Part) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, Image):
        out: dict[str, Any] = {"type": "input_image", "detail": part.detail or "auto"}
        if part.file_id:
            out["file_id"] = part.file_id
        else:
            out["image_url"] = part.url or check.data_url(part.media_type, part.data or b"")
        return out
    if isinstance(part, File):
        out = {"type": "input_file"}
        if part.file_id:
            out["file_id"] = part.file_id
        elif part.data is not None:
            out["file_data"] = check.data_url(part.media_type, part.data)
        elif part.url:
            out["file_url"] = part.url
        if part.filename:
            out["filename"] = part.filename
        return out
    if isinstance(part, Audio):
        raise InvalidRequestError("audio input is not supported by the Responses API; use api='chat'")
    if isinstance(part, Refusal):
        return {"type": "input_text", "text": part.text}
    raise InvalidRequestError(f"a {type(part).__name__} part cannot be sent as Responses input content")


def _encode_assistant(msg: Message, opts: WireOptions) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush_text() -> None:
        if texts:
            items.append({"type": "message", "role": "assistant", "content": "".join(texts)})
            texts.clear()

    for part in msg.content:
        if isinstance(part, (Text, Refusal)):
            texts.append(part.text)
        elif isinstance(part, ToolCall):
            flush_text()
            items.append(
                {
                    "type": "function_call",
                    "call_id": part.id,
                    "name": part.name,
                    "arguments": part.arguments or "{}",
                }
            )
        elif isinstance(part, Reasoning):
            flush_text()
            item = _encode_reasoning(part, opts)
            if item is not None:
                items.append(item)
        elif isinstance(part, ProviderItem) and part.dialect == DIALECT:
            flush_text()
            items.append(part.data)
    flush_text()
    # A reasoning item must be followed by the item it produced; an orphan is rejected.
    while items and items[-1]["type"] == "reasoning":
        items.pop()
    return items


def _encode_reasoning(part: Reasoning, opts: WireOptions) -> dict[str, Any] | None:
    """A replayable reasoning item, or None when the upstream could not use it."""
    if part.dialect not in (None, DIALECT) or not part.id:
        return None
    if part.data is None and not opts.native:
        return None
    item: dict[str, Any] = {
        "type": "reasoning",
        "id": part.id,
        "summary": [{"type": "summary_text", "text": s} for s in part.summary],
    }
    if part.data is not None:
        item["encrypted_content"] = part.data
    return item


def _encode_result(part: ToolResult) -> dict[str, Any]:
    if any(not isinstance(p, Text) for p in part.content):
        output: Any = [encode_input_part(p) for p in part.content]
    else:
        output = part.text
        if part.is_error and not output.startswith(("Error", "ERROR", "[")):
            output = f"Error: {output}"
    return {"type": "function_call_output", "call_id": part.call_id, "output": output}


def encode_tool(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters
        if tool.parameters is not None
        else {"type": "object", "properties": {}},
        # Responses defaults strict to true; say false unless the caller asked for it.
        "strict": bool(tool.strict),
    }


def encode_tool_choice(choice: ToolChoice) -> Any:
    if isinstance(choice, ToolName):
        return {"type": "function", "name": choice.name}
    return choice


def _encode_text(req: Request) -> dict[str, Any]:
    text: dict[str, Any] = {}
    fmt = req.response_format
    if fmt is not None:
        if fmt.type == "json_schema":
            spec: dict[str, Any] = {
                "type": "json_schema",
                "name": fmt.name or "response",
                "schema": fmt.schema or {"type": "object"},
            }
            if fmt.strict is not None:
                spec["strict"] = fmt.strict
            if fmt.description is not None:
                spec["description"] = fmt.description
            text["format"] = spec
        else:
            text["format"] = {"type": fmt.type}
    if req.verbosity:
        text["verbosity"] = req.verbosity
    return text


def decode_usage(raw: dict[str, Any] | None) -> Usage:
    if not raw:
        return Usage()
    inp = raw.get("input_tokens_details") or {}
    out = raw.get("output_tokens_details") or {}
    return Usage(
        input_tokens=raw.get("input_tokens") or 0,
        cached_input_tokens=inp.get("cached_tokens") or 0,
        cache_write_tokens=inp.get("cache_write_tokens") or 0,
        output_tokens=raw.get("output_tokens") or 0,
        reasoning_tokens=out.get("reasoning_tokens") or 0,
    )


def decode_output_item(item: dict[str, Any]) -> list[Part]:
    """The neutral parts of one output item (several for a message with several contents)."""
    kind = item.get("type")
    if kind == "message":
        parts: list[Part] = []
        for c in item.get("content") or ():
            if c.get("type") in ("output_text", "input_text"):
                parts.append(Text(text=c.get("text") or ""))
            elif c.get("type") == "refusal":
                parts.append(Refusal(text=c.get("refusal") or ""))
        if isinstance(item.get("content"), str):
            parts.append(Text(text=item["content"]))
        return parts
    if kind == "function_call":
        return [
            ToolCall(
                id=item.get("call_id") or "",
                name=item.get("name") or "",
                arguments=item.get("arguments") or "",
                item_id=item.get("id"),
            )
        ]
    if kind == "reasoning":
        return [decode_reasoning(item)]
    if isinstance(kind, str):
        return [ProviderItem(dialect=DIALECT, data=item)]
    return []


def decode_reasoning(item: dict[str, Any]) -> Reasoning:
    data, dialect, inner_id, redacted = replay.unwrap(item.get("encrypted_content"), DIALECT)
    raw = "".join(c.get("text") or "" for c in item.get("content") or () if isinstance(c, dict))
    return Reasoning(
        summary=[s.get("text") or "" for s in item.get("summary") or () if isinstance(s, dict)],
        text=raw or None,
        id=inner_id if dialect != DIALECT else item.get("id"),
        data=data,
        dialect=dialect,
        redacted=redacted,
    )


def stop_reason(body: dict[str, Any], parts: list[Part]) -> StopReason:
    if body.get("status") == "incomplete":
        reason = (body.get("incomplete_details") or {}).get("reason")
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if any(isinstance(p, ToolCall) for p in parts) else "stop"


def decode_response(body: dict[str, Any]) -> Response:
    """A neutral response from a ``response`` object; a failed response raises."""
    if body.get("status") == "failed":
        raise _failure(body.get("error"))
    output = body.get("output")
    if not isinstance(output, list):
        raise ProtocolError("upstream response has no output list")
    parts = [p for item in output if isinstance(item, dict) for p in decode_output_item(item)]
    return Response(
        id=body.get("id") or "",
        model=body.get("model") or "",
        content=parts,
        stop_reason=stop_reason(body, parts),
        usage=decode_usage(body.get("usage")),
        created=body.get("created_at") or 0,
        service_tier=body.get("service_tier"),
    )


def _failure(error: Any) -> ModelwireError:
    error = error if isinstance(error, dict) else {}
    status = 429 if error.get("code") == "rate_limit_exceeded" else 500
    if error.get("code") in ("invalid_prompt", "context_length_exceeded"):
        status = 400
    return from_response(status, orjson.dumps({"error": error}))


class StreamDecoder:
    """Maps Responses stream events onto neutral events, keyed by ``output_index``."""

    def __init__(self) -> None:
        self._b = EventBuilder()
        self._finished = False
        self._calls = 0
        self._handlers = {
            "response.created": self._created,
            "response.output_item.added": self._item_added,
            "response.output_item.done": self._item_done,
            "response.output_text.delta": self._text_delta,
            "response.refusal.delta": self._refusal_delta,
            "response.function_call_arguments.delta": self._args_delta,
            "response.reasoning_summary_text.delta": self._summary_delta,
            "response.reasoning_text.delta": self._reasoning_text_delta,
            "response.completed": self._completed,
            "response.incomplete": self._completed,
            "response.failed": self._failed,
            "error": self._error,
        }

    def feed(self, data: str) -> list[StreamEvent]:
        if data == "[DONE]":
            return self.end()
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._b.error(ProtocolError(f"upstream sent an event that is not JSON: {data[:80]!r}"))
            self._finished = True
            return self._b.take()
        return self.feed_event(event)

    def feed_event(self, event: Any) -> list[StreamEvent]:
        """One event already parsed (a WebSocket frame holds the same JSON as an SSE event's data)."""
        kind = event.get("type") if isinstance(event, dict) else None
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        if handler is None:
            log.debug("skipping Responses event %r", kind)
            return []
        handler(event)
        return self._b.take()

    def end(self) -> list[StreamEvent]:
        if not self._finished:
            self._finished = True
            self._b.error(ProtocolError("upstream stream ended before the response completed"))
        return self._b.take()

    def _created(self, e: dict[str, Any]) -> None:
        r = e.get("response") or {}
        self._b.start(r.get("id") or "", r.get("model") or "", r.get("created_at") or 0)

    def _item_added(self, e: dict[str, Any]) -> None:
        item = e.get("item") or {}
        oi = e.get("output_index", 0)
        if item.get("type") == "function_call":
            self._calls += 1
            self._b.tool_call(oi, item.get("call_id") or "", item.get("name") or "", item.get("id"))
        elif item.get("type") == "reasoning":
            self._b.open(oi, Reasoning(id=item.get("id"), dialect=DIALECT))

    def _item_done(self, e: dict[str, Any]) -> None:
        item = e.get("item") or {}
        oi = e.get("output_index", 0)
        kind = item.get("type")
        if kind in ("function_call", "reasoning"):
            (final,) = decode_output_item(item)
            if isinstance(final, ToolCall) and not self._b.is_open(oi):
                self._calls += 1
            self._b.close(oi, final)
        elif kind == "message":
            for ci, part in enumerate(decode_output_item(item)):
                key = (oi, ci)
                if self._b.is_open(key):
                    self._b.close(key)
                elif isinstance(part, (Text, Refusal)) and part.text and not self._b.was_closed(key):
                    self._b.close(key, part)  # content that arrived only whole

    def _text_delta(self, e: dict[str, Any]) -> None:
        self._b.text((e.get("output_index", 0), e.get("content_index", 0)), e.get("delta") or "")

    def _refusal_delta(self, e: dict[str, Any]) -> None:
        self._b.refusal((e.get("output_index", 0), e.get("content_index", 0)), e.get("delta") or "")

    def _args_delta(self, e: dict[str, Any]) -> None:
        self._b.arguments(e.get("output_index", 0), e.get("delta") or "")

    def _summary_delta(self, e: dict[str, Any]) -> None:
        self._b.reasoning(
            e.get("output_index", 0), e.get("delta") or "", e.get("summary_index", 0), e.get("item_id")
        )

    def _reasoning_text_delta(self, e: dict[str, Any]) -> None:
        self._b.reasoning(e.get("output_index", 0), e.get("delta") or "", None, e.get("item_id"))

    def _completed(self, e: dict[str, Any]) -> None:
        r = e.get("response") or {}
        usage = decode_usage(r.get("usage"))
        parts: list[Part] = [ToolCall(id="", name="")] if self._calls else []
        self._finished = True
        self._b.usage(usage)
        self._b.finish(stop_reason(r, parts), usage)

    def _failed(self, e: dict[str, Any]) -> None:
        self._finished = True
        self._b.error(_failure((e.get("response") or {}).get("error")))

    def _error(self, e: dict[str, Any]) -> None:
        self._finished = True
        code = e.get("code")
        status = 429 if code == "rate_limit_exceeded" else 500
        self._b.error(
            from_response(status, orjson.dumps({"error": {"message": e.get("message"), "code": code}}))
        )


# ========================================================================================== surface


def decode_request(body: dict[str, Any]) -> Request:
    """A neutral request from a client's ``POST /responses`` body."""
    req = Request(model=check.need(body, "model", str, ""), dialect=DIALECT)
    instructions = check.get(body, "instructions", str, "")
    if instructions:
        req.messages.append(Message(role="developer", content=[Text(text=instructions)]))
    raw = body.get("input")
    if isinstance(raw, str):
        req.messages.append(Message(role="user", content=[Text(text=raw)]))
    elif raw is not None:
        req.messages += decode_input(check.as_list(raw, "input"))
    tools, foreign = _decode_tools(check.get(body, "tools", list, "") or [])
    req.tools = tools
    if body.get("tool_choice") is not None:
        req.tool_choice = _decode_tool_choice(body["tool_choice"])
    req.parallel_tool_calls = check.get(body, "parallel_tool_calls", bool, "")
    req.max_output_tokens = check.get(body, "max_output_tokens", int, "")
    req.temperature = check.get(body, "temperature", float, "")
    req.top_p = check.get(body, "top_p", float, "")
    _decode_text(req, check.get(body, "text", dict, "") or {})
    reasoning = check.get(body, "reasoning", dict, "") or {}
    req.reasoning_effort = check.get(reasoning, "effort", str, "reasoning.")
    req.reasoning_summary = check.get(reasoning, "summary", str, "reasoning.")
    req.service_tier = check.get(body, "service_tier", str, "")
    req.metadata = check.get(body, "metadata", dict, "")
    req.user = check.get(body, "safety_identifier", str, "") or check.get(body, "user", str, "")
    req.stream = bool(check.get(body, "stream", bool, ""))
    req.store = check.get(body, "store", bool, "")
    req.previous_response_id = check.get(body, "previous_response_id", str, "")
    req.prompt_cache_key = check.get(body, "prompt_cache_key", str, "")
    req.prompt_cache_retention = check.get(body, "prompt_cache_retention", str, "")
    req.extra = {k: v for k, v in body.items() if k not in _KNOWN}
    if foreign:
        req.extra["tools"] = foreign
    include = body.get("include")
    if include:
        req.extra["include"] = include
    return req


def decode_input(items: list[Any]) -> list[Message]:
    """Input items to messages; consecutive assistant-side items join one assistant message."""
    messages: list[Message] = []
    for i, raw in enumerate(items):
        path = f"input[{i}]"
        item = check.as_dict(raw, path)
        kind = item.get("type", "message")
        if kind == "message":
            _append(messages, _decode_message(item, path))
        elif kind in ("function_call", "reasoning"):
            part = decode_output_item(item)[0]
            if isinstance(part, ToolCall) and not part.id:
                check.fail(path + ".call_id", "is required")
            _append(messages, Message(role="assistant", content=[part]))
        elif kind == "function_call_output":
            _append(messages, Message(role="tool", content=[_decode_output(item, path)]))
        elif isinstance(kind, str):
            # Built-in tool items, compaction items, item references: only a Responses upstream
            # can use them, verbatim and in place.
            _append(messages, Message(role="assistant", content=[ProviderItem(dialect=DIALECT, data=item)]))
        else:
            check.fail(path + ".type", "expected a string")
    return messages


def _append(messages: list[Message], msg: Message) -> None:
    last = messages[-1] if messages else None
    if last is not None and last.role == msg.role and msg.role in ("assistant", "tool"):
        last.content.extend(msg.content)
    else:
        messages.append(msg)


def _decode_message(item: dict[str, Any], path: str) -> Message:
    role = check.need(item, "role", str, path + ".")
    if role not in ("user", "assistant", "system", "developer"):
        check.fail(path + ".role", f"unsupported role {role!r}")
    content = item.get("content")
    if isinstance(content, str):
        return Message(role=role, content=[Text(text=content)])  # type: ignore[arg-type]
    parts = [
        _decode_part(check.as_dict(c, f"{path}.content[{j}]"), f"{path}.content[{j}]")
        for j, c in enumerate(check.as_list(content, path + ".content"))
    ]
    return Message(role=role, content=parts, id=item.get("id"))  # type: ignore[arg-type]


def _decode_part(c: dict[str, Any], path: str) -> Part:
    kind = c.get("type")
    if kind in ("input_text", "output_text", "text"):
        return Text(text=check.need(c, "text", str, path + "."))
    if kind == "refusal":
        return Refusal(text=check.need(c, "refusal", str, path + "."))
    if kind == "input_image":
        url = check.get(c, "image_url", str, path + ".")
        inline = check.parse_data_url(url, path + ".image_url") if url else None
        if inline:
            return Image(data=inline[1], media_type=inline[0], detail=c.get("detail"))
        if url is None and not c.get("file_id"):
            check.fail(path, "needs image_url or file_id")
        return Image(url=url, file_id=c.get("file_id"), detail=c.get("detail"))
    if kind == "input_file":
        data = check.get(c, "file_data", str, path + ".")
        inline = check.parse_data_url(data, path + ".file_data") if data else None
        if data and inline is None:
            inline = ("application/pdf", check.b64decode(data, path + ".file_data"))
        return File(
            file_id=c.get("file_id"),
            url=c.get("file_url"),
            filename=c.get("filename"),
            data=inline[1] if inline else None,
            media_type=inline[0] if inline else None,
        )
    check.fail(path + ".type", f"unsupported content type {kind!r}")


def _decode_output(item: dict[str, Any], path: str) -> ToolResult:
    call_id = check.need(item, "call_id", str, path + ".")
    output = item.get("output")
    if isinstance(output, str):
        return ToolResult(call_id=call_id, content=[Text(text=output)])
    parts = [
        _decode_part(check.as_dict(c, f"{path}.output[{j}]"), f"{path}.output[{j}]")
        for j, c in enumerate(check.as_list(output, path + ".output"))
    ]
    return ToolResult(call_id=call_id, content=[p for p in parts if isinstance(p, (Text, Image, File))])


def _decode_tools(raw: list[Any]) -> tuple[list[Tool], list[dict[str, Any]]]:
    """Function tools, and the rest (built-in and custom tools) kept for a Responses upstream."""
    tools: list[Tool] = []
    foreign: list[dict[str, Any]] = []
    for i, t in enumerate(raw):
        path = f"tools[{i}]"
        spec = check.as_dict(t, path)
        if spec.get("type") != "function":
            foreign.append(spec)
            continue
        tools.append(
            Tool(
                name=check.need(spec, "name", str, path + "."),
                description=check.get(spec, "description", str, path + "."),
                parameters=check.get(spec, "parameters", dict, path + "."),
                strict=check.get(spec, "strict", bool, path + "."),
            )
        )
    return tools, foreign


def _decode_tool_choice(raw: Any) -> ToolChoice:
    if raw in ("auto", "none", "required"):
        return raw  # type: ignore[no-any-return]
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("name"), str):
        return ToolName(raw["name"])
    check.fail("tool_choice", "expected 'auto', 'none', 'required' or {type: 'function', name}")


def _decode_text(req: Request, text: dict[str, Any]) -> None:
    req.verbosity = check.get(text, "verbosity", str, "text.")
    fmt = check.get(text, "format", dict, "text.")
    if not fmt:
        return
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        req.response_format = ResponseFormat(type=kind)
    elif kind == "json_schema":
        req.response_format = ResponseFormat(
            type="json_schema",
            name=check.need(fmt, "name", str, "text.format."),
            schema=check.get(fmt, "schema", dict, "text.format."),
            strict=check.get(fmt, "strict", bool, "text.format."),
            description=check.get(fmt, "description", str, "text.format."),
        )
    else:
        check.fail("text.format.type", "expected 'text', 'json_object' or 'json_schema'")


def render_usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {
            "cached_tokens": u.cached_input_tokens,
            "cache_write_tokens": u.cache_write_tokens,
        },
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    }


def render_output(parts: list[Part]) -> list[dict[str, Any]]:
    """Output items for neutral parts: runs of text and refusals share one message item."""
    items: list[dict[str, Any]] = []
    message: dict[str, Any] | None = None
    for part in parts:
        if isinstance(part, (Text, Refusal)):
            if message is None:
                message = _message_item("completed")
                items.append(message)
            message["content"].append(_content_part(part))
            continue
        message = None
        if isinstance(part, ToolCall):
            items.append(_call_item(part, "completed"))
        elif isinstance(part, Reasoning):
            items.append(render_reasoning(part))
        elif isinstance(part, ProviderItem) and part.dialect == DIALECT:
            items.append(part.data)
    return items


def _message_item(status: str) -> dict[str, Any]:
    return {"id": new_id("msg"), "type": "message", "status": status, "role": "assistant", "content": []}


def _content_part(part: Text | Refusal) -> dict[str, Any]:
    if isinstance(part, Refusal):
        return {"type": "refusal", "refusal": part.text}
    return {"type": "output_text", "text": part.text, "annotations": [], "logprobs": []}


def _call_item(part: ToolCall, status: str) -> dict[str, Any]:
    return {
        "id": part.item_id or new_id("fc"),
        "type": "function_call",
        "status": status,
        "call_id": part.id,
        "name": part.name,
        "arguments": part.arguments,
    }


def render_reasoning(part: Reasoning) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": part.id if part.dialect in (None, DIALECT) and part.id else new_id("rs"),
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": s} for s in part.summary],
    }
    if part.text:
        item["content"] = [{"type": "reasoning_text", "text": part.text}]
    token = replay.token_for(part, DIALECT)
    if token is not None:
        item["encrypted_content"] = token
    return item


def render_response(resp: Response, req: Request, *, status: str | None = None) -> dict[str, Any]:
    """A ``response`` object for a neutral response, echoing the request's settings."""
    out = response_skeleton(resp.id, resp.model, req, resp.created)
    out["output"] = render_output(resp.content)
    _set_outcome(out, resp.stop_reason)
    out["usage"] = render_usage(resp.usage)
    out["service_tier"] = openai_tier(resp.service_tier or out["service_tier"])
    if status:
        out["status"] = status
    return out


def _set_outcome(out: dict[str, Any], stop: StopReason) -> None:
    if stop in ("length", "content_filter"):
        out["status"] = "incomplete"
        out["incomplete_details"] = {"reason": "max_output_tokens" if stop == "length" else "content_filter"}
    else:
        out["status"] = "completed"
        out["completed_at"] = int(time.time())


def response_skeleton(id: str, model: str, req: Request, created: int = 0) -> dict[str, Any]:
    """The ``response`` envelope with every required field, output empty and in progress."""
    fmt = req.response_format
    text: dict[str, Any] = {"format": {"type": "text"}}
    if fmt is not None:
        text = _encode_text(req) or text
    return {
        "id": id if id.startswith("resp_") else new_id("resp"),
        "object": "response",
        "created_at": created or int(time.time()),
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": req.max_output_tokens,
        "model": model or req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": req.reasoning_effort, "summary": req.reasoning_summary},
        "service_tier": req.service_tier or "default",
        "store": req.store if req.store is not None else True,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": text,
        "tool_choice": encode_tool_choice(req.tool_choice) if req.tool_choice is not None else "auto",
        "tools": [encode_tool(t) for t in req.tools] + list(req.extra.get("tools") or ()),
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": "disabled",
        "metadata": req.metadata or {},
    }


class StreamRenderer:
    """Neutral events to Responses SSE events, with sequence numbers and the final response."""

    def __init__(self, req: Request, *, response_id: str | None = None) -> None:
        self._req = req
        self._seq = 0
        self._resp = response_skeleton(response_id or new_id("resp"), req.model, req)
        self._output: list[dict[str, Any]] = []
        self._message: dict[str, Any] | None = None
        self._blocks: dict[int, tuple[int, int, Part]] = {}  # block -> (output_index, content_index, part)
        self._summaries: dict[int, set[int]] = {}
        self._started = False
        self.response: dict[str, Any] | None = None  # the final response object once finished

    def end(self) -> bytes:
        """Bytes to write when the stream ends (none: closing the connection ends it)."""
        return b""

    @property
    def response_id(self) -> str:
        return str(self._resp["id"])

    def _emit(self, kind: str, payload: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self._seq, **payload}
        self._seq += 1
        return frame(payload, kind)

    def start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        return self._emit("response.created", {"response": self._resp}) + self._emit(
            "response.in_progress", {"response": self._resp}
        )

    def feed(self, event: StreamEvent) -> bytes:
        if isinstance(event, Start):
            self._resp["model"] = event.model or self._resp["model"]
            if not self._started and event.id.startswith("resp_"):
                self._resp["id"] = event.id  # the upstream's own, as a whole answer keeps it
            return self.start()
        out = self.start()
        if isinstance(event, BlockDelta):
            return out + self._delta(event)
        if isinstance(event, BlockStart):
            return out + self._block_start(event.index, event.part)
        if isinstance(event, BlockStop):
            return out + self._block_stop(event.index, event.part)
        if isinstance(event, Finish):
            return out + self._finish(event)
        if isinstance(event, StreamError):
            return out + self._fail(event.error)
        return out  # UsageUpdate: usage goes out with the final response

    def _close_message(self) -> bytes:
        msg = self._message
        if msg is None:
            return b""
        self._message = None
        msg["status"] = "completed"
        return self._emit("response.output_item.done", {"output_index": self._output.index(msg), "item": msg})

    def _add_item(self, item: dict[str, Any]) -> bytes:
        self._output.append(item)
        return self._emit("response.output_item.added", {"output_index": len(self._output) - 1, "item": item})

    def _block_start(self, index: int, part: Part) -> bytes:
        if isinstance(part, (Text, Refusal)):
            out = b""
            if self._message is None:
                self._message = _message_item("in_progress")
                out += self._add_item(self._message)
            msg = self._message
            oi, ci = self._output.index(msg), len(msg["content"])
            skeleton = _content_part(part)
            msg["content"].append(skeleton)
            self._blocks[index] = (oi, ci, part)
            return out + self._emit(
                "response.content_part.added",
                {"item_id": msg["id"], "output_index": oi, "content_index": ci, "part": skeleton},
            )
        out = self._close_message()
        if isinstance(part, ToolCall):
            item = _call_item(part, "in_progress")
        elif isinstance(part, Reasoning):
            item = {
                "id": part.id if part.id and part.dialect in (None, DIALECT) else new_id("rs"),
                "type": "reasoning",
                "summary": [],
            }
            self._summaries[index] = set()
        else:
            return out
        self._blocks[index] = (len(self._output), 0, part)
        return out + self._add_item(item)

    def _delta(self, event: BlockDelta) -> bytes:
        oi, ci, part = self._blocks[event.index]
        item_id = self._output[oi]["id"]
        base = {"item_id": item_id, "output_index": oi}
        if isinstance(part, Text):
            return self._emit(
                "response.output_text.delta",
                {**base, "content_index": ci, "delta": event.text, "logprobs": []},
            )
        if isinstance(part, Refusal):
            return self._emit("response.refusal.delta", {**base, "content_index": ci, "delta": event.text})
        if isinstance(part, ToolCall):
            return self._emit("response.function_call_arguments.delta", {**base, "delta": event.text})
        if isinstance(part, Reasoning):
            si = event.summary_index
            if si is None:
                return self._emit(
                    "response.reasoning_text.delta", {**base, "content_index": 0, "delta": event.text}
                )
            out = b""
            if si not in self._summaries[event.index]:
                self._summaries[event.index].add(si)
                out = self._emit(
                    "response.reasoning_summary_part.added",
                    {**base, "summary_index": si, "part": {"type": "summary_text", "text": ""}},
                )
            return out + self._emit(
                "response.reasoning_summary_text.delta", {**base, "summary_index": si, "delta": event.text}
            )
        return b""

    def _block_stop(self, index: int, part: Part) -> bytes:
        if index not in self._blocks:
            return (
                self._block_start(index, part) + self._block_stop(index, part)
                if isinstance(part, (Text, Refusal, ToolCall, Reasoning))
                else b""
            )
        oi, ci, _ = self._blocks.pop(index)
        item = self._output[oi]
        base = {"item_id": item["id"], "output_index": oi}
        if isinstance(part, (Text, Refusal)):
            done = _content_part(part)
            item["content"][ci] = done
            kind = "response.output_text.done" if isinstance(part, Text) else "response.refusal.done"
            field = {"text": part.text, "logprobs": []} if isinstance(part, Text) else {"refusal": part.text}
            return self._emit(kind, {**base, "content_index": ci, **field}) + self._emit(
                "response.content_part.done", {**base, "content_index": ci, "part": done}
            )
        if isinstance(part, ToolCall):
            item.update(_call_item(part, "completed"), id=item["id"])
            out = self._emit(
                "response.function_call_arguments.done",
                {**base, "name": part.name, "arguments": part.arguments},
            )
            return out + self._emit("response.output_item.done", {"output_index": oi, "item": item})
        if isinstance(part, Reasoning):
            return self._reasoning_done(index, oi, part)
        return b""

    def _reasoning_done(self, index: int, oi: int, part: Reasoning) -> bytes:
        item = self._output[oi]
        done = render_reasoning(part)
        done["id"] = item["id"]
        base = {"item_id": item["id"], "output_index": oi}
        out = b""
        opened = self._summaries.pop(index, set())
        for si, entry in enumerate(done["summary"]):
            if si not in opened:
                out += self._emit(
                    "response.reasoning_summary_part.added",
                    {**base, "summary_index": si, "part": {"type": "summary_text", "text": ""}},
                )
            out += self._emit(
                "response.reasoning_summary_text.done", {**base, "summary_index": si, "text": entry["text"]}
            )
            out += self._emit(
                "response.reasoning_summary_part.done", {**base, "summary_index": si, "part": entry}
            )
        if part.text:
            out += self._emit("response.reasoning_text.done", {**base, "content_index": 0, "text": part.text})
        self._output[oi] = done
        return out + self._emit("response.output_item.done", {"output_index": oi, "item": done})

    def _finish(self, event: Finish) -> bytes:
        out = self._close_message()
        resp = self._resp
        resp["output"] = self._output
        _set_outcome(resp, event.stop_reason)
        resp["usage"] = render_usage(event.usage or Usage())
        self.response = resp
        kind = "response.completed" if resp["status"] == "completed" else "response.incomplete"
        return out + self._emit(kind, {"response": resp})

    def _fail(self, error: Exception) -> bytes:
        resp = self._resp
        resp["output"] = self._output
        resp["status"] = "failed"
        err = error_object(error)
        resp["error"] = {"code": response_error_code(err["code"], error), "message": err["message"]}
        self.response = resp
        return self._emit("response.failed", {"response": resp})


# ============================================================================================ errors

# A failed response's ``error.code`` is an enum (the spec's ``ResponseErrorCode``): typed clients
# reject anything else, so other codes are said as the nearest of these (the message keeps the detail).
RESPONSE_ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "data_residency_mismatch",
        "bio_policy",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)


def response_error_code(code: str | None, error: Exception) -> str:
    if code in RESPONSE_ERROR_CODES:
        return code
    return "rate_limit_exceeded" if getattr(error, "status", None) == 429 else "server_error"


def apply_param(body: dict[str, Any], name: str, value: Any, opts: WireOptions = NATIVE) -> None:
    """A route's URI parameter written into a client's own Responses body."""
    if name in ("temperature", "top_p", "max_output_tokens"):
        body[name] = value
    elif name == "reasoning_effort":
        body["reasoning"] = {**(body.get("reasoning") or {}), "effort": value}
    elif name == "verbosity":
        body["text"] = {**(body.get("text") or {}), "verbosity": value}
