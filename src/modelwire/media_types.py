"""Typed results of the media endpoints (images, audio, videos) and what a media call consumed.

Plain slotted dataclasses in the style of ``types.py``. Each result keeps the parsed JSON it came
from in ``raw``, so fields the API adds later are not lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Json = dict[str, Any]


@dataclass(slots=True, kw_only=True, frozen=True)
class MediaUsage:
    """What a media call consumed, as far as its answer (or request) tells.

    Token counts come from the answer when the API reports them (gpt-image models, gpt-4o
    transcription and speech); otherwise the billed units: images by ``size`` and ``quality``,
    ``characters`` of speech input, ``audio_seconds`` transcribed, ``video_seconds`` generated
    at ``size``. ``Catalog.media_cost`` prices it.
    """

    text_input_tokens: int = 0
    cached_text_input_tokens: int = 0
    text_output_tokens: int = 0
    image_input_tokens: int = 0
    cached_image_input_tokens: int = 0
    image_output_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    images: int = 0
    size: str | None = None
    quality: str | None = None
    characters: int = 0
    audio_seconds: float = 0.0
    video_seconds: float = 0.0

    @property
    def tokens(self) -> int:
        """All tokens reported, of every kind (0 when the call is billed by units)."""
        return (
            self.text_input_tokens
            + self.text_output_tokens
            + self.image_input_tokens
            + self.image_output_tokens
            + self.audio_input_tokens
            + self.audio_output_tokens
        )
