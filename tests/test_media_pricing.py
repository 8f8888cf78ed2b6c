"""Media prices (``media_price`` in models.json) and the per-unit pricing functions."""

from __future__ import annotations

import pytest

from modelwire.media_types import MediaUsage
from modelwire.providers.catalog import Catalog
from modelwire.providers.media_pricing import MediaPrice, media_cost, token_cost

CATALOG = Catalog()
MEDIA_MODELS = ("gpt-image-2", "gpt-image-1.5", "gpt-image-1", "gpt-image-1-mini", "gpt-4o-mini-tts", "tts-1")
MEDIA_MODELS += (
    "tts-1-hd",
    "gpt-4o-transcribe",
    "gpt-4o-mini-transcribe",
    "whisper-1",
    "sora-2",
    "sora-2-pro",
)


def test_gpt_image_tokens_are_priced_by_kind() -> None:
    usage = MediaUsage(text_input_tokens=100, image_input_tokens=1000, image_output_tokens=4160)
    # gpt-image-1: text $5, image input $10, image output $40 per million
    assert CATALOG.media_cost("gpt-image-1", usage) == pytest.approx((100 * 5 + 1000 * 10 + 4160 * 40) / 1e6)


def test_cached_tokens_use_the_cached_rate() -> None:
    usage = MediaUsage(text_input_tokens=1000, cached_text_input_tokens=400)
    assert CATALOG.media_cost("gpt-image-1-mini", usage) == pytest.approx((600 * 2.0 + 400 * 0.2) / 1e6)


def test_output_tokens_match_the_listed_per_image_price() -> None:
    """OpenAI's per-image prices are the output image tokens at the output rate, rounded."""
    high_square = MediaUsage(image_output_tokens=4160)
    assert CATALOG.media_cost("gpt-image-1", high_square) == pytest.approx(0.1664)
    assert CATALOG.media_cost("gpt-image-1", MediaUsage(images=1, size="1024x1024", quality="high")) == 0.167


def test_images_without_usage_are_priced_per_image_by_size_and_quality() -> None:
    usage = MediaUsage(images=3, size="1536x1024", quality="medium")
    assert CATALOG.media_cost("gpt-image-1.5", usage) == pytest.approx(3 * 0.05)
    assert CATALOG.media_cost("gpt-image-1.5-2025-12-16", usage) == pytest.approx(3 * 0.05)  # a snapshot
    assert CATALOG.media_cost("gpt-image-1", MediaUsage(images=1, size="2048x2048", quality="high")) is None


def test_speech_is_priced_per_character_or_by_tokens() -> None:
    assert CATALOG.media_cost("tts-1", MediaUsage(characters=1000)) == pytest.approx(0.015)
    assert CATALOG.media_cost("tts-1-hd", MediaUsage(characters=1000)) == pytest.approx(0.030)
    tokens = MediaUsage(text_input_tokens=50, audio_output_tokens=1000)
    assert CATALOG.media_cost("gpt-4o-mini-tts", tokens) == pytest.approx((50 * 0.6 + 1000 * 12) / 1e6)
    assert CATALOG.media_cost("gpt-4o-mini-tts", MediaUsage(audio_seconds=120)) == pytest.approx(0.03)


def test_transcription_is_priced_per_minute_or_by_tokens() -> None:
    assert CATALOG.media_cost("whisper-1", MediaUsage(audio_seconds=90)) == pytest.approx(0.009)
    usage = MediaUsage(audio_input_tokens=600, text_output_tokens=100)
    assert CATALOG.media_cost("gpt-4o-transcribe", usage) == pytest.approx((600 * 6 + 100 * 10) / 1e6)
    assert CATALOG.media_cost("gpt-4o-mini-transcribe", MediaUsage(audio_seconds=60)) == pytest.approx(0.003)


def test_video_is_priced_per_second_by_size() -> None:
    assert CATALOG.media_cost("sora-2", MediaUsage(video_seconds=8, size="1280x720")) == pytest.approx(0.8)
    assert CATALOG.media_cost("sora-2", MediaUsage(video_seconds=4)) == pytest.approx(0.4)  # default size
    pro = MediaUsage(video_seconds=12, size="1792x1024")
    assert CATALOG.media_cost("sora-2-pro", pro) == pytest.approx(6.0)
    assert CATALOG.media_cost("sora-2", MediaUsage(video_seconds=4, size="1792x1024")) is None  # not offered


def test_unknown_models_and_unpriced_kinds_give_none() -> None:
    assert CATALOG.media_cost("my-local-image-model", MediaUsage(images=1)) is None
    assert CATALOG.media_cost("gpt-4o-mini", MediaUsage(characters=10)) is None  # a text model
    # a kind of token the model has no rate for: no partial (understated) sum
    mixed = MediaUsage(text_input_tokens=5, audio_output_tokens=5)
    assert token_cost(MediaPrice(text_input=1.0), mixed) is None
    assert media_cost(MediaPrice(per_minute=0.006), MediaUsage()) is None


def test_every_media_model_named_in_the_catalog_has_a_price() -> None:
    for model in MEDIA_MODELS:
        profile = CATALOG.profile(model)
        assert profile.id == model and profile.media_price is not None, model
