"""Hosts: where requests go, how they authenticate, and what each kind of host can do.

What differs between kinds of host is data, one :class:`HostProfile` per kind, read by name
(``host.profile.stateful``), never found by comparing the kind's name:

``openai``: native OpenAI semantics wherever ``base_url`` points (stored responses, chaining,
service tiers, prompt caching, compaction). ``azure``: deployment-scoped paths with
``api-version``, or the ``/openai/v1/`` surface, and the ``api-key`` header. ``codex``: the ChatGPT
subscription route (Responses only, streamed only, OAuth tokens). ``openai-compatible``: any
server that speaks the OpenAI wire without OpenAI's extras; requests are stateless and carry the
whole transcript. ``anthropic``: the Messages API (``x-api-key``, ``anthropic-version``).
``gemini``: the Gemini API's ``generateContent`` (``x-goog-api-key``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, TypeAlias
from urllib.parse import quote, urlsplit

from ..dialects.options import COMPATIBLE, NATIVE, WireOptions
from ..types import Dialect

HostKind: TypeAlias = Literal["openai", "azure", "codex", "openai-compatible", "anthropic", "gemini"]
WireAPI: TypeAlias = Literal["responses", "chat"]
"""The OpenAI wire a driver or backend is configured for (``api:``); see :mod:`modelwire.wires`."""
Endpoint: TypeAlias = Literal[
    "responses",
    "chat",
    "embeddings",
    "models",
    "response",
    "messages",
    "count_tokens",
    "generate",
    "stream_generate",
    "count_gemini_tokens",
    "embed_content",
    "batch_embed",
]
Auth: TypeAlias = Literal["bearer", "azure", "x-api-key", "x-goog-api-key"]
MediaEndpoint: TypeAlias = Literal[
    "images.generations",
    "images.edits",
    "audio.speech",
    "audio.transcriptions",
    "audio.translations",
    "videos",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"
CODEX_BASE_URL = "https://chatgpt.com/backend-api/codex"
CODEX_CONTEXT_CAP = 272_000
CODEX_REF = "openai-codex/"  # a model ref that picks the Codex route: openai-codex/gpt-5.5
ANTHROPIC_BASE_URL = "https://api.anthropic.com"
GEMINI_BASE_URL = "https://generativelanguage.googleapis.com"
ANTHROPIC_VERSION = "2023-06-01"
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
    "messages": "/v1/messages",
    "count_tokens": "/v1/messages/count_tokens",
    "generate": "/v1beta/models/{model}:generateContent",
    "stream_generate": "/v1beta/models/{model}:streamGenerateContent?alt=sse",
    "count_gemini_tokens": "/v1beta/models/{model}:countTokens",
    "embed_content": "/v1beta/models/{model}:embedContent",
    "batch_embed": "/v1beta/models/{model}:batchEmbedContents",
}

# Media endpoints (docs/media.md). Azure serves images and audio on deployment paths like chat,
# and videos only on its /openai/v1 surface.
_MEDIA_PATHS: dict[MediaEndpoint, str] = {
    "images.generations": "/images/generations",
    "images.edits": "/images/edits",
    "audio.speech": "/audio/speech",
    "audio.transcriptions": "/audio/transcriptions",
    "audio.translations": "/audio/translations",
    "videos": "/videos",
}
AZURE_IMAGE_TIMEOUT = 600.0  # Azure image calls send nothing until the image is done


@dataclass(frozen=True, slots=True)
class HostProfile:
    """What one kind of host is: its wires, its auth, and the OpenAI extras it takes."""

    wires: tuple[Dialect, ...]  # the wires it speaks; the first is the default
    auth: Auth
    default_base_url: str
    key_env: str  # where a key comes from when none is given
    native_fields: bool = False  # OpenAI-only fields: store, service tier, prompt cache key, include
    stateful: bool = False  # stores what it served and resolves previous_response_id itself
    strict_tools: bool = False  # function schemas made strict
    compaction: bool = False  # server-side context compaction
    service_tiers: bool = False  # "fast" means the priority tier
    websocket: bool = False  # offers Responses over WebSocket (PROTOCOLS.md 2.7)
    realtime: bool = False  # serves the Realtime API (``/realtime`` WebSocket, client secrets)
    metadata: bool = True  # takes the request's ``metadata`` (the Codex route refuses it)
    forwards_bodies: bool = True  # a client's body can go as it came (Codex needs rewriting)
    embeddings: bool = False
    openai_model_names: bool = False  # models go by OpenAI's names (not an operator's deployments)
    lists_models: bool = True  # GET /models in OpenAI's shape
    codex_catalog: bool = False  # GET /models?client_version= in the Codex backend's shape
    context_cap: int | None = None  # the context every model gets here, below its own window
    streams_only: bool = False  # answers only streamed requests
    signs_in: bool = False  # OAuth tokens from a sign-in rather than a key
    filter_chunks: bool = False  # stream chunks carrying only content-filter verdicts
    extra_headers: tuple[tuple[str, str], ...] = ()

    @property
    def options(self) -> WireOptions:
        return NATIVE if self.native_fields else COMPATIBLE


_OPENAI_WIRES: tuple[Dialect, ...] = ("openai_responses", "openai_chat")
PROFILES: dict[HostKind, HostProfile] = {
    "openai": HostProfile(
        wires=_OPENAI_WIRES,
        auth="bearer",
        default_base_url=OPENAI_BASE_URL,
        key_env="OPENAI_API_KEY",
        native_fields=True,
        stateful=True,
        strict_tools=True,
        compaction=True,
        service_tiers=True,
        websocket=True,
        realtime=True,
        embeddings=True,
        openai_model_names=True,
    ),
    "azure": HostProfile(
        wires=_OPENAI_WIRES,
        auth="azure",
        default_base_url=OPENAI_BASE_URL,
        key_env="AZURE_OPENAI_API_KEY",
        native_fields=True,
        stateful=True,
        strict_tools=True,
        compaction=True,
        service_tiers=True,
        websocket=True,  # on the /openai/v1 surface (Azure's WebSocket-mode guide); see Host
        realtime=True,
        embeddings=True,
        filter_chunks=True,
    ),
    "codex": HostProfile(
        wires=("openai_responses",),
        auth="bearer",
        default_base_url=CODEX_BASE_URL,
        key_env="OPENAI_API_KEY",
        native_fields=True,
        strict_tools=True,
        service_tiers=True,
        websocket=True,
        # "Unsupported parameter: metadata" (third-party reports of the subscription backend)
        metadata=False,
        forwards_bodies=False,
        lists_models=False,
        codex_catalog=True,
        # The route runs models at this window (gpt-5.5 takes about 1M tokens on the API).
        context_cap=CODEX_CONTEXT_CAP,
        streams_only=True,
        signs_in=True,
        openai_model_names=True,
    ),
    "openai-compatible": HostProfile(
        wires=("openai_chat", "openai_responses"),
        auth="bearer",
        default_base_url=OPENAI_BASE_URL,
        key_env="OPENAI_API_KEY",
        realtime=True,  # a server that speaks OpenAI's wire may serve its Realtime API too
        embeddings=True,
    ),
    "anthropic": HostProfile(
        wires=("anthropic_messages",),
        auth="x-api-key",
        default_base_url=ANTHROPIC_BASE_URL,
        key_env="ANTHROPIC_API_KEY",
        lists_models=False,
        extra_headers=(("anthropic-version", ANTHROPIC_VERSION),),
    ),
    "gemini": HostProfile(
        wires=("gemini",),
        auth="x-goog-api-key",
        default_base_url=GEMINI_BASE_URL,
        key_env="GEMINI_API_KEY",
        lists_models=False,
        embeddings=True,
    ),
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
    if host == "api.anthropic.com":
        return "anthropic"
    if host == "generativelanguage.googleapis.com":
        return "gemini"
    return "openai-compatible"


@dataclass(frozen=True, slots=True)
class Host:
    kind: HostKind
    base_url: str
    api_version: str | None = None
    # The kind's profile, read several times per call: an attribute, not a lookup each time.
    profile: HostProfile = field(init=False, repr=False, compare=False)
    # Each model's URL per endpoint, made once: every call asks (bounded, models are callers' strings).
    _urls: dict[tuple[Endpoint, str], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "profile", PROFILES[self.kind])
        object.__setattr__(self, "_urls", {})

    @classmethod
    def create(cls, kind: HostKind | None, base_url: str | None, api_version: str | None = None) -> Host:
        if kind is None:
            kind = detect_kind(base_url) if base_url else "openai"
        profile = PROFILES[kind]
        base = (base_url or profile.default_base_url).rstrip("/")
        if profile.auth == "azure" and not base.endswith("/v1"):
            api_version = (
                api_version or os.environ.get("AZURE_OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION
            )
            base = base.removesuffix("/openai")
        elif profile.auth != "azure":
            api_version = None
        return cls(kind=kind, base_url=base, api_version=api_version)

    @property
    def deployment_paths(self) -> bool:
        """Classic Azure: models are deployments named in the path, with ``api-version``."""
        return self.api_version is not None

    @property
    def offers_websocket(self) -> bool:
        """Whether ``transport="auto"`` tries Responses over WebSocket here. Azure documents its
        WebSocket mode on the ``/openai/v1`` surface only, so classic deployment paths use SSE."""
        return self.profile.websocket and not self.deployment_paths

    @property
    def websocket_url(self) -> str:
        """The Responses URL with ``ws``/``wss`` for ``http``/``https``, query kept, as the official
        SDK builds it from its base URL (PROTOCOLS.md 2.7)."""
        url = self.url("responses")
        return "ws" + url.removeprefix("http") if url.startswith("http") else url

    def realtime_url(self, model: str) -> str:
        """The Realtime WebSocket for ``model`` (docs/realtime.md): ``/realtime?model=``, or on
        classic Azure ``/openai/realtime?api-version=&deployment=``, with ``ws``/``wss``."""
        name = quote(model, safe="")
        if self.deployment_paths:
            url = f"{self.base_url}/openai/realtime?api-version={self.api_version}&deployment={name}"
        else:
            url = f"{self.base_url}/realtime?model={name}"
        return "ws" + url.removeprefix("http") if url.startswith("http") else url

    def realtime_secrets_url(self, endpoint: str = "client_secrets") -> str:
        """Where ephemeral Realtime secrets are minted (``client_secrets``, or the older
        ``transcription_sessions``); Azure: on its ``/openai/v1`` surface."""
        base = f"{self.base_url}/openai/v1" if self.deployment_paths else self.base_url
        return f"{base}/realtime/{endpoint}"

    def url(self, endpoint: Endpoint, model: str = "", suffix: str = "") -> str:
        """The full URL of ``endpoint`` (for ``response``, ``suffix`` is the id and sub-path)."""
        if suffix:  # an id: made each time, not remembered
            return self._url(endpoint, model, suffix)
        url = self._urls.get((endpoint, model))
        if url is None:
            url = self._url(endpoint, model, "")
            if len(self._urls) < 4096:
                self._urls[(endpoint, model)] = url
        return url

    def _url(self, endpoint: Endpoint, model: str, suffix: str) -> str:
        path = _PATHS[endpoint] + suffix
        if "{model}" in path:
            path = path.replace("{model}", model)
        if not self.deployment_paths:
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

    def media_url(self, endpoint: MediaEndpoint, model: str, suffix: str = "") -> str:
        """The URL of a media endpoint (``suffix``: an id, a sub-path, a query)."""
        path = _MEDIA_PATHS[endpoint] + suffix
        if not self.deployment_paths:
            return self.base_url + path
        if endpoint == "videos":
            return f"{self.base_url}/openai/v1{path}"
        path, _, query = path.partition("?")
        query = f"&{query}" if query else ""
        return f"{self.base_url}/openai/deployments/{model}{path}?api-version={self.api_version}{query}"

    def auth_headers(self, key: str | None) -> dict[str, str]:
        profile = self.profile
        headers = dict(profile.extra_headers)
        if not key:
            return headers
        if profile.auth == "azure" and not key.startswith("eyJ"):  # Entra ID tokens are JWTs: Bearer
            headers["api-key"] = key
        elif profile.auth in ("x-api-key", "x-goog-api-key"):
            headers[profile.auth] = key
        else:
            headers["Authorization"] = f"Bearer {key}"
        return headers
