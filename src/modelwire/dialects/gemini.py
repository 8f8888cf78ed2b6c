"""Gemini ``generateContent``, both ways.

Surface (a Gemini client speaks to us): :func:`decode_request`, :func:`render_response`,
:class:`StreamRenderer` (``?alt=sse``), :class:`ArrayStreamRenderer` (the JSON-array stream),
:func:`render_error`. Driver (we speak to a Gemini upstream): :func:`encode_request`,
:func:`decode_response`, :class:`StreamDecoder`.

The model is not in a Gemini body but in the URL (``/v1beta/models/{model}:generateContent``), so
:func:`decode_request` takes it as an argument and :func:`encode_request` leaves it out.

Gemini has no reasoning item: replay data is a ``thoughtSignature`` riding on a content part. Every
signature decodes to a reasoning part placed before the part it rode on (a function call's
included, so that clients of every dialect carry it and Gemini gets it back on the same call), and
reasoning another dialect minted travels in a :mod:`.replay` envelope, itself base64-encoded
because the field is ``bytes`` and google-genai rejects anything that is not base64.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import logging
import mimetypes
from typing import Any, Protocol

import orjson

from ..errors import InvalidRequestError, ModelwireError, ProtocolError, from_response
from ..types import (
    Audio,
    BlockDelta,
    BlockStart,
    BlockStop,
    Dialect,
    EmbeddingRequest,
    Embeddings,
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
    Role,
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
    UsageUpdate,
)
from . import check as check
from . import replay
from .ids import random_hex
from .stream import EventBuilder

DIALECT: Dialect = "gemini"
log = logging.getLogger("modelwire.dialects.gemini")

KEEPALIVE = b"\r\n"
"""A keep-alive for Gemini streams. google-genai reads any line that does not start with ``data: ``
as raw JSON, so the SSE comment other dialects use (``: keep-alive``) makes it raise; a blank line
is skipped by every SSE reader."""

_FINISH_IN: dict[str, StopReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(
        "SAFETY RECITATION BLOCKLIST PROHIBITED_CONTENT SPII IMAGE_SAFETY IMAGE_PROHIBITED_CONTENT "
        "IMAGE_RECITATION".split(),
        "content_filter",
    ),
}
_FINISH_OUT: dict[StopReason, str] = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "refusal": "SAFETY",
    "pause": "OTHER",
    "error": "OTHER",
}

# Reasoning effort as a thinking budget, and back: a decoded budget maps to the effort whose
# encoded budget it is nearest, so each effort survives the round trip.
_BUDGETS = {"none": 0, "low": 2048, "medium": 8192, "high": 24576}
_LEVEL_ONLY = {"minimal": "MINIMAL", "xhigh": "XHIGH"}  # efforts only Gemini 3's thinkingLevel has

_DATA_FIELDS = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
_SERVER_TOOL_FIELDS = ("executableCode", "codeExecutionResult", "toolCall", "toolResponse")
_UNWRAPPED_RESULT_KEYS = ("result", "output")  # {"result": "text"}: a plain-text tool result

_TOP_KNOWN = frozenset(("contents", "systemInstruction", "tools", "toolConfig", "generationConfig", "model"))
_GENERATION_KNOWN = frozenset(
    "maxOutputTokens temperature topP seed stopSequences candidateCount responseMimeType "
    "responseJsonSchema responseSchema thinkingConfig".split()
)
_FORMAT_FIELDS = frozenset(("responseMimeType", "responseJsonSchema", "responseSchema"))

# OpenAPI-subset Schema keywords spelled differently from JSON Schema (or in snake_case).
_SCHEMA_KEYWORDS = {
    "any_of": "anyOf",
    "max_items": "maxItems",
    "min_items": "minItems",
    "max_length": "maxLength",
    "min_length": "minLength",
    "max_properties": "maxProperties",
    "min_properties": "minProperties",
    "property_ordering": "propertyOrdering",
}
_SCHEMA_DROPPED = frozenset(("propertyOrdering", "nullable"))

_ENVELOPE_B64 = base64.b64encode(replay.PREFIX.encode()).decode()[:5]  # what every wrapped one starts with
_URLSAFE = str.maketrans("-_", "+/")


# ========================================================================================= helpers


@functools.cache
def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


@functools.cache
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _key(obj: dict[str, Any], name: str) -> str:
    """The spelling ``obj`` uses for field ``name``: lowerCamelCase as documented, or the snake_case
    proto3 JSON parsers also take (google-genai itself sends ``mime_type``, ``thinking_budget``)."""
    if name in obj:
        return name
    snake = _snake(name)
    return snake if snake in obj else name


def _get(obj: dict[str, Any], name: str, kind: type[Any], path: str) -> Any:
    """``check.get`` under either spelling; most fields are absent, and most present ones of the
    right type, so those cases are settled here without a further call."""
    value = obj.get(name)
    if value is None:
        snake = _snake(name)
        value = obj.get(snake)
        if value is None:
            return None
        name = snake
    if type(value) is kind:
        return value
    return check.get(obj, name, kind, path)  # an int for a float, or the error naming the field


def _need(obj: dict[str, Any], name: str, kind: type[Any], path: str) -> Any:
    return check.need(obj, _key(obj, name), kind, path)


def _bytes(data: str, path: str) -> bytes:
    """proto3 JSON ``bytes``: standard or URL-safe base64, padded or not."""
    std = data.translate(_URLSAFE).rstrip("=")
    return check.b64decode(std + "=" * (-len(std) % 4), path)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _synthesized_id(n: int, name: str, arguments: str) -> str:
    """A stable id for Gemini's id-less call number ``n``: the same transcript gives the same ids."""
    digest = hashlib.blake2s(f"{name}\0{arguments}".encode(), digest_size=6).hexdigest()
    return f"call_{n}_{digest}"


def _new_response_id() -> str:
    return random_hex()


def _args_object(arguments: str) -> dict[str, Any]:
    """Gemini takes arguments as an object; text that is not one (a call cut off mid-JSON) becomes {}."""
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return value
    log.debug("tool call arguments are not a JSON object; sending {} to Gemini")
    return {}


# ------------------------------------------------------------------------------ thought signatures


def _signature_for_client(reasoning: Reasoning) -> str | None:
    """The thoughtSignature carrying ``reasoning``'s replay data to a Gemini client."""
    token = replay.token_for(reasoning, DIALECT)
    if token is None or reasoning.dialect in (None, DIALECT):
        return token
    return _b64(token.encode())


def _signature_for_gemini(reasoning: Reasoning) -> str | None:
    """Only Gemini's own signatures go back to Gemini; another dialect's reasoning is dropped."""
    return reasoning.data if reasoning.dialect in (None, DIALECT) else None


def _envelope(signature: str) -> str | None:
    """The :mod:`.replay` envelope inside ``signature``, or None for a signature Gemini minted."""
    if signature.startswith(replay.PREFIX):
        return signature
    if not signature.startswith(_ENVELOPE_B64):
        return None
    try:
        decoded = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return None
    return decoded.decode("utf-8", "replace") if decoded.startswith(replay.PREFIX.encode()) else None


def _reasoning_from_signature(signature: str) -> Reasoning:
    token = _envelope(signature)
    if token is None:
        return Reasoning(data=signature, dialect=DIALECT)
    data, dialect, inner_id, redacted = replay.unwrap(token, DIALECT)
    return Reasoning(data=data, dialect=dialect, id=inner_id, redacted=redacted)


# ----------------------------------------------------------------------------------- media parts


def _media(mime: str | None, *, data: bytes | None = None, url: str | None = None) -> Image | Audio | File:
    if mime is None:
        return File(data=data, url=url)
    if mime.startswith("image/"):
        return Image(data=data, url=url, media_type=mime)
    if mime.startswith("audio/") and data is not None:
        return Audio(data=data, format=_audio_format(mime))
    return File(data=data, url=url, media_type=mime)


def _audio_format(mime: str) -> str:
    subtype = mime.partition("/")[2].partition(";")[0]
    return {"mpeg": "mp3", "x-wav": "wav", "wave": "wav"}.get(subtype, subtype)


def _decode_inline(blob: dict[str, Any], path: str) -> Image | Audio | File:
    mime = _need(blob, "mimeType", str, path + ".")
    return _media(mime, data=_bytes(_need(blob, "data", str, path + "."), path + ".data"))


def _decode_file_data(spec: dict[str, Any], path: str) -> Image | Audio | File:
    uri: str = _need(spec, "fileUri", str, path + ".")
    return _media(_get(spec, "mimeType", str, path + ".") or mimetypes.guess_type(uri)[0], url=uri)


def _encode_media(part: Image | Audio | File) -> dict[str, Any]:
    if isinstance(part, Audio):
        return {"inlineData": {"mimeType": f"audio/{part.format}", "data": _b64(part.data)}}
    fallback = "image/png" if isinstance(part, Image) else "application/pdf"
    if part.data is not None:
        return {"inlineData": {"mimeType": part.media_type or fallback, "data": _b64(part.data)}}
    if part.url:
        inline = check.parse_data_url(part.url, "url")
        if inline is not None:
            return {"inlineData": {"mimeType": inline[0], "data": _b64(inline[1])}}
        mime = part.media_type or mimetypes.guess_type(part.url)[0] or fallback
        return {"fileData": {"mimeType": mime, "fileUri": part.url}}
    raise InvalidRequestError(
        f"Gemini cannot take a file by id ({part.file_id}); send its bytes or a URL", param="file_id"
    )


# =========================================================================================== driver


def encode_request(req: Request) -> dict[str, Any]:
    """The ``generateContent`` body for ``req`` (the model goes in the URL, not here)."""
    body: dict[str, Any] = {"contents": _encode_contents(req.messages)}
    system = _system_parts(req.messages)
    if system:
        body["systemInstruction"] = {"parts": system}
    passthrough = req.extra if req.dialect in (None, DIALECT) else {}
    tools: list[dict[str, Any]] = []
    if req.tools:
        tools.append({"functionDeclarations": [_encode_tool(t) for t in req.tools]})
    tools += passthrough.get("tools") or ()
    if tools:
        body["tools"] = tools
    tool_config = dict(passthrough.get("toolConfig") or {})
    if req.tool_choice is not None:
        tool_config["functionCallingConfig"] = _encode_tool_choice(req.tool_choice)
    if tool_config:
        body["toolConfig"] = tool_config
    generation = {**(passthrough.get("generationConfig") or {}), **_encode_generation(req)}
    if generation:
        body["generationConfig"] = generation
    body.update(
        {k: v for k, v in passthrough.items() if k not in ("tools", "toolConfig", "generationConfig")}
    )
    return body


def _system_parts(messages: list[Message]) -> list[dict[str, Any]]:
    """Every system and developer message's text: Gemini has one instruction, outside the turns."""
    return [
        {"text": part.text}
        for msg in messages
        if msg.role in ("system", "developer")
        for part in msg.content
        if isinstance(part, Text)
    ]


def _encode_contents(messages: list[Message]) -> list[dict[str, Any]]:
    """Contents in order; consecutive turns of one role share a content, because Gemini wants all
    the answers to one model turn's calls in the single user content that follows it."""
    contents: list[dict[str, Any]] = []
    names = {c.id: c.name for m in messages if m.role == "assistant" for c in m.tool_calls}
    for msg in messages:
        if msg.role in ("system", "developer"):
            continue
        if msg.role == "assistant":
            role, parts = "model", _model_parts(msg.content, surface=False, thoughts=False)
        else:
            role, parts = "user", [_encode_user_part(p, names) for p in msg.content]
        parts = [p for p in parts if p]
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def _encode_user_part(part: Part, names: dict[str, str]) -> dict[str, Any]:
    """One part of a user (or tool) turn; ``{}`` for a part Gemini has no place for."""
    if isinstance(part, Text | Refusal):
        return {"text": part.text}
    if isinstance(part, ToolResult):
        return _encode_result(part, names)
    if isinstance(part, Image | Audio | File):
        return _encode_media(part)
    if isinstance(part, ProviderItem) and part.dialect == DIALECT:
        return dict(part.data)
    return {}


def _encode_result(result: ToolResult, names: dict[str, str]) -> dict[str, Any]:
    name = result.name or names.get(result.call_id)
    if name is None:
        raise InvalidRequestError(
            f"the tool result for {result.call_id!r} answers no earlier tool call, and Gemini needs "
            "the function's name",
            param="tool_call_id",
        )
    response: dict[str, Any] = {"id": result.call_id, "name": name, "response": _response_object(result)}
    media = [_encode_media(p) for p in result.content if isinstance(p, Image | File)]
    if media:
        response["parts"] = media
    return {"functionResponse": response}


def _response_object(result: ToolResult) -> dict[str, Any]:
    """``functionResponse.response`` must be an object: a JSON object result as itself, any other
    text as ``{"result": text}``, an error as ``{"error": text}``."""
    text = result.text
    if result.is_error:
        return {"error": text}
    if text.startswith("{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict) and _result_text(value) is None:
            return value
    return {"result": text}


def _result_text(response: dict[str, Any]) -> tuple[str, bool] | None:
    """``(text, is_error)`` when ``response`` is a wrapped text result rather than data."""
    if len(response) != 1:
        return None
    ((key, value),) = response.items()
    if key == "error":
        return (value if isinstance(value, str) else orjson.dumps(value).decode()), True
    if key in _UNWRAPPED_RESULT_KEYS and isinstance(value, str):
        return value, False
    return None


def _encode_tool(tool: Tool) -> dict[str, Any]:
    decl: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        decl["description"] = tool.description
    if tool.parameters is not None:
        decl["parametersJsonSchema"] = tool.parameters  # full JSON Schema, unlike `parameters`
    return decl


def _encode_tool_choice(choice: ToolChoice) -> dict[str, Any]:
    if isinstance(choice, ToolName):
        return {"mode": "ANY", "allowedFunctionNames": [choice.name]}
    return {"mode": {"auto": "AUTO", "none": "NONE", "required": "ANY"}[choice]}


def _encode_generation(req: Request) -> dict[str, Any]:
    gen: dict[str, Any] = {}
    for name, value in (
        ("maxOutputTokens", req.max_output_tokens),
        ("temperature", req.temperature),
        ("topP", req.top_p),
        ("seed", req.seed),
        ("stopSequences", req.stop or None),
    ):
        if value is not None:
            gen[name] = value
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        gen["responseMimeType"] = "application/json"
        if fmt.type == "json_schema" and fmt.schema is not None:
            gen["responseJsonSchema"] = fmt.schema
    thinking = _encode_thinking(req)
    if thinking:
        gen["thinkingConfig"] = thinking
    return gen


def _encode_thinking(req: Request) -> dict[str, Any]:
    thinking: dict[str, Any] = {}
    effort = req.reasoning_effort
    if effort in _BUDGETS:
        thinking["thinkingBudget"] = _BUDGETS[effort]
    elif effort in _LEVEL_ONLY:
        thinking["thinkingLevel"] = _LEVEL_ONLY[effort]
    if req.reasoning_summary is not None:
        thinking["includeThoughts"] = True
    return thinking


def decode_usage(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()

    def count(name: str) -> int:
        value = raw.get(name)
        return value if type(value) is int else 0

    thoughts = count("thoughtsTokenCount")
    return Usage(
        # Tool-use prompt tokens (server-side tool results) are input the model read.
        input_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
        cached_input_tokens=count("cachedContentTokenCount"),
        output_tokens=count("candidatesTokenCount") + thoughts,
        reasoning_tokens=thoughts,
    )


def _stop_reason(finish: Any, has_calls: bool) -> StopReason:
    stop = _FINISH_IN.get(finish, "error") if isinstance(finish, str) and finish else "stop"
    return "tool_calls" if stop == "stop" and has_calls else stop


def decode_response(body: dict[str, Any]) -> Response:
    """A neutral response from a ``GenerateContentResponse``."""
    if not isinstance(body, dict):
        raise ProtocolError("upstream Gemini response is not a JSON object")
    if isinstance(body.get("error"), dict):
        raise _upstream_error(body)
    resp = Response(id=body.get("responseId") or "", model=body.get("modelVersion") or "")
    resp.usage = decode_usage(body.get("usageMetadata"))
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
        if not _prompt_blocked(body):
            raise ProtocolError("upstream Gemini response has no candidates")
        resp.stop_reason = "content_filter"  # the prompt itself was blocked
        return resp
    candidate = candidates[0]
    sink = _PartList(first_call=0)
    try:
        for i, raw in enumerate(_candidate_parts(candidate)):
            path = f"candidates[0].content.parts[{i}]"
            _read_model_part(check.as_dict(raw, path), path, sink)
    except InvalidRequestError as exc:
        raise ProtocolError(f"upstream Gemini response is malformed: {exc.message}") from exc
    resp.content = sink.parts
    resp.stop_reason = _stop_reason(candidate.get("finishReason"), sink.calls > 0)
    return resp


def _prompt_blocked(doc: dict[str, Any]) -> bool:
    feedback = doc.get("promptFeedback")
    return isinstance(feedback, dict) and bool(feedback.get("blockReason"))


def _candidate_parts(candidate: dict[str, Any]) -> list[Any]:
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return parts if isinstance(parts, list) else []


def _upstream_error(doc: dict[str, Any]) -> ModelwireError:
    error = doc.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    status = code if type(code) is int and 400 <= code < 600 else 500
    return from_response(status, orjson.dumps(doc))


class StreamDecoder:
    """Maps ``streamGenerateContent?alt=sse`` payloads onto neutral events.

    Each payload is a whole ``GenerateContentResponse`` holding only new parts: text and thought
    deltas as parts, each function call whole. The stream has no terminator; :meth:`end` is called
    when the connection closes.
    """

    def __init__(self) -> None:
        self._b = EventBuilder()
        self._sink = _PartEvents(self._b)
        self._started = False
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._ended = False

    def feed(self, data: str) -> list[StreamEvent]:
        if self._ended:
            return []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return self._fail(ProtocolError(f"upstream sent a chunk that is not JSON: {data[:80]!r}"))
        if not isinstance(chunk, dict):
            return self._fail(ProtocolError("upstream sent a chunk that is not a JSON object"))
        if "error" in chunk:
            return self._fail(_upstream_error(chunk))
        if not self._started:
            self._started = True
            self._b.start(chunk.get("responseId") or "", chunk.get("modelVersion") or "")
        try:
            self._chunk(chunk)
        except InvalidRequestError as exc:
            return self._fail(ProtocolError(f"upstream Gemini chunk is malformed: {exc.message}"))
        return self._b.take()

    def _chunk(self, chunk: dict[str, Any]) -> None:
        if chunk.get("usageMetadata"):
            self._usage = decode_usage(chunk["usageMetadata"])
        if _prompt_blocked(chunk):
            self._finish = "SAFETY"
        candidates = chunk.get("candidates")
        if not isinstance(candidates, list) or not candidates or not isinstance(candidates[0], dict):
            return
        candidate = candidates[0]
        for i, raw in enumerate(_candidate_parts(candidate)):
            path = f"candidates[0].content.parts[{i}]"
            _read_model_part(check.as_dict(raw, path), path, self._sink)
        if candidate.get("finishReason"):
            self._finish = candidate["finishReason"]

    def _fail(self, error: ModelwireError) -> list[StreamEvent]:
        self._ended = True
        self._b.error(error)
        return self._b.take()

    def end(self) -> list[StreamEvent]:
        """The connection closed: the answer is complete if a finish reason came."""
        if self._ended:
            return []
        self._ended = True
        if self._finish is None:
            self._b.error(ProtocolError("upstream stream ended before the answer finished"))
            return self._b.take()
        if self._usage is not None:
            self._b.usage(self._usage)
        self._b.finish(_stop_reason(self._finish, self._sink.calls > 0), self._usage)
        return self._b.take()


# ------------------------------------------------------------------- reading a model turn's parts


class _Sink(Protocol):
    """Where :func:`_read_model_part` puts what it reads: a list of parts, or stream events."""

    calls: int

    def thought(self, text: str) -> None: ...
    def sign(self, reasoning: Reasoning) -> None: ...
    def text(self, text: str) -> None: ...
    def call(self, reasoning: Reasoning | None, call: ToolCall) -> None: ...
    def whole(self, part: Part) -> None: ...


def _read_model_part(p: dict[str, Any], path: str, sink: _Sink) -> None:
    """One part of a model turn. A thought becomes reasoning; a signature is reasoning placed before
    its part (and is the signature of a thought just before it)."""
    signature = _get(p, "thoughtSignature", str, path + ".")
    text = _get(p, "text", str, path + ".")
    if text is not None and _get(p, "thought", bool, path + "."):
        sink.thought(text)
        if signature:
            sink.sign(_reasoning_from_signature(signature))
        return
    call = _get(p, "functionCall", dict, path + ".")
    if call is not None:
        sink.call(*_decode_call(call, signature, f"{path}.{_key(p, 'functionCall')}", sink.calls))
        return
    if signature:
        sink.sign(_reasoning_from_signature(signature))
    if text is not None:
        sink.text(text)
    elif _get(p, "functionResponse", dict, path + ".") is not None:
        check.fail(path + ".functionResponse", "belongs in a user turn, not a model turn")
    elif signature is None or _has_data(p):
        sink.whole(_decode_data_part(p, path))


def _decode_call(
    spec: dict[str, Any], signature: str | None, path: str, n: int
) -> tuple[Reasoning | None, ToolCall]:
    name: str = check.need(spec, "name", str, path + ".")
    arguments = orjson.dumps(check.get(spec, "args", dict, path + ".") or {}).decode()
    call_id = _get(spec, "id", str, path + ".") or _synthesized_id(n, name, arguments)
    call = ToolCall(id=call_id, name=name, arguments=arguments)
    if not signature:
        return None, call
    # The signature stands for the reasoning before the call (Gemini's own, or another dialect's we
    # carried): as a Reasoning part every dialect can carry it, and Gemini gets it back on this call.
    return _reasoning_from_signature(signature), call


def _has_data(p: dict[str, Any]) -> bool:
    return any(_key(p, f) in p for f in (*_DATA_FIELDS, *_SERVER_TOOL_FIELDS))


def _decode_data_part(p: dict[str, Any], path: str) -> Part:
    """A part that is neither text nor a function call or response: media, or a server-side tool's
    code and results (kept verbatim for a Gemini upstream)."""
    inline = _get(p, "inlineData", dict, path + ".")
    if inline is not None:
        return _decode_inline(inline, f"{path}.{_key(p, 'inlineData')}")
    file_data = _get(p, "fileData", dict, path + ".")
    if file_data is not None:
        return _decode_file_data(file_data, f"{path}.{_key(p, 'fileData')}")
    if any(_key(p, f) in p for f in _SERVER_TOOL_FIELDS):
        return ProviderItem(
            dialect=DIALECT, data={k: v for k, v in p.items() if _camel(k) != "thoughtSignature"}
        )
    check.fail(
        path,
        "expected a part with one of text, inlineData, fileData, functionCall, functionResponse; "
        f"got {', '.join(map(repr, p)) or 'an empty object'}",
    )


class _PartList:
    """Model parts as a list, merged exactly as :class:`_PartEvents` merges them in a stream."""

    def __init__(self, first_call: int) -> None:
        self.parts: list[Part] = []
        self.calls = first_call

    def _open_thought(self) -> Reasoning | None:
        last = self.parts[-1] if self.parts else None
        if isinstance(last, Reasoning) and last.dialect == DIALECT and last.data is None:
            return last
        return None

    def thought(self, text: str) -> None:
        open_thought = self._open_thought()
        if open_thought is None:
            self.parts.append(Reasoning(summary=[text] if text else [], dialect=DIALECT))
        elif text:
            open_thought.summary[:] = ["".join(open_thought.summary) + text]

    def sign(self, reasoning: Reasoning) -> None:
        open_thought = self._open_thought()
        if open_thought is None:
            self.parts.append(reasoning)
            return
        reasoning.summary = reasoning.summary or open_thought.summary
        self.parts[-1] = reasoning

    def text(self, text: str) -> None:
        last = self.parts[-1] if self.parts else None
        if isinstance(last, Text):
            last.text += text
        elif text:
            self.parts.append(Text(text=text))

    def call(self, reasoning: Reasoning | None, call: ToolCall) -> None:
        if reasoning is not None:
            self.sign(reasoning)
        self.parts.append(call)
        self.calls += 1

    def whole(self, part: Part) -> None:
        self.parts.append(part)


_THOUGHT = "thought"
_TEXT = "text"


class _PartEvents:
    """Model parts as stream events: a thought stays open for more thought deltas until a
    signature closes it or another part begins."""

    def __init__(self, builder: EventBuilder) -> None:
        self._b = builder
        self.calls = 0
        self._wholes = 0

    def thought(self, text: str) -> None:
        if not self._b.is_open(_THOUGHT):
            self._b.open(_THOUGHT, Reasoning(dialect=DIALECT))
        if text:
            self._b.reasoning(_THOUGHT, text, 0)

    def sign(self, reasoning: Reasoning) -> None:
        if self._b.is_open(_THOUGHT):
            self._b.close(_THOUGHT, reasoning)  # the builder backfills the thought's summary
        else:
            self.whole(reasoning)

    def text(self, text: str) -> None:
        self._b.text(_TEXT, text)

    def call(self, reasoning: Reasoning | None, call: ToolCall) -> None:
        if reasoning is not None:
            self.sign(reasoning)
        key = ("call", self.calls)
        self.calls += 1
        self._b.tool_call(key, call.id, call.name)
        self._b.arguments(key, call.arguments)
        self._b.close(key, call)

    def whole(self, part: Part) -> None:
        self._wholes += 1
        self._b.close(("whole", self._wholes), part)


# ========================================================================================== surface


def decode_request(body: dict[str, Any], model: str, *, stream: bool = False) -> Request:
    """A neutral request from a client's ``generateContent`` body; ``model`` comes from the URL."""
    check.as_dict(body, "request body")
    req = Request(model=model.removeprefix("models/"), dialect=DIALECT, stream=stream)
    system = _get(body, "systemInstruction", dict, "")
    if system is not None:
        parts = [_decode_user_part(p, path) for p, path in _parts_of(system, _key(body, "systemInstruction"))]
        if parts:
            req.messages.append(Message(role="system", content=parts))
    contents = _need(body, "contents", list, "")
    if not contents:
        check.fail("contents", "must contain at least one content")
    req.messages += _decode_contents(contents)
    req.extra = {k: v for k, v in body.items() if _camel(k) not in _TOP_KNOWN}
    # Each section only when sent (most requests carry a generationConfig and little else).
    if tools := _get(body, "tools", list, ""):
        req.tools, builtin_tools = _decode_tools(tools)
        _keep(req.extra, "tools", builtin_tools)
    if tool_config := _get(body, "toolConfig", dict, ""):
        req.tool_choice = _decode_tool_choice(tool_config)
        rest = {k: v for k, v in tool_config.items() if _camel(k) != "functionCallingConfig"}
        _keep(req.extra, "toolConfig", rest)
    if generation := _get(body, "generationConfig", dict, ""):
        _decode_generation(req, generation)
        known = _GENERATION_KNOWN if req.response_format is not None else _GENERATION_KNOWN - _FORMAT_FIELDS
        _keep(req.extra, "generationConfig", {k: v for k, v in generation.items() if _camel(k) not in known})
    return req


def _keep(extra: dict[str, Any], key: str, value: Any) -> None:
    if value:
        extra[key] = value


def _parts_of(content: dict[str, Any], path: str) -> list[tuple[dict[str, Any], str]]:
    raw = content.get(_key(content, "parts"))
    # Some hand-written clients send a lone part as an object rather than a list: take it.
    parts = [raw] if isinstance(raw, dict) else _need(content, "parts", list, path + ".")
    return [(check.as_dict(p, f"{path}.parts[{i}]"), f"{path}.parts[{i}]") for i, p in enumerate(parts)]


class _CallLedger:
    """Call numbering across a transcript, and the last model turn's calls still awaiting an answer
    (an id-less ``functionResponse`` answers the first waiting call of its name)."""

    def __init__(self) -> None:
        self.count = 0
        self.waiting: list[ToolCall] = []

    def answer(self, name: str, call_id: str | None) -> str:
        for i, call in enumerate(self.waiting):
            if (call.id == call_id) if call_id else (call.name == name):
                del self.waiting[i]
                return call.id
        if call_id:
            return call_id
        self.count += 1
        return _synthesized_id(self.count - 1, name, "")


def _decode_contents(contents: list[Any]) -> list[Message]:
    messages: list[Message] = []
    ledger = _CallLedger()
    turn: _PartList | None = None
    for i, raw in enumerate(contents):
        path = f"contents[{i}]"
        content = check.as_dict(raw, path)
        role = _get(content, "role", str, path + ".") or "user"
        if role == "model":
            if turn is None:  # consecutive model contents are one turn (google-genai keeps a
                turn = _PartList(first_call=ledger.count)  # streamed answer as one per chunk)
                messages.append(Message(role="assistant", content=turn.parts))
            _decode_model_turn(content, path, ledger, turn)
            continue
        turn = None
        if role in ("user", "function"):  # "function" is the old role for function responses
            messages += _decode_user_turn(content, path, ledger)
        else:
            check.fail(path + ".role", f"expected 'user' or 'model', got {role!r}")
    return messages


def _decode_model_turn(content: dict[str, Any], path: str, ledger: _CallLedger, sink: _PartList) -> None:
    for part, part_path in _parts_of(content, path):
        _read_model_part(part, part_path, sink)
    ledger.count = sink.calls
    ledger.waiting = [p for p in sink.parts if isinstance(p, ToolCall)]


def _decode_user_turn(content: dict[str, Any], path: str, ledger: _CallLedger) -> list[Message]:
    """A user content: function responses become tool messages, anything else user messages, in
    order."""
    messages: list[Message] = []
    for p, part_path in _parts_of(content, path):
        response = _get(p, "functionResponse", dict, part_path + ".")
        if response is not None:
            result = _decode_result(response, f"{part_path}.{_key(p, 'functionResponse')}", ledger)
            _append_part(messages, "tool", result)
        else:
            _append_part(messages, "user", _decode_user_part(p, part_path))
    return messages


def _append_part(messages: list[Message], role: Role, part: Part) -> None:
    if messages and messages[-1].role == role:
        messages[-1].content.append(part)
    else:
        messages.append(Message(role=role, content=[part]))


def _decode_user_part(p: dict[str, Any], path: str) -> Part:
    text = _get(p, "text", str, path + ".")
    if text is not None:
        return Text(text=text)
    if _get(p, "functionCall", dict, path + ".") is not None:
        check.fail(path + ".functionCall", "belongs in a model turn, not a user turn")
    return _decode_data_part(p, path)


def _decode_result(spec: dict[str, Any], path: str, ledger: _CallLedger) -> ToolResult:
    name: str = check.need(spec, "name", str, path + ".")
    response: dict[str, Any] = check.need(spec, "response", dict, path + ".")
    call_id = ledger.answer(name, _get(spec, "id", str, path + "."))
    text, is_error = _result_text(response) or (orjson.dumps(response).decode(), False)
    content: list[Text | Image | File] = [Text(text=text)]
    for i, raw in enumerate(_get(spec, "parts", list, path + ".") or ()):
        media = _decode_data_part(check.as_dict(raw, f"{path}.parts[{i}]"), f"{path}.parts[{i}]")
        if isinstance(media, Image | File):
            content.append(media)
    return ToolResult(call_id=call_id, content=content, is_error=is_error, name=name)


def _decode_tools(raw: list[Any]) -> tuple[list[Tool], list[dict[str, Any]]]:
    """Function declarations, and the built-in tools (``googleSearch``, ``codeExecution``, …) that
    only a Gemini upstream can use."""
    tools: list[Tool] = []
    builtin: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        path = f"tools[{i}]"
        spec = check.as_dict(item, path)
        declarations = _get(spec, "functionDeclarations", list, path + ".") or ()
        key = _key(spec, "functionDeclarations")
        tools += [_decode_declaration(d, f"{path}.{key}[{j}]") for j, d in enumerate(declarations)]
        rest = {k: v for k, v in spec.items() if k != key}
        if rest:
            builtin.append(rest)
    return tools, builtin


def _decode_declaration(raw: Any, path: str) -> Tool:
    decl = check.as_dict(raw, path)
    parameters = lower_types(_get(decl, "parametersJsonSchema", dict, path + "."))
    if parameters is None:
        schema = _get(decl, "parameters", dict, path + ".")
        parameters = None if schema is None else json_schema(schema)
    return Tool(
        name=check.need(decl, "name", str, path + "."),
        description=check.get(decl, "description", str, path + "."),
        parameters=parameters,
    )


def lower_types(schema: Any) -> Any:
    """A JSON Schema with Google-style upper-case type names (``"OBJECT"``) made standard.

    Gemini accepts ``"type": "OBJECT"`` even in ``responseJsonSchema`` and ``parametersJsonSchema``,
    and Gemini CLI sends it; OpenAI refuses it.
    """
    if isinstance(schema, list):
        return [lower_types(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: lower_types(value) for key, value in schema.items()}
    kind = schema.get("type")
    if isinstance(kind, str):
        out["type"] = kind.lower()
    elif isinstance(kind, list):
        out["type"] = [k.lower() if isinstance(k, str) else k for k in kind]
    return out


def json_schema(schema: Any) -> Any:
    """Google's OpenAPI-subset ``Schema`` (``type: "OBJECT"``, ``nullable``) as JSON Schema."""
    if isinstance(schema, list):
        return [json_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for raw_key, value in schema.items():
        key: str = _SCHEMA_KEYWORDS.get(raw_key) or raw_key
        if key in _SCHEMA_DROPPED or (key == "type" and value == "TYPE_UNSPECIFIED"):
            continue
        if key == "type" and isinstance(value, str):
            value = value.lower()
        elif key == "properties" and isinstance(value, dict):
            value = {name: json_schema(s) for name, s in value.items()}
        elif key in ("items", "anyOf"):
            value = json_schema(value)
        elif key == "example":
            key, value = "examples", [value]
        out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _decode_tool_choice(tool_config: dict[str, Any]) -> ToolChoice | None:
    config = _get(tool_config, "functionCallingConfig", dict, "toolConfig.")
    if not config:
        return None
    path = "toolConfig." + _key(tool_config, "functionCallingConfig") + "."
    mode = (_get(config, "mode", str, path) or "").upper()
    names = _get(config, "allowedFunctionNames", list, path) or []
    if mode in ("AUTO", "VALIDATED"):
        return "auto"
    if mode == "NONE":
        return "none"
    if mode == "ANY":
        return ToolName(names[0]) if len(names) == 1 and isinstance(names[0], str) else "required"
    if mode in ("", "MODE_UNSPECIFIED"):
        return None
    check.fail(path + "mode", f"expected AUTO, ANY, NONE or VALIDATED, got {mode!r}")


def _decode_generation(req: Request, gen: dict[str, Any]) -> None:
    path = "generationConfig."
    if (_get(gen, "candidateCount", int, path) or 1) > 1:
        check.fail(path + _key(gen, "candidateCount"), "only one candidate is supported on this route")
    req.max_output_tokens = _get(gen, "maxOutputTokens", int, path)
    req.temperature = _get(gen, "temperature", float, path)
    req.top_p = _get(gen, "topP", float, path)
    req.seed = _get(gen, "seed", int, path)
    req.stop = check.str_list(gen, _key(gen, "stopSequences"), path)
    req.response_format = _decode_format(gen, path)
    thinking = _get(gen, "thinkingConfig", dict, path)
    if thinking:
        thinking_path = f"{path}{_key(gen, 'thinkingConfig')}."
        req.reasoning_effort = _decode_effort(thinking, thinking_path)
        if _get(thinking, "includeThoughts", bool, thinking_path):
            req.reasoning_summary = "auto"


def _decode_format(gen: dict[str, Any], path: str) -> ResponseFormat | None:
    """JSON mode; other MIME types (``text/x.enum``) have no neutral form and stay in ``extra``."""
    if _get(gen, "responseMimeType", str, path) != "application/json":
        return None
    schema = lower_types(_get(gen, "responseJsonSchema", dict, path))
    if schema is None:
        openapi = _get(gen, "responseSchema", dict, path)
        schema = None if openapi is None else json_schema(openapi)
    if schema is None:
        return ResponseFormat(type="json_object")
    return ResponseFormat(type="json_schema", schema=schema)


def _decode_effort(thinking: dict[str, Any], path: str) -> str | None:
    level = _get(thinking, "thinkingLevel", str, path)
    if level and level.upper() != "THINKING_LEVEL_UNSPECIFIED":
        return str(level.lower())  # MINIMAL…XHIGH are OpenAI's effort names, upper-cased
    budget = _get(thinking, "thinkingBudget", int, path)
    if budget is None:
        return None
    if budget == 0:
        return "none"
    if 0 < budget < 4096:
        return "low"
    if 0 < budget < 16384:
        return "medium"
    return "high"  # a large budget, or -1: as much as the model likes


# ------------------------------------------------------------------------------ writing responses


class _PartWriter:
    """Writes a model turn's parts, moving each reasoning's signature onto the part after it: the
    next text or function-call part, or, when that part has a signature of its own or none
    follows, an empty text part of its own (Gemini streams end that way too)."""

    __slots__ = ("_pending", "parts")

    def __init__(self) -> None:
        self.parts: list[dict[str, Any]] = []
        self._pending: str | None = None

    def add(self, part: dict[str, Any], signature: str | None = None) -> None:
        if signature is not None:
            self.flush()
            part["thoughtSignature"] = signature
        elif self._pending is not None:
            part["thoughtSignature"] = self._pending
            self._pending = None
        self.parts.append(part)

    def thought(self, text: str) -> None:
        self.parts.append({"text": text, "thought": True})

    def sign(self, signature: str | None) -> None:
        self.flush()
        self._pending = signature

    def flush(self) -> None:
        if self._pending is not None:
            self.parts.append({"text": "", "thoughtSignature": self._pending})
            self._pending = None

    def take(self) -> list[dict[str, Any]]:
        parts, self.parts = self.parts, []
        return parts


def _write_part(writer: _PartWriter, part: Part, *, surface: bool, thought: str | None = None) -> None:
    """One finished part. ``surface``: for a Gemini client (foreign reasoning travels wrapped), else
    for a Gemini upstream (only Gemini's own signatures go). ``thought``: reasoning text to show."""
    if isinstance(part, Reasoning):
        writer.flush()
        if thought:
            writer.thought(thought)
        writer.sign(_signature_for_client(part) if surface else _signature_for_gemini(part))
    elif isinstance(part, ToolCall):
        signature = part.signature
        if not surface and signature is not None and _envelope(signature) is not None:
            signature = None  # another dialect's reasoning a client carried on this call
        writer.add(_function_call(part), signature)
    elif isinstance(part, Text | Refusal):
        writer.add({"text": part.text})
    elif isinstance(part, Image | Audio | File):
        writer.add(_encode_media(part))
    elif isinstance(part, ProviderItem) and part.dialect == DIALECT:
        writer.add(dict(part.data))


def _model_parts(parts: list[Part], *, surface: bool, thoughts: bool) -> list[dict[str, Any]]:
    writer = _PartWriter()
    for part in parts:
        thought = (part.summary_text or part.text) if thoughts and isinstance(part, Reasoning) else None
        _write_part(writer, part, surface=surface, thought=thought)
    writer.flush()
    return writer.parts


def _function_call(call: ToolCall) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": call.name, "args": _args_object(call.arguments)}
    if call.id:
        spec = {"id": call.id, **spec}
    return {"functionCall": spec}


def render_usage(u: Usage) -> dict[str, Any]:
    """``usageMetadata``: Gemini counts thoughts apart from the candidates' tokens."""
    candidates = max(0, u.output_tokens - u.reasoning_tokens)
    out: dict[str, Any] = {"promptTokenCount": u.input_tokens, "candidatesTokenCount": candidates}
    if u.cached_input_tokens:
        out["cachedContentTokenCount"] = u.cached_input_tokens
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    out["totalTokenCount"] = u.input_tokens + candidates + u.reasoning_tokens
    return out


def render_response(resp: Response, req: Request) -> dict[str, Any]:
    """A ``GenerateContentResponse`` for a neutral response; thoughts are shown when the request
    asked for them (``includeThoughts``)."""
    parts = _model_parts(resp.content, surface=True, thoughts=req.reasoning_summary is not None)
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": parts},
                "finishReason": _FINISH_OUT[resp.stop_reason],
                "index": 0,
            }
        ],
        "usageMetadata": render_usage(resp.usage),
        "modelVersion": resp.model or req.model,
        "responseId": resp.id or _new_response_id(),
    }


class StreamRenderer:
    """Neutral events to ``streamGenerateContent?alt=sse`` bytes.

    Each chunk is a ``GenerateContentResponse`` with only the new parts: text deltas as text parts,
    thoughts as ``thought`` parts when asked for, each function call whole when its block stops.
    The last chunk has the finish reason and the usage.
    """

    response = None  # no final document in this dialect

    def __init__(self, req: Request, *, response_id: str | None = None) -> None:
        self._id = response_id or ""
        self._model = req.model
        self._thoughts = req.reasoning_summary is not None
        self._writer = _PartWriter()
        self._kinds: dict[int, type] = {}
        self._said: set[int] = set()  # blocks whose content already went out as deltas
        self._summary: dict[int, int] = {}  # reasoning block -> the summary index last shown
        self._usage: Usage | None = None

    def feed(self, event: StreamEvent) -> bytes:
        if isinstance(event, BlockDelta):
            self._delta(event)
        elif isinstance(event, BlockStart):
            self._kinds[event.index] = type(event.part)
            if isinstance(event.part, Reasoning):
                self._writer.flush()  # an earlier signature goes before this reasoning's thoughts
        elif isinstance(event, BlockStop):
            self._stop(event)
        elif isinstance(event, Finish):
            return self._finish(event)
        elif isinstance(event, Start):
            self._id = self._id or event.id
            self._model = event.model or self._model
        elif isinstance(event, UsageUpdate):
            self._usage = event.usage
        elif isinstance(event, StreamError):
            return self._frame({"error": error_object(event.error)}, last=True)
        return self._chunk()

    def end(self) -> bytes:
        """Bytes to write when the stream ends (none for SSE: closing the connection ends it)."""
        return b""

    def _delta(self, event: BlockDelta) -> None:
        kind = self._kinds.get(event.index)
        if kind is Text or kind is Refusal:
            self._said.add(event.index)
            self._writer.add({"text": event.text})
        elif kind is Reasoning and self._thoughts:
            text = self._thought_text(event)
            if text:
                self._said.add(event.index)
                self._writer.thought(text)

    def _thought_text(self, event: BlockDelta) -> str | None:
        """Summary deltas, parts joined as in a whole response; raw reasoning only when there is
        no summary (Gemini's thoughts are summaries)."""
        index, si = event.index, event.summary_index
        if si is None:
            return None if index in self._summary else event.text
        last = self._summary.setdefault(index, si)
        self._summary[index] = si
        return event.text if last == si else "\n\n" + event.text

    def _stop(self, event: BlockStop) -> None:
        part, said = event.part, event.index in self._said
        if isinstance(part, Text | Refusal) and (said or not part.text):
            return
        thought = None
        if isinstance(part, Reasoning) and self._thoughts and not said:
            thought = part.summary_text or part.text
        _write_part(self._writer, part, surface=True, thought=thought)

    def _finish(self, event: Finish) -> bytes:
        self._writer.flush()
        # google-genai drops the whole turn when a chunk has no parts
        doc = self._doc(self._writer.take() or [{"text": ""}])
        doc["candidates"][0]["finishReason"] = _FINISH_OUT[event.stop_reason]
        doc["usageMetadata"] = render_usage(event.usage or self._usage or Usage())
        return self._frame(doc, last=True)

    def _chunk(self) -> bytes:
        parts = self._writer.take()
        return self._frame(self._doc(parts)) if parts else b""

    def _doc(self, parts: list[dict[str, Any]]) -> dict[str, Any]:
        if not self._id:
            self._id = _new_response_id()
        return {
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": self._model,
            "responseId": self._id,
        }

    def _frame(self, doc: dict[str, Any], last: bool = False) -> bytes:
        # Exactly "data: " with the space: google-genai recognises nothing else.
        return b"data: " + orjson.dumps(doc) + b"\r\n\r\n"


class ArrayStreamRenderer(StreamRenderer):
    """The same chunks as one JSON array, for ``streamGenerateContent`` without ``?alt=sse``."""

    def __init__(self, req: Request, *, response_id: str | None = None) -> None:
        super().__init__(req, response_id=response_id)
        self._opened = False
        self._closed = False

    def _frame(self, doc: dict[str, Any], last: bool = False) -> bytes:
        if self._closed:
            return b""
        out = (b",\r\n" if self._opened else b"[") + orjson.dumps(doc)
        self._opened = True
        if last:
            self._closed = True
            out += b"]"
        return out

    def end(self) -> bytes:
        if self._closed:
            return b""
        self._closed = True
        return b"]" if self._opened else b"[]"


# ============================================================================================ errors

_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    408: "DEADLINE_EXCEEDED",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def error_object(err: Exception) -> dict[str, Any]:
    """The ``error`` object of Google's error envelope. The HTTP status is kept (413 included: the
    client's SDK treats every 4xx alike, and the status says what happened); Anthropic's 529 has no
    Google counterpart and becomes 503. A retry delay goes in a ``RetryInfo`` detail, which Gemini
    CLI reads."""
    if not isinstance(err, ModelwireError):
        return {"code": 500, "message": "internal error", "status": "INTERNAL"}
    status = 503 if err.status == 529 else err.status
    name = _STATUS_NAMES.get(status) or ("INTERNAL" if status >= 500 else "INVALID_ARGUMENT")
    out: dict[str, Any] = {"code": status, "message": err.message, "status": name}
    if err.retry_after:
        out["details"] = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{err.retry_after:g}s"}
        ]
    return out


def render_error(err: ModelwireError) -> tuple[int, dict[str, Any]]:
    obj = error_object(err)
    return int(obj["code"]), {"error": obj}


_PARAM_FIELDS = {"temperature": "temperature", "top_p": "topP", "max_output_tokens": "maxOutputTokens"}


def apply_param(body: dict[str, Any], name: str, value: Any, opts: object = None) -> None:
    """A route's URI parameter written into a client's own ``generateContent`` body (under
    ``generationConfig``; ``verbosity`` has no field here)."""
    generation = dict(body.get("generationConfig") or {})
    if name in _PARAM_FIELDS:
        generation[_PARAM_FIELDS[name]] = value
    elif name == "reasoning_effort":
        thinking = {
            k: v for k, v in (generation.get("thinkingConfig") or {}).items() if not k.startswith("thinking")
        }
        if value in _BUDGETS:
            thinking["thinkingBudget"] = _BUDGETS[value]
        elif value in _LEVEL_ONLY:
            thinking["thinkingLevel"] = _LEVEL_ONLY[value]
        generation["thinkingConfig"] = thinking
    else:
        return
    body["generationConfig"] = generation


# ======================================================================================= embeddings


def decode_embed_request(body: dict[str, Any], model: str, *, batch: bool) -> EmbeddingRequest:
    """A client's ``embedContent`` body, or ``batchEmbedContents`` (``{requests: [...]}``, one text
    each). Only text parts embed through a route to another dialect; a content's texts join."""
    check.as_dict(body, "request body")
    if batch:
        raw = _need(body, "requests", list, "")
        if not raw:
            check.fail("requests", "must contain at least one request")
        requests = [(check.as_dict(r, f"requests[{i}]"), f"requests[{i}]") for i, r in enumerate(raw)]
    else:
        requests = [(body, "")]
    inputs = [_embed_text(request, path) for request, path in requests]
    first = requests[0][0]
    prefix = requests[0][1] + "." if batch else ""
    return EmbeddingRequest(
        model=model.removeprefix("models/"),
        inputs=inputs,
        dimensions=_get(first, "outputDimensionality", int, prefix),
        task=_get(first, "taskType", str, prefix),
    )


def _embed_text(request: dict[str, Any], path: str) -> str:
    where = f"{path}.content" if path else "content"
    content = check.as_dict(request.get(_key(request, "content")), where)
    texts = []
    for part, part_path in _parts_of(content, where):
        text = _get(part, "text", str, part_path + ".")
        if text is None:
            check.fail(part_path, "only text parts can be embedded through this route")
        texts.append(text)
    return "\n".join(texts)


def render_embed_response(embeddings: Embeddings, *, batch: bool) -> dict[str, Any]:
    """``{embedding: {values}}``, or ``{embeddings: [...]}`` for a batch."""
    if batch:
        return {"embeddings": [{"values": vector} for vector in embeddings.vectors]}
    return {"embedding": {"values": embeddings.vectors[0] if embeddings.vectors else []}}


def encode_embed_request(req: EmbeddingRequest) -> dict[str, Any]:
    """A ``batchEmbedContents`` body for a Gemini upstream: one request per text."""
    one: dict[str, Any] = {"model": f"models/{req.model}"}
    if req.dimensions is not None:
        one["outputDimensionality"] = req.dimensions
    if req.task is not None:
        one["taskType"] = req.task
    return {"requests": [{**one, "content": {"parts": [{"text": text}]}} for text in req.inputs]}


def decode_embed_response(doc: dict[str, Any]) -> Embeddings:
    """A Gemini upstream's ``batchEmbedContents`` (or ``embedContent``) answer; it counts no tokens."""
    raw = doc.get("embeddings", [doc.get("embedding")] if "embedding" in doc else None)
    if not isinstance(raw, list) or not all(
        isinstance(e, dict) and check.numbers(e.get("values")) for e in raw
    ):
        raise ProtocolError("the upstream's embeddings answer has no embeddings of numbers")
    return Embeddings(vectors=[e["values"] for e in raw])


def fit_embed_request(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A client's own ``batchEmbedContents`` body for the route's model: each request names it."""
    requests = body.get("requests")
    if not isinstance(requests, list):
        return body
    named = f"models/{model}"
    return {**body, "requests": [{**r, "model": named} if isinstance(r, dict) else r for r in requests]}
