"""One exception hierarchy for everything that can go wrong talking to a model.

::

    ModelwireError
    ├── AuthenticationError        401, bad or missing key
    ├── PermissionDeniedError      403
    ├── NotFoundError              404, unknown model or response id
    │   └── PreviousResponseNotFound
    ├── RateLimitError             429 (retry_after set when the server said)
    ├── InvalidRequestError        other 4xx
    │   ├── ContextLengthError     the input does not fit the model
    │   └── ContentFilterError     refused by a safety filter
    ├── UpstreamUnavailableError   5xx, 529, connection refused or reset
    ├── ServiceUnavailableError    503: the gateway itself cannot serve now (shutting down, its
    │                              store or Redis down, no upstream key configured)
    ├── TimeoutError               an attempt or the overall deadline ran out
    └── ProtocolError              the upstream answered something that is not its protocol

Upstream errors are classified once, by :func:`from_response`, where the transport meets the
driver; nothing above that layer looks at raw status codes.
"""

from __future__ import annotations

from typing import Any

import orjson


class ModelwireError(Exception):
    """Base class. ``status`` is the HTTP status a client should see; ``code`` and ``type`` are the
    upstream's own error code and type when it gave them."""

    status: int = 500
    retryable: bool = False
    default_type = "api_error"
    # Set by the gateway: the upstream that produced the error, for accounting.
    backend: str | None = None
    upstream_model: str | None = None
    hops: int = 0  # upstream attempts made before it, for the request log

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.code: str | None = code
        self.type: str = type or self.default_type
        self.param: str | None = param
        self.request_id: str | None = request_id
        self.retry_after: float | None = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status}, code={self.code!r})"


class AuthenticationError(ModelwireError):
    status = 401
    default_type = "authentication_error"


class PermissionDeniedError(ModelwireError):
    status = 403
    default_type = "permission_error"


class NotFoundError(ModelwireError):
    status = 404
    default_type = "not_found_error"


class PreviousResponseNotFound(NotFoundError):
    """The upstream no longer has the response a ``previous_response_id`` points at."""


class RateLimitError(ModelwireError):
    status = 429
    retryable = True
    default_type = "rate_limit_error"


class InvalidRequestError(ModelwireError):
    status = 400
    default_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    pass


class ContentFilterError(InvalidRequestError):
    pass


class UpstreamUnavailableError(ModelwireError):
    status = 502
    retryable = True
    default_type = "api_error"


class ServiceUnavailableError(ModelwireError):
    """Raised by the gateway about itself, never by an upstream: trying another target won't help."""

    status = 503
    default_type = "api_error"


class TimeoutError(ModelwireError):  # deliberately shadows the builtin inside modelwire.errors
    status = 504
    retryable = True
    default_type = "timeout_error"


class ProtocolError(ModelwireError):
    status = 502
    default_type = "api_error"


_BY_STATUS: dict[int, type[ModelwireError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}
_RETRYABLE_4XX = {408, 409}
_CONTEXT_CODES = {"context_length_exceeded", "string_above_max_length"}
_FILTER_CODES = {"content_filter", "content_policy_violation"}


def from_response(
    status: int,
    body: bytes,
    *,
    request_id: str | None = None,
    retry_after: float | None = None,
    content_type: str = "",
) -> ModelwireError:
    """Classify an upstream HTTP error response into the hierarchy."""
    fields = _error_fields(body)
    message = fields.get("message") or _fallback_message(status, body, content_type)
    if retry_after is None and b"RetryInfo" in body:
        retry_after = _google_retry_delay(body)
    code = fields.get("code")
    kwargs: dict[str, Any] = {
        "status": status,
        "code": code,
        "type": fields.get("type"),
        "param": fields.get("param"),
        "request_id": request_id,
        "retry_after": retry_after,
    }
    if status == 404 and code == "previous_response_not_found":
        return PreviousResponseNotFound(message, **kwargs)
    if b"API_KEY_INVALID" in body:  # Google reports a bad key as a 400
        return AuthenticationError(message, **{**kwargs, "status": 401})
    if status == 403 and _looks_like_html(body, content_type):
        # Cloudflare and similar edges answer 403 with an HTML page for transient blocks.
        err: ModelwireError = UpstreamUnavailableError(message, **kwargs)
        return err
    if code in _CONTEXT_CODES or "maximum context length" in message:
        return ContextLengthError(message, **kwargs)
    if code in _FILTER_CODES:
        return ContentFilterError(message, **kwargs)
    if status in _BY_STATUS:
        return _BY_STATUS[status](message, **kwargs)
    if status >= 500:
        return UpstreamUnavailableError(message, **kwargs)
    err = InvalidRequestError(message, **kwargs)
    if status in _RETRYABLE_4XX:
        err.retryable = True
    return err


def _error_fields(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-, Anthropic- or Google-shaped error body."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(doc, list) and doc and isinstance(doc[0], dict):
        doc = doc[0]
    if not isinstance(doc, dict):
        return {}
    error = doc.get("error", doc)
    if isinstance(error, str):
        return {"message": error}
    if not isinstance(error, dict):
        return {}
    out = {k: error.get(k) for k in ("message", "type", "param", "code")}
    if isinstance(out["code"], int):  # Google puts the HTTP status in code and the name in status
        out["code"] = error.get("status")
    out = {k: (str(v) if v is not None else None) for k, v in out.items()}
    return out


def _google_retry_delay(body: bytes) -> float | None:
    """Google says when to retry in the body: a ``RetryInfo`` detail with ``retryDelay: "30s"``."""
    try:
        details = orjson.loads(body)["error"]["details"]
        delay = next(d["retryDelay"] for d in details if str(d.get("@type", "")).endswith("RetryInfo"))
        return float(str(delay).removesuffix("s"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, StopIteration, AttributeError):
        return None


def _looks_like_html(body: bytes, content_type: str) -> bool:
    return "html" in content_type or body.lstrip()[:15].lower().startswith((b"<!doctype", b"<html"))


def _fallback_message(status: int, body: bytes, content_type: str) -> str:
    if _looks_like_html(body, content_type):
        return f"upstream answered HTTP {status} with an HTML page instead of JSON"
    snippet = body[:200].decode("utf-8", "replace").strip()
    return f"upstream answered HTTP {status}" + (f": {snippet}" if snippet else "")
