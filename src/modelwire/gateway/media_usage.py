"""What a media request used, read from its answer, and what it cost by the catalog's prices.

One :class:`MediaUse` per request: tokens where the answer reports them (gpt-image, gpt-4o TTS and
transcription models do), else the unit the modality is priced by: images (with their size and
quality), characters of speech, seconds of audio or video.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..providers.catalog import Catalog
from ..types import Usage
from .relay import Operation, Relayed


@dataclass(slots=True)
class MediaUse:
    operation: Operation
    tokens: Usage | None = None
    images: int = 0
    size: str | None = None
    quality: str | None = None
    characters: int = 0
    seconds: float = 0.0

    def cost(self, catalog: Catalog, model: str) -> float | None:
        """Dollars, by tokens when the answer counted them, else by the modality's own unit."""
        if self.tokens is not None and self.tokens.total_tokens:
            return catalog.cost(model, self.tokens)
        return None


def measure(op: Operation, body: dict[str, Any], relayed: Relayed) -> MediaUse:
    """The use an answer reports (its JSON document, or the usage its event stream ended with)."""
    doc = relayed.doc or {}
    usage = relayed.usage if relayed.usage is not None else doc.get("usage")
    use = MediaUse(op, tokens=tokens_of(usage))
    if op in ("image_generation", "image_edit"):
        data = doc.get("data")
        use.images = len(data) if isinstance(data, list) else int(body.get("n") or 1)
        use.size = str(doc.get("size") or body.get("size") or "1024x1024")
        use.quality = str(doc.get("quality") or body.get("quality") or "auto")
    elif op == "speech":
        use.characters = len(str(body.get("input") or ""))
    elif op in ("transcription", "translation"):
        use.seconds = _seconds(usage, doc)
    elif op == "video":
        use.seconds = float(doc.get("seconds") or 0) if str(doc.get("seconds") or "0").isdigit() else 0.0
    return use


def tokens_of(usage: Any) -> Usage | None:
    """Token usage in the Images, Speech or Transcription shape (``input_tokens``/``output_tokens``)."""
    if not isinstance(usage, dict) or usage.get("type") == "duration":
        return None
    inputs, outputs = usage.get("input_tokens"), usage.get("output_tokens")
    if not isinstance(inputs, int) and not isinstance(outputs, int):
        return None
    return Usage(input_tokens=int(inputs or 0), output_tokens=int(outputs or 0))


def _seconds(usage: Any, doc: dict[str, Any]) -> float:
    if isinstance(usage, dict) and usage.get("type") == "duration":
        return float(usage.get("seconds") or 0)
    duration = doc.get("duration")
    return float(duration) if isinstance(duration, int | float) else 0.0
