"""What a media request used, read from its answer, in the library's :class:`MediaUsage` (which
``Catalog.media_cost`` prices): tokens of each kind where the answer reports them (gpt-image,
gpt-4o TTS and transcription models do), else the unit the modality is billed by: images (with
their size and quality), characters of speech, seconds of audio or video.
"""

from __future__ import annotations

from typing import Any

from ..media_types import MediaUsage
from ..types import Usage
from .relay import Operation, Relayed

# Whose tokens an answer's ``output_tokens`` are, when it does not break them down.
OUTPUT_KIND: dict[Operation, str] = {
    "image_generation": "image",
    "image_edit": "image",
    "speech": "audio",
    "transcription": "text",
    "translation": "text",
    "video": "text",
}


def measure(op: Operation, body: dict[str, Any], relayed: Relayed) -> MediaUsage:
    """The use an answer reports (its JSON document, or the usage its event stream ended with)."""
    doc = relayed.doc or {}
    reported = relayed.usage if relayed.usage is not None else doc.get("usage")
    use = _tokens(op, reported)
    if op in ("image_generation", "image_edit"):
        data = doc.get("data")
        use["images"] = len(data) if isinstance(data, list) else int(body.get("n") or 1)
        use["size"] = str(doc.get("size") or body.get("size") or "1024x1024")
        use["quality"] = str(doc.get("quality") or body.get("quality") or "auto")
    elif op == "speech":
        use["characters"] = len(str(body.get("input") or ""))
    elif op in ("transcription", "translation"):
        use["audio_seconds"] = _audio_seconds(reported, doc)
    else:
        use["video_seconds"] = _number(doc.get("seconds") or body.get("seconds"))
        use["size"] = str(doc.get("size") or body.get("size") or "") or None
    return MediaUsage(**use)


def token_usage(use: MediaUsage) -> Usage:
    """The usage row's token columns: every kind of input, every kind of output."""
    return Usage(
        input_tokens=use.text_input_tokens + use.image_input_tokens + use.audio_input_tokens,
        cached_input_tokens=use.cached_text_input_tokens + use.cached_image_input_tokens,
        output_tokens=use.text_output_tokens + use.image_output_tokens + use.audio_output_tokens,
    )


def _tokens(op: Operation, usage: Any) -> dict[str, Any]:
    """The token fields of :class:`MediaUsage` from an answer's ``usage``."""
    if not isinstance(usage, dict) or usage.get("type") == "duration":
        return {}
    use: dict[str, Any] = {}
    details = usage.get("input_tokens_details") or usage.get("input_token_details")
    if isinstance(details, dict):
        use["text_input_tokens"] = text = _int(details.get("text_tokens"))
        use["image_input_tokens"] = _int(details.get("image_tokens"))
        use["audio_input_tokens"] = _int(details.get("audio_tokens"))
        use["cached_text_input_tokens"] = min(_int(details.get("cached_tokens")), text)
    else:
        use["text_input_tokens"] = _int(usage.get("input_tokens"))
    out = usage.get("output_tokens_details")
    if isinstance(out, dict) and ("text_tokens" in out or "image_tokens" in out):
        use["text_output_tokens"] = _int(out.get("text_tokens"))
        use["image_output_tokens"] = _int(out.get("image_tokens"))
    else:
        use[f"{OUTPUT_KIND[op]}_output_tokens"] = _int(usage.get("output_tokens"))
    return use


def _audio_seconds(usage: Any, doc: dict[str, Any]) -> float:
    if isinstance(usage, dict) and usage.get("type") == "duration":
        return _number(usage.get("seconds"))
    return _number(doc.get("duration"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _number(value: Any) -> float:
    try:
        return max(0.0, float(value)) if value is not None and not isinstance(value, bool) else 0.0
    except (TypeError, ValueError):
        return 0.0
