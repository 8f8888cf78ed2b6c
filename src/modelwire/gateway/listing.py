"""A model as each dialect's model listing describes it."""

from __future__ import annotations

from typing import Any

from ..providers.catalog import ModelProfile
from .http import Scope


def openai_model(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 1_700_000_000, "owned_by": "modelwire"}


def anthropic_model(model: str) -> dict[str, Any]:
    return {"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z"}


def gemini_model(model: str, profile: ModelProfile) -> dict[str, Any]:
    return {
        "name": f"models/{model}",
        "baseModelId": model,
        "version": "001",
        "displayName": model,
        "inputTokenLimit": profile.context_window or 128_000,
        "outputTokenLimit": profile.max_output or 16_384,
        "supportedGenerationMethods": ["generateContent", "streamGenerateContent", "countTokens"],
    }


def google_client(scope: Scope) -> bool:
    """google-genai lists models at ``/v1/models`` too; it is known by its headers."""
    return any(name in (b"x-goog-api-client", b"x-goog-api-key") for name, _ in scope["headers"])
