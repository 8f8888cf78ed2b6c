"""A model as each dialect's model listing describes it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ModelwireError
from ..providers.catalog import ModelProfile
from .http import Scope

if TYPE_CHECKING:
    from .routing import Router
    from .upstream import Backend


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


@dataclass(frozen=True, slots=True)
class ServedModels:
    """The models a gateway serves: its ``models:`` rules' public names, then what the default
    backend's upstream lists (bare names route there), without repeats."""

    configured: list[str]
    discovered: list[str]
    error: str | None = None  # why the upstream's list could not be read

    @property
    def ids(self) -> list[str]:
        return [*self.configured, *self.discovered]


async def served_models(router: Router, default: Backend | None) -> ServedModels:
    """What ``GET /v1/models`` lists and ``modelwire models`` shows, from one place.

    The upstream half is read from ``default`` (``GET /models``); an unreachable or failing
    upstream leaves just the configured names and says why in ``error``. Callers that cannot wait
    out the backend's own (long) read timeout wrap this in ``asyncio.timeout``.
    """
    configured = router.public_models()
    if default is None:
        return ServedModels(configured, [])
    if default.missing_key is not None:
        return ServedModels(configured, [], f"no upstream key: {default.missing_key} is not set")
    try:
        listed = await default.list_models()
    except ModelwireError as err:
        return ServedModels(configured, [], err.message)
    known = set(configured)
    return ServedModels(configured, [m for m in dict.fromkeys(listed) if m not in known])
