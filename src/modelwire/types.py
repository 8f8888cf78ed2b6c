"""The provider-neutral conversation model.

Every wire dialect maps to and from these types, so a request decoded from one dialect can be
encoded into any other. They are plain slotted dataclasses: cheap to build on the gateway's hot
path, easy to pattern-match (``match part: case ToolCall(): ...``).

Opaque replay data (encrypted reasoning, signatures) is kept apart from content and tagged with the
dialect that minted it, because only that dialect's upstream can read it back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeAlias, TypeVar

Role: TypeAlias = Literal["system", "developer", "user", "assistant", "tool"]
StopReason: TypeAlias = Literal["stop", "length", "tool_calls", "content_filter", "refusal", "pause", "error"]
Dialect: TypeAlias = Literal["openai_chat", "openai_responses", "anthropic_messages", "gemini"]


# ----------------------------------------------------------------------------------------- parts


@dataclass(slots=True, kw_only=True)
class Text:
    """Plain text. ``cache_control`` keeps an Anthropic cache breakpoint when one was given."""

    text: str
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True, kw_only=True)
class Image:
    """An image by URL (``url``) or by value (``data`` with ``media_type``)."""

    url: str | None = None
    data: bytes | None = None
    media_type: str | None = None
    detail: str | None = None
    file_id: str | None = None


@dataclass(slots=True, kw_only=True)
class Audio:
    """Input audio by value; ``format`` is the codec name (``wav``, ``mp3``)."""

    data: bytes
    format: str


@dataclass(slots=True, kw_only=True)
class File:
    """A document: an uploaded file id, inline bytes, or a URL."""

    file_id: str | None = None
    data: bytes | None = None
    url: str | None = None
    filename: str | None = None
    media_type: str | None = None


@dataclass(slots=True, kw_only=True)
class ToolCall:
    """A call the model asked for. ``arguments`` is the JSON text exactly as the model wrote it.

    ``id`` is the id a tool result answers (Chat ``tool_calls[].id``, Responses ``call_id``,
    Anthropic ``tool_use.id``); ``item_id`` is the Responses item id (``fc_…``) when there is one.
    ``signature`` is a Gemini thought signature for this call, replayed only to Gemini; decoding
    never sets it (a decoded signature is a :class:`Reasoning` part before the call), but a call
    built by hand may carry one.
    """

    id: str
    name: str
    arguments: str = ""
    item_id: str | None = None
    signature: str | None = None


@dataclass(slots=True, kw_only=True)
class ToolResult:
    """The result of a tool call, answering ``call_id``."""

    call_id: str
    content: list[Text | Image | File] = field(default_factory=list)
    is_error: bool = False
    name: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, Text))


@dataclass(slots=True, kw_only=True)
class Reasoning:
    """The model's reasoning: summaries, raw text where exposed, and opaque replay data.

    ``data`` is what must be sent back for the model to keep its reasoning across turns:
    Responses ``encrypted_content``, an Anthropic ``signature`` (or ``redacted_thinking`` data when
    ``redacted``), a Gemini thought signature. ``dialect`` names who minted it.
    """

    summary: list[str] = field(default_factory=list)
    text: str | None = None
    id: str | None = None
    data: str | None = None
    dialect: Dialect | None = None
    redacted: bool = False

    @property
    def summary_text(self) -> str:
        return "\n\n".join(self.summary)


@dataclass(slots=True, kw_only=True)
class Refusal:
    """The model declined to answer."""

    text: str


@dataclass(slots=True, kw_only=True)
class ProviderItem:
    """An item only the dialect that minted it understands (a Responses compaction item, a
    built-in tool call), kept verbatim so it can be replayed to that dialect and dropped elsewhere."""

    dialect: Dialect
    data: dict[str, Any]


Part: TypeAlias = Text | Image | Audio | File | ToolCall | ToolResult | Reasoning | Refusal | ProviderItem


# -------------------------------------------------------------------------------------- messages


@dataclass(slots=True, kw_only=True)
class Message:
    role: Role
    content: list[Part] = field(default_factory=list)
    name: str | None = None
    id: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, Text))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.content if isinstance(p, ToolCall)]


def system(text: str) -> Message:
    return Message(role="system", content=[Text(text=text)])


def developer(text: str) -> Message:
    return Message(role="developer", content=[Text(text=text)])


def user(*content: str | Part) -> Message:
    """A user message; strings become text parts."""
    return Message(role="user", content=[Text(text=c) if isinstance(c, str) else c for c in content])


def assistant(*content: str | Part) -> Message:
    return Message(role="assistant", content=[Text(text=c) if isinstance(c, str) else c for c in content])


def tool_result(call_id: str, output: str, *, is_error: bool = False, name: str | None = None) -> Message:
    return Message(
        role="tool",
        content=[ToolResult(call_id=call_id, content=[Text(text=output)], is_error=is_error, name=name)],
    )


# ------------------------------------------------------------------------------- tools, settings


@dataclass(slots=True, kw_only=True)
class Tool:
    """A function the model may call. ``parameters`` is a JSON Schema object."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True, frozen=True)
class ToolName:
    """``tool_choice`` that forces one named tool."""

    name: str


ToolChoice: TypeAlias = Literal["auto", "none", "required"] | ToolName


@dataclass(slots=True, kw_only=True)
class ResponseFormat:
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


@dataclass(slots=True, kw_only=True)
class Request:
    """One generation request. ``None`` means "not set": encoders leave unset fields out."""

    model: str
    messages: list[Message] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    reasoning_summary: str | None = None
    verbosity: str | None = None
    service_tier: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool = False
    # Responses-API state: native hosts chain by id, the gateway expands chains itself.
    previous_response_id: str | None = None
    store: bool | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    # Fields this model has no place for, passed through untouched to an upstream that speaks
    # ``dialect`` (the dialect the request was decoded from; None for library callers).
    extra: dict[str, Any] = field(default_factory=dict)
    dialect: Dialect | None = None


_T = TypeVar("_T")


def _shallow_copier(cls: type[_T]) -> Callable[[_T], _T]:
    """A function copying a slotted dataclass field by field (values shared, not copied).

    Written out as one assignment per field, as dataclasses writes its ``__init__``: about a tenth
    of the instructions of ``dataclasses.replace``, which inspects every field and parses every
    keyword again on each call (a request is copied once per upstream call).
    """
    body = "".join(f"    new.{f.name} = old.{f.name}\n" for f in fields(cls))  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"cls": cls, "new_object": object.__new__}
    exec(f"def copy(old):\n    new = new_object(cls)\n{body}    return new\n", namespace)
    copier: Callable[[_T], _T] = namespace["copy"]
    return copier


copy_request = _shallow_copier(Request)


# -------------------------------------------------------------------------------- usage, result


@dataclass(slots=True, kw_only=True)
class Usage:
    """Token counts in OpenAI's convention: ``input_tokens`` includes cached and cache-written
    input, ``output_tokens`` includes reasoning. ``cost`` is in US dollars when known."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost is None and other.cost is None else (self.cost or 0.0) + (other.cost or 0.0)
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            cached_input_tokens=self.cached_input_tokens + other.cached_input_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cost=cost,
        )


@dataclass(slots=True, kw_only=True)
class Response:
    """A finished generation: the assistant's parts, why it stopped, and what it cost."""

    id: str
    model: str
    content: list[Part] = field(default_factory=list)
    stop_reason: StopReason = "stop"
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)
    created: int = 0
    service_tier: str | None = None

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.content if isinstance(p, Text))

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [p for p in self.content if isinstance(p, ToolCall)]

    @property
    def reasoning(self) -> list[Reasoning]:
        return [p for p in self.content if isinstance(p, Reasoning)]

    def message(self) -> Message:
        """The response as an assistant message, ready to append to the conversation."""
        return Message(role="assistant", content=list(self.content), id=self.id)


@dataclass(slots=True, kw_only=True)
class EmbeddingRequest:
    """Texts to embed, as any embeddings surface asks: one vector each, in order. ``task`` is
    Gemini's ``taskType`` (only a Gemini upstream has a field for it)."""

    model: str
    inputs: list[str]
    dimensions: int | None = None
    task: str | None = None


@dataclass(slots=True, kw_only=True)
class Embeddings:
    """The vectors of an :class:`EmbeddingRequest`, in its order; ``input_tokens`` when the
    upstream said (Gemini's API does not)."""

    vectors: list[list[float]]
    input_tokens: int | None = None


# --------------------------------------------------------------------------------- stream events


@dataclass(slots=True, kw_only=True)
class Start:
    """The stream opened: the upstream's response id and model."""

    id: str
    model: str
    created: int = 0


@dataclass(slots=True, kw_only=True)
class BlockStart:
    """A content block opened at ``index``. ``part`` is its skeleton: ``Text(text="")``,
    ``Reasoning()``, ``ToolCall(id=…, name=…, arguments="")`` or ``Refusal(text="")``."""

    index: int
    part: Part


@dataclass(slots=True, kw_only=True)
class BlockDelta:
    """More of block ``index``: text, refusal text, tool-call arguments or reasoning.

    For reasoning, ``summary_index`` says which summary part the text extends; ``None`` means
    raw reasoning text.
    """

    index: int
    text: str
    summary_index: int | None = None


@dataclass(slots=True, kw_only=True)
class BlockStop:
    """Block ``index`` is complete; ``part`` is the whole of it, replay data included."""

    index: int
    part: Part


@dataclass(slots=True, kw_only=True)
class UsageUpdate:
    usage: Usage


@dataclass(slots=True, kw_only=True)
class Finish:
    stop_reason: StopReason
    usage: Usage | None = None
    stop_sequence: str | None = None


@dataclass(slots=True, kw_only=True)
class StreamError:
    """The stream failed after it started; ``error`` is a :class:`modelwire.errors.ModelwireError`."""

    error: Exception


StreamEvent: TypeAlias = Start | BlockStart | BlockDelta | BlockStop | UsageUpdate | Finish | StreamError
