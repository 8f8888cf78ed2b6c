"""OpenAI Chat Completions, both ways.

Surface (a client speaks Chat to us): :func:`decode_request`, :func:`render_response`,
:class:`StreamRenderer`, :func:`render_error`.
Driver (we speak Chat to an upstream): :func:`encode_request`, :func:`decode_response`,
:class:`StreamDecoder`.
"""

from __future__ import annotations

import base64
import hashlib
import time
from typing import Any

import orjson

from ..errors import InvalidRequestError, ModelwireError, ProtocolError, from_response
from ..types import (
    Audio,
    BlockDelta,
    BlockStart,
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
from .options import NATIVE, WireOptions
from .sse import frame
from .stream import EventBuilder

DIALECT: Dialect = "openai_chat"

_FINISH_IN: dict[str, StopReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}
_FINISH_OUT: dict[StopReason, str] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "content_filter": "content_filter",
    "refusal": "stop",
    "pause": "stop",
    "error": "stop",
}

# Fields decode_request understands; anything else is kept in Request.extra for a Chat upstream.
_KNOWN = frozenset(
    "model messages tools tool_choice parallel_tool_calls max_tokens max_completion_tokens temperature "
    "top_p stop seed response_format reasoning_effort verbosity service_tier metadata user "
    "safety_identifier stream stream_options store prompt_cache_key prompt_cache_retention n".split()
)


# The types of the top-level fields, checked before a body is forwarded without decoding.
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "messages": (list,),
    "temperature": check.NUMBER,
    "top_p": check.NUMBER,
    "frequency_penalty": check.NUMBER,
    "presence_penalty": check.NUMBER,
    "max_tokens": (int,),
    "max_completion_tokens": (int,),
    "n": (int,),
    "seed": (int,),
    "top_logprobs": (int,),
    "tools": (list,),
    "tool_choice": (str, dict),
    "parallel_tool_calls": (bool,),
    "logprobs": (bool,),
    "store": (bool,),
    "stop": (str, list),
    "response_format": (dict,),
    "stream_options": (dict,),
    "metadata": (dict,),
    "logit_bias": (dict,),
    "user": (str,),
    "safety_identifier": (str,),
    "reasoning_effort": (str,),
    "verbosity": (str,),
    "service_tier": (str,),
    "prompt_cache_key": (str,),
}


# =========================================================================================== driver


def encode_request(req: Request, opts: WireOptions = NATIVE) -> dict[str, Any]:
    """The Chat Completions body for ``req``."""
    body: dict[str, Any] = {"model": req.model, "messages": _encode_messages(req.messages, opts)}
    if req.tools:
        body["tools"] = [_encode_tool(t) for t in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = _encode_tool_choice(req.tool_choice)
    if req.parallel_tool_calls is not None and req.tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.max_output_tokens is not None:
        body[opts.max_tokens_field] = req.max_output_tokens
    _copy_set(body, req, ("temperature", "top_p", "seed", "verbosity", "reasoning_effort"))
    if req.stop:
        body["stop"] = req.stop
    if req.response_format is not None:
        body["response_format"] = _encode_format(req.response_format)
    if req.metadata:
        body["metadata"] = req.metadata
    if opts.native:
        _copy_set(body, req, ("service_tier", "store", "prompt_cache_key", "prompt_cache_retention"))
        if req.user is not None:
            body["safety_identifier"] = end_user_id(req.user)
    elif req.user is not None:
        body["user"] = end_user_id(req.user)
    if req.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    if req.extra and req.dialect in (None, DIALECT):
        body.update(req.extra)
    return body


def _copy_set(body: dict[str, Any], req: Request, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(req, name)
        if value is not None:
            body[name] = value


def _encode_messages(messages: list[Message], opts: WireOptions) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for msg in messages:
        if msg.role == "tool":
            out.extend(_encode_tool_results(msg))
        elif msg.role == "assistant":
            out.append(_encode_assistant(msg))
        else:
            role = msg.role if msg.role != "developer" or opts.developer_role else "system"
            first = msg.content[0] if len(msg.content) == 1 else None
            text = first.text if type(first) is Text else None  # most turns: one text, sent as a string
            entry: dict[str, Any] = {
                "role": role,
                "content": text if text is not None else _encode_content(msg.content),
            }
            if msg.name:
                entry["name"] = msg.name
            out.append(entry)
            if text is None:  # a user turn may carry tool results too (Anthropic puts them there)
                out.extend(_encode_tool_results(msg))
    return out


def end_user_id(user: str) -> str:
    """``user`` fitted to OpenAI's 64-character limit (Claude Code sends ~150): long ones hashed."""
    return user if len(user) <= 64 else "u_" + hashlib.sha256(user.encode()).hexdigest()[:62]


def _encode_content(parts: list[Part]) -> str | list[dict[str, Any]]:
    shown = [p for p in parts if not isinstance(p, (ToolResult, ToolCall, Reasoning, ProviderItem))]
    if all(isinstance(p, Text) for p in shown):
        # A prompt's texts are separate blocks (Claude Code's system blocks, the reminders before
        # its user's words): glued together they would run into each other.
        return "\n\n".join(p.text for p in shown if isinstance(p, Text))
    return [_encode_part(p) for p in shown]


def _encode_part(part: Part) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        url = part.url or (check.data_url(part.media_type, part.data) if part.data is not None else "")
        image: dict[str, Any] = {"url": url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if isinstance(part, Audio):
        return {
            "type": "input_audio",
            "input_audio": {"data": base64.b64encode(part.data).decode(), "format": part.format},
        }
    if isinstance(part, File):
        file: dict[str, Any] = {}
        if part.file_id:
            file["file_id"] = part.file_id
        elif part.data is not None:
            file["file_data"] = check.data_url(part.media_type, part.data)
        elif part.url:
            raise InvalidRequestError("Chat Completions cannot take a file by URL", param="file")
        if part.filename:
            file["filename"] = part.filename
        return {"type": "file", "file": file}
    if isinstance(part, Refusal):
        return {"type": "refusal", "refusal": part.text}
    raise InvalidRequestError(f"a {type(part).__name__} part cannot be sent in Chat Completions content")


def _encode_assistant(msg: Message) -> dict[str, Any]:
    text = "".join(p.text for p in msg.content if isinstance(p, Text))
    refusal = "".join(p.text for p in msg.content if isinstance(p, Refusal))
    calls = msg.tool_calls
    entry: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if refusal:
        entry["refusal"] = refusal
    if calls:
        entry["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments or "{}"}}
            for c in calls
        ]
    if msg.name:
        entry["name"] = msg.name
    return entry


def _encode_tool_results(msg: Message) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    for part in msg.content:
        if not isinstance(part, ToolResult):
            continue
        text = part.text
        if part.is_error and not text.startswith(("Error", "ERROR", "[")):
            text = f"Error: {text}"
        out.append({"role": "tool", "tool_call_id": part.call_id, "content": text})
        images += [_encode_part(p) for p in part.content if isinstance(p, Image)]
    if images:
        # Chat tool messages hold text only; images a tool returned follow as a user turn.
        out.append(
            {"role": "user", "content": [{"type": "text", "text": "Images returned by the tool:"}, *images]}
        )
    return out


def _encode_tool(tool: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        fn["description"] = tool.description
    fn["parameters"] = (
        tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}}
    )
    if tool.strict is not None:
        fn["strict"] = tool.strict
    return {"type": "function", "function": fn}


def _encode_tool_choice(choice: ToolChoice) -> Any:
    if isinstance(choice, ToolName):
        return {"type": "function", "function": {"name": choice.name}}
    return choice


def _encode_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec: dict[str, Any] = {"name": fmt.name or "response"}
    if fmt.description is not None:
        spec["description"] = fmt.description
    if fmt.schema is not None:
        spec["schema"] = fmt.schema
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


_EMPTY: dict[str, Any] = {}  # what an absent object reads as (never written to)


def decode_usage(raw: dict[str, Any] | None) -> Usage:
    if not raw:
        return Usage()
    prompt = raw.get("prompt_tokens_details") or _EMPTY
    completion = raw.get("completion_tokens_details") or _EMPTY
    return Usage(
        input_tokens=raw.get("prompt_tokens") or 0,
        cached_input_tokens=prompt.get("cached_tokens") or 0,
        output_tokens=raw.get("completion_tokens") or 0,
        reasoning_tokens=completion.get("reasoning_tokens") or 0,
    )


def decode_response(body: dict[str, Any]) -> Response:
    """A neutral response from a ``chat.completion`` object."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ProtocolError("upstream chat completion has no choices")
    choice = choices[0]
    msg = choice.get("message") or _EMPTY
    parts: list[Part] = []
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    if isinstance(reasoning, str) and reasoning:
        parts.append(Reasoning(text=reasoning))
    if content := msg.get("content"):
        parts.append(Text(text=content))
    if refusal := msg.get("refusal"):
        parts.append(Refusal(text=refusal))
    before_calls = len(parts)
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or _EMPTY
        parts.append(
            ToolCall(id=call.get("id") or "", name=fn.get("name") or "", arguments=fn.get("arguments") or "")
        )
    stop = _FINISH_IN.get(choice.get("finish_reason") or "stop", "stop")
    if stop == "stop" and len(parts) > before_calls:  # it called tools
        stop = "tool_calls"
    return Response(
        id=body.get("id") or "",
        model=body.get("model") or "",
        content=parts,
        stop_reason=stop,
        usage=decode_usage(body.get("usage")),
        created=body.get("created") or 0,
        service_tier=body.get("service_tier"),
    )


class StreamDecoder:
    """Maps ``chat.completion.chunk`` payloads onto neutral events."""

    def __init__(self) -> None:
        self._b = EventBuilder()
        self._started = False
        self._stop: StopReason | None = None
        self._usage: Usage | None = None
        self._tools: dict[int, str] = {}
        self._ended = False

    def feed(self, data: str) -> list[StreamEvent]:
        if data == "[DONE]":
            return self.end()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            self._b.error(ProtocolError(f"upstream sent a chunk that is not JSON: {data[:80]!r}"))
            return self._b.take()
        if not isinstance(chunk, dict):
            return []
        if chunk.get("error"):
            self._b.error(_stream_error(chunk["error"]))
            return self._b.take()
        if not self._started and chunk.get("id"):
            self._started = True
            self._b.start(chunk["id"], chunk.get("model") or "", chunk.get("created") or 0)
        if chunk.get("usage"):
            self._usage = decode_usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                self._choice(choice)
        return self._b.take()

    def _choice(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta")
        if isinstance(delta, dict):
            b = self._b
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                b.reasoning("reasoning", reasoning, summary_index=None)
            if delta.get("content"):
                b.text("text", delta["content"])
            if delta.get("refusal"):
                b.refusal("refusal", delta["refusal"])
            for call in delta.get("tool_calls") or ():
                self._tool_delta(call)
        if choice.get("finish_reason"):
            self._stop = _FINISH_IN.get(choice["finish_reason"], "stop")

    def _tool_delta(self, call: dict[str, Any]) -> None:
        index = call.get("index", 0)
        key = ("tool", index)
        fn = call.get("function") or _EMPTY
        if index not in self._tools:
            self._tools[index] = call.get("id") or f"call_{index}"
            self._b.tool_call(key, self._tools[index], fn.get("name") or "")
        if fn.get("arguments"):
            self._b.arguments(key, fn["arguments"])

    def end(self) -> list[StreamEvent]:
        """The stream is over ([DONE] or the connection closed)."""
        if self._ended:
            return []
        self._ended = True
        if self._stop is None:
            self._b.error(ProtocolError("upstream stream ended before the answer finished"))
            return self._b.take()
        stop = self._stop
        if stop == "stop" and self._tools:
            stop = "tool_calls"
        if self._usage is not None:
            self._b.usage(self._usage)
        self._b.finish(stop, self._usage)
        return self._b.take()


def _stream_error(error: Any) -> ModelwireError:
    return from_response(
        int(error.get("status") or 500) if isinstance(error, dict) else 500, orjson.dumps({"error": error})
    )


# ========================================================================================== surface


def decode_request(body: dict[str, Any]) -> Request:
    """A neutral request from a client's Chat Completions body."""
    model = check.need(body, "model", str, "")
    raw_messages = check.need(body, "messages", list, "")
    if not raw_messages:
        check.fail("messages", "must contain at least one message")
    if (check.get(body, "n", int, "") or 1) > 1:
        check.fail("n", "only n=1 is supported on this route")
    req = Request(
        model=model, messages=[_decode_message(m, f"messages[{i}]") for i, m in enumerate(raw_messages)]
    )
    req.dialect = DIALECT
    tools = check.get(body, "tools", list, "")
    if tools:
        req.tools = [_decode_tool(t, f"tools[{i}]") for i, t in enumerate(tools)]
    if "tool_choice" in body and body["tool_choice"] is not None:
        req.tool_choice = _decode_tool_choice(body["tool_choice"])
    req.parallel_tool_calls = check.get(body, "parallel_tool_calls", bool, "")
    req.max_output_tokens = check.get(body, "max_completion_tokens", int, "") or check.get(
        body, "max_tokens", int, ""
    )
    req.temperature = check.get(body, "temperature", float, "")
    req.top_p = check.get(body, "top_p", float, "")
    req.stop = check.str_list(body, "stop", "")
    req.seed = check.get(body, "seed", int, "")
    if body.get("response_format") is not None:
        req.response_format = _decode_format(check.as_dict(body["response_format"], "response_format"))
    req.reasoning_effort = check.get(body, "reasoning_effort", str, "")
    req.verbosity = check.get(body, "verbosity", str, "")
    req.service_tier = check.get(body, "service_tier", str, "")
    req.metadata = check.get(body, "metadata", dict, "")
    req.user = check.get(body, "safety_identifier", str, "") or check.get(body, "user", str, "")
    req.stream = bool(check.get(body, "stream", bool, ""))
    req.store = check.get(body, "store", bool, "")
    req.prompt_cache_key = check.get(body, "prompt_cache_key", str, "")
    req.prompt_cache_retention = check.get(body, "prompt_cache_retention", str, "")
    req.extra = {k: v for k, v in body.items() if k not in _KNOWN}
    return req


def include_usage(body: dict[str, Any]) -> bool:
    """Whether a streaming client asked for the final usage chunk."""
    opts = body.get("stream_options")
    return isinstance(opts, dict) and bool(opts.get("include_usage"))


def _decode_message(raw: Any, path: str) -> Message:
    m = check.as_dict(raw, path)
    role = check.need(m, "role", str, path + ".")
    name = check.get(m, "name", str, path + ".")
    if role in ("system", "developer", "user"):
        return Message(role=role, content=_decode_content(m.get("content"), path + ".content"), name=name)  # type: ignore[arg-type]
    if role == "assistant":
        return _decode_assistant(m, path)
    if role == "tool":
        call_id = check.need(m, "tool_call_id", str, path + ".")
        content = [p for p in _decode_content(m.get("content"), path + ".content") if isinstance(p, Text)]
        return Message(role="tool", content=[ToolResult(call_id=call_id, content=list(content))])
    check.fail(path + ".role", f"unsupported role {role!r}")


def _decode_content(raw: Any, path: str) -> list[Part]:
    if raw is None:
        return []
    if isinstance(raw, str):
        return [Text(text=raw)]
    return [
        _decode_part(check.as_dict(p, f"{path}[{i}]"), f"{path}[{i}]")
        for i, p in enumerate(check.as_list(raw, path))
    ]


def _decode_part(p: dict[str, Any], path: str) -> Part:
    kind = p.get("type")
    if kind == "text":
        return Text(text=check.need(p, "text", str, path + "."))
    if kind == "image_url":
        spec = p.get("image_url")
        url = (
            spec
            if isinstance(spec, str)
            else check.need(check.as_dict(spec, path + ".image_url"), "url", str, path + ".image_url.")
        )
        detail = spec.get("detail") if isinstance(spec, dict) else None
        inline = check.parse_data_url(url, path + ".image_url.url")
        if inline:
            return Image(data=inline[1], media_type=inline[0], detail=detail)
        return Image(url=url, detail=detail)
    if kind == "input_audio":
        audio = check.as_dict(p.get("input_audio"), path + ".input_audio")
        data = check.b64decode(
            check.need(audio, "data", str, path + ".input_audio."), path + ".input_audio.data"
        )
        return Audio(data=data, format=check.need(audio, "format", str, path + ".input_audio."))
    if kind == "file":
        spec = check.as_dict(p.get("file"), path + ".file")
        inline = check.parse_data_url(spec.get("file_data") or "", path + ".file.file_data")
        if inline is None and spec.get("file_data"):
            # Chat's file_data is also sent as bare base64 by some clients.
            inline = ("application/pdf", check.b64decode(spec["file_data"], path + ".file.file_data"))
        return File(
            file_id=spec.get("file_id"),
            data=inline[1] if inline else None,
            media_type=inline[0] if inline else None,
            filename=spec.get("filename"),
        )
    if kind == "refusal":
        return Refusal(text=check.need(p, "refusal", str, path + "."))
    check.fail(path + ".type", f"unsupported content part type {kind!r}")


def _decode_assistant(m: dict[str, Any], path: str) -> Message:
    parts = _decode_content(m.get("content"), path + ".content")
    if m.get("refusal"):
        parts.append(Refusal(text=check.need(m, "refusal", str, path + ".")))
    for i, call in enumerate(check.get(m, "tool_calls", list, path + ".") or ()):
        cpath = f"{path}.tool_calls[{i}]"
        c = check.as_dict(call, cpath)
        fn = check.as_dict(c.get("function"), cpath + ".function")
        parts.append(
            ToolCall(
                id=check.need(c, "id", str, cpath + "."),
                name=check.need(fn, "name", str, cpath + ".function."),
                arguments=check.get(fn, "arguments", str, cpath + ".function.") or "",
            )
        )
    return Message(role="assistant", content=parts, name=check.get(m, "name", str, path + "."))


def _decode_tool(raw: Any, path: str) -> Tool:
    t = check.as_dict(raw, path)
    if t.get("type", "function") != "function":
        check.fail(path + ".type", f"tool type {t.get('type')!r} is not supported on this route")
    fn = check.as_dict(t.get("function"), path + ".function")
    return Tool(
        name=check.need(fn, "name", str, path + ".function."),
        description=check.get(fn, "description", str, path + ".function."),
        parameters=check.get(fn, "parameters", dict, path + ".function."),
        strict=check.get(fn, "strict", bool, path + ".function."),
    )


def _decode_tool_choice(raw: Any) -> ToolChoice:
    if raw in ("auto", "none", "required"):
        return raw  # type: ignore[no-any-return]
    if isinstance(raw, dict) and raw.get("type") == "function" and isinstance(raw.get("function"), dict):
        name = raw["function"].get("name")
        if isinstance(name, str):
            return ToolName(name)
    check.fail("tool_choice", "expected 'auto', 'none', 'required' or {type: 'function', function: {name}}")


def _decode_format(raw: dict[str, Any]) -> ResponseFormat:
    kind = raw.get("type")
    if kind in ("text", "json_object"):
        return ResponseFormat(type=kind)
    if kind == "json_schema":
        spec = check.as_dict(raw.get("json_schema"), "response_format.json_schema")
        return ResponseFormat(
            type="json_schema",
            name=check.need(spec, "name", str, "response_format.json_schema."),
            schema=check.get(spec, "schema", dict, "response_format.json_schema."),
            strict=check.get(spec, "strict", bool, "response_format.json_schema."),
            description=check.get(spec, "description", str, "response_format.json_schema."),
        )
    check.fail("response_format.type", "expected 'text', 'json_object' or 'json_schema'")


def render_usage(u: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": u.input_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.input_tokens + u.output_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_input_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": u.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_id(upstream_id: str) -> str:
    return upstream_id if upstream_id.startswith("chatcmpl") else f"chatcmpl-{upstream_id or _now_id()}"


def _now_id() -> str:
    return format(time.time_ns(), "x")


def render_response(resp: Response) -> dict[str, Any]:
    """A ``chat.completion`` object for a neutral response."""
    text = "".join(p.text for p in resp.content if isinstance(p, Text))
    refusal = "".join(p.text for p in resp.content if isinstance(p, Refusal))
    calls = resp.tool_calls
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if text or not (calls or refusal) else None,
        "refusal": refusal or None,
        "annotations": [],
    }
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in calls
        ]
    reasoning = "\n\n".join(r.summary_text or (r.text or "") for r in resp.reasoning)
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": completion_id(resp.id),
        "object": "chat.completion",
        "created": resp.created or int(time.time()),
        "model": resp.model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH_OUT[resp.stop_reason]}
        ],
        "usage": render_usage(resp.usage),
        "service_tier": openai_tier(resp.service_tier),
    }


class StreamRenderer:
    """Neutral events to Chat Completions SSE bytes."""

    response = None  # no final document in this dialect

    def __init__(self, *, model: str = "", include_usage: bool = False) -> None:
        self._id = completion_id("")
        self._model = model
        self._created = int(time.time())
        self._include_usage = include_usage
        self._tool_index: dict[int, int] = {}
        self._kinds: dict[int, type] = {}
        self._opened = False

    def end(self) -> bytes:
        """Bytes to write when the stream ends (none: closing the connection ends it)."""
        return b""

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self._include_usage:
            chunk["usage"] = None
        return frame(chunk)

    def _open(self) -> bytes:
        if self._opened:
            return b""
        self._opened = True
        return self._chunk({"role": "assistant", "content": ""})

    def feed(self, event: StreamEvent) -> bytes:
        if isinstance(event, Start):
            self._id = completion_id(event.id)
            self._model = event.model or self._model
            self._created = event.created or self._created
            return self._open()
        if isinstance(event, BlockDelta):
            return self._open() + self._delta(event)
        if isinstance(event, BlockStart):
            self._kinds[event.index] = type(event.part)
            if isinstance(event.part, ToolCall):
                i = self._tool_index[event.index] = len(self._tool_index)
                call = {
                    "index": i,
                    "id": event.part.id,
                    "type": "function",
                    "function": {"name": event.part.name, "arguments": ""},
                }
                return self._open() + self._chunk({"tool_calls": [call]})
            return b""
        if isinstance(event, Finish):
            return self._finish(event)
        if isinstance(event, StreamError):
            return self._open() + frame({"error": error_object(event.error)})
        return b""  # BlockStop, UsageUpdate: nothing to say in Chat

    def _delta(self, event: BlockDelta) -> bytes:
        kind = self._kinds.get(event.index)
        if kind is Text:
            return self._chunk({"content": event.text})
        if kind is ToolCall:
            i = self._tool_index[event.index]
            return self._chunk({"tool_calls": [{"index": i, "function": {"arguments": event.text}}]})
        if kind is Refusal:
            return self._chunk({"refusal": event.text})
        if kind is Reasoning:
            return self._chunk({"reasoning_content": event.text})
        return b""

    def _finish(self, event: Finish) -> bytes:
        out = self._open() + self._chunk({}, _FINISH_OUT[event.stop_reason])
        if self._include_usage:
            chunk = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": [],
                "usage": render_usage(event.usage or Usage()),
            }
            out += frame(chunk)
        return out + b"data: [DONE]\n\n"


# ============================================================================================ errors

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}


def error_object(err: Exception) -> dict[str, Any]:
    """The ``error`` object of OpenAI's error envelope."""
    if not isinstance(err, ModelwireError):
        return {"message": "internal error", "type": "server_error", "param": None, "code": None}
    kind = _ERROR_TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")
    return {"message": err.message, "type": kind, "param": err.param, "code": err.code}


_FOREIGN_TIERS = {"standard": "default", "batch": "flex"}


def openai_tier(tier: str | None) -> str | None:
    """A service tier in OpenAI's words (Anthropic answers ``standard``)."""
    return _FOREIGN_TIERS.get(tier or "", tier)


def render_error(err: ModelwireError) -> tuple[int, dict[str, Any]]:
    status = 503 if err.status == 529 else err.status  # OpenAI has no 529 (Anthropic's "overloaded")
    return status, {"error": error_object(err)}


def apply_param(body: dict[str, Any], name: str, value: Any, opts: WireOptions = NATIVE) -> None:
    """A route's URI parameter (see :data:`modelwire.gateway.routing.URI_PARAMS`) written into a
    client's own Chat body, in this dialect's field names."""
    if name in ("temperature", "top_p", "reasoning_effort", "verbosity"):
        body[name] = value
    elif name == "max_output_tokens":
        body.pop("max_tokens", None)
        body.pop("max_completion_tokens", None)
        body[opts.max_tokens_field] = value


def fit_forwarded(body: dict[str, Any], opts: WireOptions, stream: bool) -> None:
    """A client's own Chat body made fit for the host it is forwarded to: in a stream, the usage
    chunk asked for on the client's behalf (the gateway counts tokens; its tap hides the chunk again
    from a client that did not ask), and the output limit in the field the host knows."""
    if stream and not include_usage(body):
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    if opts.max_tokens_field != "max_completion_tokens" and "max_completion_tokens" in body:
        body[opts.max_tokens_field] = body.pop("max_completion_tokens")
