"""Host kinds: where requests go and how they authenticate, for each kind of OpenAI host.

``openai``: native OpenAI semantics wherever ``base_url`` points (stored responses, chaining,
service tiers, prompt caching, compaction). ``azure``: deployment-scoped paths with
``api-version``, or the ``/openai/v1/`` surface, and the ``api-key`` header. ``codex``: the ChatGPT
subscription route (Responses only, OAuth tokens). ``openai-compatible``: any server that speaks
the OpenAI wire without OpenAI's extras; requests are stateless and carry the whole transcript.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, TypeAlias
from urllib.parse import urlsplit

from ..dialects._options import COMPATIBLE, NATIVE, WireOptions

HostKind: TypeAlias = Literal["openai", "azure", "codex", "openai-compatible"]
WireAPI: TypeAlias = Literal["responses", "chat"]
Endpoint: TypeAlias = Literal["responses", "chat", "embeddings", "models", "response"]

OPENAI_BASE_URL = "https://api.openai.com/v1"
CODEX_BASE_URL = "https://chatgpt.com/backend-api/codex"
AZURE_SUFFIXES = (".openai.azure.com", ".services.ai.azure.com", ".cognitiveservices.azure.com")
DEFAULT_AZURE_API_VERSION = "2024-12-01-preview"
# Azure serves the Responses API only from this api-version on; older ones answer 400.
AZURE_RESPONSES_MIN_VERSION = "2025-03-01-preview"
AZURE_RESPONSES_VERSION = "2025-04-01-preview"

_PATHS: dict[Endpoint, str] = {
    "responses": "/responses",
    "chat": "/chat/completions",
    "embeddings": "/embeddings",
    "models": "/models",
    "response": "/responses/",
}


def detect_kind(base_url: str) -> HostKind:
    """The host kind a base URL implies when the caller named none."""
    host = (urlsplit(base_url).hostname or "").lower()
    if host == "api.openai.com":
        return "openai"
    if host.endswith(AZURE_SUFFIXES):
        return "azure"
    if host == "chatgpt.com" and "/codex" in base_url:
        return "codex"
    return "openai-compatible"


@dataclass(frozen=True, slots=True)
class Host:
    kind: HostKind
    base_url: str
    api_version: str | None = None

    @classmethod
    def create(cls, kind: HostKind | None, base_url: str | None, api_version: str | None = None) -> Host:
        if kind is None:
            kind = detect_kind(base_url) if base_url else "openai"
        default = CODEX_BASE_URL if kind == "codex" else OPENAI_BASE_URL
        base = (base_url or default).rstrip("/")
        if kind == "azure" and not base.endswith("/v1"):
            api_version = (
                api_version or os.environ.get("AZURE_OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION
            )
            if base.endswith("/openai"):
                base = base[: -len("/openai")]
        return cls(kind=kind, base_url=base, api_version=api_version if kind == "azure" else None)

    @property
    def native(self) -> bool:
        """OpenAI's own semantics: stored responses, chaining, tiers, caching, compaction."""
        return self.kind in ("openai", "azure", "codex")

    @property
    def wire(self) -> WireOptions:
        return NATIVE if self.native else COMPATIBLE

    @property
    def azure_classic(self) -> bool:
        return self.kind == "azure" and self.api_version is not None

    def url(self, endpoint: Endpoint, model: str = "", suffix: str = "") -> str:
        """The full URL of ``endpoint`` (for ``response``, ``suffix`` is the id and sub-path)."""
        path = _PATHS[endpoint] + suffix
        if not self.azure_classic:
            return self.base_url + path
        version = self.api_version
        if endpoint in ("chat", "embeddings"):
            path = f"/openai/deployments/{model}{path}"
        else:
            path = "/openai" + path
            if (
                endpoint in ("responses", "response")
                and version
                and version[:10] < AZURE_RESPONSES_MIN_VERSION[:10]
            ):
                version = AZURE_RESPONSES_VERSION
        return f"{self.base_url}{path}?api-version={version}"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        if not key:
            return {}
        if self.kind == "azure" and not key.startswith("eyJ"):  # Entra ID tokens are JWTs: Bearer
            return {"api-key": key}
        return {"Authorization": f"Bearer {key}"}
