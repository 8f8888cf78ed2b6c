"""Prices of image, audio and video models: one small function per billing unit, tried in order.

OpenAI bills the gpt-image, gpt-4o transcription and gpt-4o-mini-tts models by tokens of each
kind (text, image, audio) and reports those tokens in the answer; the older models bill by unit:
tts-1 per character, whisper-1 per minute, Sora per second of video by size. OpenAI also quotes
per-image prices for gpt-image models (what the output tokens come to), used when an answer
carries no usage. Rates are in ``data/models.json`` (``media_price``), sources in
``docs/catalog-sources.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..media_types import MediaUsage

DEFAULT_VIDEO_SIZE = "720x1280"  # what POST /videos makes when no size is asked for


@dataclass(frozen=True, slots=True, kw_only=True)
class MediaPrice:
    """US dollars: token rates per million tokens by kind, and the per-unit rates (per image by
    quality and size, per million characters, per minute of audio, per second of video by size)."""

    text_input: float | None = None
    text_cached_input: float | None = None
    text_output: float | None = None
    image_input: float | None = None
    image_cached_input: float | None = None
    image_output: float | None = None
    audio_input: float | None = None
    audio_output: float | None = None
    per_image: dict[str, dict[str, float]] | None = None  # quality -> size -> dollars an image
    per_million_characters: float | None = None
    per_minute: float | None = None
    per_second: dict[str, float] | None = None  # video size -> dollars a second


def token_cost(price: MediaPrice, usage: MediaUsage) -> float | None:
    """Tokens of each kind at their rates; None when no tokens were reported or a reported kind
    has no rate (a partial sum would understate the bill)."""
    if usage.tokens == 0:
        return None
    fresh_text = usage.text_input_tokens - usage.cached_text_input_tokens
    fresh_image = usage.image_input_tokens - usage.cached_image_input_tokens
    terms = (
        (fresh_text, price.text_input),
        (usage.cached_text_input_tokens, _or(price.text_cached_input, price.text_input)),
        (usage.text_output_tokens, price.text_output),
        (fresh_image, price.image_input),
        (usage.cached_image_input_tokens, _or(price.image_cached_input, price.image_input)),
        (usage.image_output_tokens, price.image_output),
        (usage.audio_input_tokens, price.audio_input),
        (usage.audio_output_tokens, price.audio_output),
    )
    if any(count and rate is None for count, rate in terms):
        return None
    return sum(count * (rate or 0.0) for count, rate in terms) / 1_000_000


def image_cost(price: MediaPrice, usage: MediaUsage) -> float | None:
    """Per image, by quality and size; None for a quality or size without a listed price."""
    if not usage.images or price.per_image is None:
        return None
    rate = price.per_image.get(usage.quality or "", {}).get(usage.size or "")
    return None if rate is None else usage.images * rate


def character_cost(price: MediaPrice, usage: MediaUsage) -> float | None:
    if not usage.characters or price.per_million_characters is None:
        return None
    return usage.characters * price.per_million_characters / 1_000_000


def audio_cost(price: MediaPrice, usage: MediaUsage) -> float | None:
    if not usage.audio_seconds or price.per_minute is None:
        return None
    return usage.audio_seconds / 60 * price.per_minute


def video_cost(price: MediaPrice, usage: MediaUsage) -> float | None:
    if not usage.video_seconds or price.per_second is None:
        return None
    rate = price.per_second.get(usage.size or DEFAULT_VIDEO_SIZE)
    return None if rate is None else usage.video_seconds * rate


# Reported tokens first: they are what OpenAI bills; the units are for answers without usage.
PRICERS: tuple[Callable[[MediaPrice, MediaUsage], float | None], ...] = (
    token_cost,
    image_cost,
    character_cost,
    audio_cost,
    video_cost,
)


def media_cost(price: MediaPrice, usage: MediaUsage) -> float | None:
    """Dollars for ``usage`` under ``price``: the first unit kind that prices it, None if none does."""
    for pricer in PRICERS:
        dollars = pricer(price, usage)
        if dollars is not None:
            return dollars
    return None


def _or(rate: float | None, fallback: float | None) -> float | None:
    return fallback if rate is None else rate
