"""Typed results of the media endpoints (images, audio, videos) and what a media call consumed.

Plain slotted dataclasses in the style of ``types.py``. Each result keeps the parsed JSON it came
from in ``raw``, so fields the API adds later are not lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


@dataclass(slots=True, kw_only=True)
class GeneratedImage:
    """One image of an answer: its bytes (``b64_json`` decoded) or, from DALL·E, a URL."""

    data: bytes | None = None
    url: str | None = None
    revised_prompt: str | None = None


@dataclass(slots=True, kw_only=True)
class ImageResult:
    """``images.generate`` / ``images.edit``: the images and the settings the API applied."""

    images: list[GeneratedImage]
    model: str
    created: int = 0
    size: str | None = None
    quality: str | None = None
    background: str | None = None
    output_format: str | None = None
    usage: MediaUsage = field(default_factory=MediaUsage)
    cost: float | None = None
    raw: Json = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Transcript:
    """``audio.transcribe`` / ``audio.translate``. For ``text``, ``srt`` and ``vtt`` the body is
    ``text`` as sent; for the JSON formats the fields are filled from the document."""

    text: str
    model: str
    format: str = "json"
    language: str | None = None
    duration: float | None = None
    segments: list[Json] = field(default_factory=list)
    words: list[Json] = field(default_factory=list)
    usage: MediaUsage = field(default_factory=MediaUsage)
    cost: float | None = None
    raw: Json = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class Video:
    """A video job (``VideoResource``): ``status`` is queued, in_progress, completed or failed."""

    id: str
    status: str
    model: str
    progress: int = 0
    prompt: str | None = None
    size: str | None = None
    seconds: str | None = None
    created_at: int = 0
    completed_at: int | None = None
    expires_at: int | None = None
    remixed_from_video_id: str | None = None
    error: Json | None = None
    usage: MediaUsage = field(default_factory=MediaUsage)
    cost: float | None = None
    raw: Json = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in ("completed", "failed")


@dataclass(slots=True, kw_only=True)
class VideoPage:
    """One page of ``videos.list``; pass ``last_id`` as ``after`` for the next."""

    videos: list[Video]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
