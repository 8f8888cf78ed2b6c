"""The model catalog: what each model can do and what it costs, as data.

Profiles live in ``modelwire/data/models.json``, keyed by model-name prefix and matched by the
longest prefix, so dated snapshots (``gpt-5.1-2025-11-13``) find their family. Quirks are named
flags here (``sampling``, ``efforts``, ``apis``), read by :func:`adapt` in one place, never
inline checks on model names elsewhere.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..media_types import MediaUsage
from ..types import Request, Usage
from .media_pricing import MediaPrice, media_cost

if TYPE_CHECKING:
    from ..wires import Wire

EFFORT_ORDER = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
DEFAULT_CONTEXT_WINDOW = 80_000 / 0.7  # so that the 70% compaction threshold is 80,000 when unknown


@dataclass(frozen=True, slots=True)
class LongContext:
    """Above ``threshold`` input tokens the whole request is billed at these multiples."""

    threshold: int
    input: float
    output: float


@dataclass(frozen=True, slots=True)
class AudioPrice:
    """US dollars per million audio tokens (Realtime models price audio apart from text)."""

    input: float
    output: float
    cached_input: float | None = None


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    long_context: LongContext | None = None
    audio: AudioPrice | None = None


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """What a model accepts. ``known`` is False for the permissive profile of an unknown model."""

    id: str
    context_window: int | None = None
    max_output: int | None = None
    input_modalities: tuple[str, ...] = ("text",)
    output_modalities: tuple[str, ...] = ("text",)
    tools: bool = True
    structured_output: bool = True
    reasoning: bool | None = None
    efforts: tuple[str, ...] | None = None
    sampling: bool = True
    apis: tuple[str, ...] = ("responses", "chat")
    chat_tools: str = "yes"  # yes | effort-none | no: whether Chat Completions takes function tools
    price: Price | None = None
    embedding_dimensions: int | None = None
    known: bool = True
    media_price: MediaPrice | None = None


def _flag(raw: dict[str, Any], name: str) -> bool:
    """A capability flag; unknown (null or absent) means permissive, so nothing is dropped on a guess."""
    return raw.get(name) is not False


def _price(raw: dict[str, Any] | None) -> Price | None:
    if not raw:
        return None
    long = raw.get("long_context")
    audio = raw.get("audio")
    return Price(
        input=raw["input"],
        output=raw["output"],
        cached_input=raw.get("cached_input"),
        cache_write=raw.get("cache_write"),
        long_context=LongContext(long["threshold"], long["input"], long["output"]) if long else None,
        audio=AudioPrice(audio["input"], audio["output"], audio.get("cached_input")) if audio else None,
    )


def _profile(model_id: str, raw: dict[str, Any]) -> ModelProfile:
    return ModelProfile(
        id=model_id,
        context_window=raw.get("context_window"),
        max_output=raw.get("max_output"),
        input_modalities=tuple(raw.get("input_modalities") or ("text",)),
        output_modalities=tuple(raw.get("output_modalities") or ("text",)),
        tools=_flag(raw, "tools"),
        structured_output=_flag(raw, "structured_output"),
        reasoning=raw.get("reasoning"),
        efforts=tuple(raw["efforts"]) if raw.get("efforts") is not None else None,
        sampling=_flag(raw, "sampling"),
        apis=tuple(raw.get("apis") or ("responses", "chat")),
        chat_tools=raw.get("chat_tools") or "yes",
        price=_price(raw.get("price")),
        embedding_dimensions=raw.get("embedding_dimensions"),
        media_price=MediaPrice(**raw["media_price"]) if raw.get("media_price") else None,
    )


@functools.cache
def builtin_profiles() -> dict[str, ModelProfile]:
    text = resources.files("modelwire").joinpath("data/models.json").read_text("utf-8")
    return {k: _profile(k, v) for k, v in json.loads(text).items() if not k.startswith("_")}


class Catalog:
    """Built-in profiles, extended by ``add`` (config) and ``discover`` (an upstream's model list).

    ``context_cap`` is a runtime ceiling on the context a model is allowed to use, separate from
    its native window (e.g. to keep costs bounded or to match a proxy's limit).
    """

    def __init__(
        self, profiles: dict[str, ModelProfile] | None = None, *, context_cap: int | None = None
    ) -> None:
        self._profiles = dict(builtin_profiles() if profiles is None else profiles)
        self._discovered: set[str] = set()
        self.context_cap = context_cap

    def add(self, profile: ModelProfile) -> None:
        self._profiles[profile.id] = profile
        self.profile.cache_clear()

    def discover(self, model_ids: list[str]) -> None:
        """Remember the models an upstream's ``GET /models`` listed."""
        self._discovered.update(model_ids)

    def models(self) -> list[str]:
        """Every model id known: discovered ones, plus catalog entries when nothing was discovered."""
        return sorted(self._discovered or self._profiles)

    @functools.lru_cache(maxsize=1024)  # noqa: B019 - a catalog lives as long as its driver
    def profile(self, model: str) -> ModelProfile:
        name = model.rsplit("/", 1)[-1].lower()
        best = ""
        for prefix in self._profiles:
            if name.startswith(prefix) and len(prefix) > len(best):
                best = prefix
        if best:
            return dataclasses.replace(self._profiles[best], id=model)
        return ModelProfile(id=model, known=False)

    def context_window(self, model: str, cap: int | None = None) -> int | None:
        """The context ``model`` may use: its window, under this catalog's cap and ``cap`` (a
        route's own, such as the Codex route's)."""
        window = self.profile(model).context_window
        for limit in (self.context_cap, cap):
            if limit is not None:
                window = min(window, limit) if window else limit
        return window

    def capped(self, cap: int | None = None) -> bool:
        """Whether a cap (this catalog's, or ``cap``) bounds context windows."""
        return self.context_cap is not None or cap is not None

    def cost(self, model: str, usage: Usage) -> float | None:
        return cost(self.profile(model), usage)

    def media_cost(self, model: str, usage: MediaUsage) -> float | None:
        """Dollars for an image, audio or video call (None when the model has no media price)."""
        price = self.profile(model).media_price
        return media_cost(price, usage) if price is not None else None


def cost(profile: ModelProfile, usage: Usage) -> float | None:
    """Dollars for ``usage``: cached input at the cached rate, cache writes at the write rate,
    reasoning inside output, long-context multipliers over the whole request."""
    price = profile.price
    if price is None:
        return None
    cached = min(usage.cached_input_tokens, usage.input_tokens)
    written = min(usage.cache_write_tokens, usage.input_tokens - cached)
    fresh = usage.input_tokens - cached - written
    cached_rate = price.cached_input if price.cached_input is not None else price.input
    write_rate = price.cache_write if price.cache_write is not None else price.input
    in_mult = out_mult = 1.0
    if price.long_context and usage.input_tokens > price.long_context.threshold:
        in_mult, out_mult = price.long_context.input, price.long_context.output
    dollars = (fresh * price.input + cached * cached_rate + written * write_rate) * in_mult
    dollars += usage.output_tokens * price.output * out_mult
    return dollars / 1_000_000


def nearest_effort(effort: str, accepted: tuple[str, ...]) -> str | None:
    """The accepted effort closest to ``effort`` (ties go to the higher level)."""
    if effort in accepted or not accepted:
        return effort if effort in accepted else None
    if effort not in EFFORT_ORDER:
        return None
    rank = EFFORT_ORDER.index(effort)
    ranked = [
        (abs(EFFORT_ORDER.index(a) - rank), -EFFORT_ORDER.index(a), a) for a in accepted if a in EFFORT_ORDER
    ]
    return min(ranked)[2] if ranked else None


def adapt(req: Request, profile: ModelProfile) -> list[str]:
    """Fit ``req`` to what the model accepts, in place; returns the names of dropped settings."""
    dropped: list[str] = []
    if not profile.sampling:
        for name in ("temperature", "top_p"):
            if getattr(req, name) is not None:
                setattr(req, name, None)
                dropped.append(name)
    if req.reasoning_effort is not None and profile.efforts is not None:
        effort = nearest_effort(req.reasoning_effort, profile.efforts)
        if effort is None:
            dropped.append("reasoning_effort")
        req.reasoning_effort = effort
    if profile.reasoning is False and req.reasoning_summary is not None:
        req.reasoning_summary = None
        dropped.append("reasoning_summary")
    if profile.max_output and req.max_output_tokens and req.max_output_tokens > profile.max_output:
        req.max_output_tokens = profile.max_output
    return dropped


# Sampling settings some dialects carry and others have no field for, by their wire names.
_FOREIGN_SAMPLING = (
    "top_k",
    "topK",
    "frequency_penalty",
    "frequencyPenalty",
    "presence_penalty",
    "presencePenalty",
    "logit_bias",
    "min_p",
    "repetition_penalty",
)


def unsupported_settings(req: Request, profile: ModelProfile, wire: Wire) -> list[str]:
    """The caller's sampling settings an upstream will not see: refused by the model (reasoning
    models take no temperature), or with no field in the upstream's wire."""
    names = [] if profile.sampling else [n for n in ("temperature", "top_p") if getattr(req, n) is not None]
    if not wire.seed and req.seed is not None:
        names.append("seed")
    if req.extra and req.dialect != wire.name:  # (no extra fields: nothing foreign to look for)
        generation = req.extra.get("generationConfig")
        extra = {**req.extra, **(generation if isinstance(generation, dict) else {})}
        names += [n for n in _FOREIGN_SAMPLING if n in extra]
        names += [f"tools.{_tool_label(t)}" for t in req.extra.get("tools") or () if isinstance(t, dict)]
    return names


def _tool_label(tool: dict[str, Any]) -> str:
    """What to call a tool another dialect defines: its name, its type, or its one key (Gemini)."""
    label = tool.get("name") or tool.get("type")
    return str(label) if label else next(iter(tool), "unknown")
