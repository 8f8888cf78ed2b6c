"""Observability: the events a driver reports, and the logging that debug and raw modes do.

Pass ``on_event`` to a driver to receive these; ``debug=True`` logs one line per event on the
``modelwire`` logger, ``raw=True`` also logs whole request and response payloads. Everything
logged goes through :func:`redact` first, so keys never reach a log.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from .types import Usage

log = logging.getLogger("modelwire")


@dataclass(slots=True, kw_only=True)
class RequestSent:
    url: str
    model: str
    api: str
    attempt: int
    stream: bool


@dataclass(slots=True, kw_only=True)
class ResponseReceived:
    status: int
    model: str
    latency: float
    request_id: str | None = None
    usage: Usage | None = None


@dataclass(slots=True, kw_only=True)
class RetryScheduled:
    attempt: int
    delay: float
    error: Exception


@dataclass(slots=True, kw_only=True)
class Continued:
    """A cut-off answer was continued with another call (``count`` so far)."""

    count: int
    reason: str
    response_id: str


@dataclass(slots=True, kw_only=True)
class Repaired:
    """The transcript's tool sequence was repaired before sending."""

    missing: list[tuple[str, str]] = field(
        default_factory=list
    )  # (call id, tool name) given a synthetic result
    dropped: list[str] = field(default_factory=list)  # call ids of results answering no call
    moved: list[str] = field(default_factory=list)  # call ids of results moved next to their call


@dataclass(slots=True, kw_only=True)
class ChainInvalidated:
    """The upstream lost ``previous_response_id``; the transcript was replayed instead."""

    previous_response_id: str


@dataclass(slots=True, kw_only=True)
class SocketOpened:
    """A WebSocket to the host was opened (Responses over WebSocket)."""

    url: str


@dataclass(slots=True, kw_only=True)
class FellBack:
    """A call's WebSocket attempts failed early; it went over SSE, and so will calls to this host
    for ``cooldown`` seconds."""

    error: Exception
    cooldown: float


@dataclass(slots=True, kw_only=True)
class StreamStarted:
    model: str


@dataclass(slots=True, kw_only=True)
class StreamEnded:
    usage: Usage | None


@dataclass(slots=True, kw_only=True)
class StreamAborted:
    error: BaseException


Event: TypeAlias = (
    RequestSent
    | ResponseReceived
    | RetryScheduled
    | Continued
    | Repaired
    | ChainInvalidated
    | SocketOpened
    | FellBack
    | StreamStarted
    | StreamEnded
    | StreamAborted
)
Hook: TypeAlias = Callable[[Event], None]


_SECRET_HEADERS = frozenset(
    {
        "authorization",
        "api-key",
        "x-api-key",
        "x-goog-api-key",
        "proxy-authorization",
        "cookie",
        "chatgpt-account-id",
    }
)
_SECRET_PATTERN = re.compile(
    r"(sk-[A-Za-z0-9_\-]{6,}|sess-[A-Za-z0-9]{6,}|AIza[0-9A-Za-z_\-]{20,}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-.]+"
    r"|(?<=[?&]key=)[^&\s\"']+|(?<=Bearer )[^\s\"']+)"
)


def redact(text: str) -> str:
    """``text`` with anything that looks like a key or token replaced by ``[REDACTED]``."""
    return _SECRET_PATTERN.sub("[REDACTED]", text)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: ("[REDACTED]" if k.lower() in _SECRET_HEADERS else redact(v)) for k, v in headers.items()}


Tap: TypeAlias = Callable[[str, str, Mapping[str, str], "bytes | str"], None]


class Observer:
    """Fans events out to the caller's hook and to the log, per the driver's modes. ``tap``
    receives every payload as it crosses the wire (the gateway's wire capture uses it)."""

    __slots__ = ("debug", "hook", "listening", "raw", "tap", "tapped")

    def __init__(
        self, hook: Hook | None = None, *, debug: bool = False, raw: bool = False, tap: Tap | None = None
    ) -> None:
        self.hook = hook
        self.debug = debug or raw
        self.raw = raw
        self.tap = tap
        # Read on every call (the hot path builds an event or hands a payload on only then):
        # attributes, set once, as nothing here changes after.
        self.listening = hook is not None or self.debug  # an event reaches a hook or the debug log
        self.tapped = tap is not None or raw  # a payload reaches a tap or the raw log

    def emit(self, event: Event) -> None:
        if self.debug:
            log.debug("%s", redact(repr(event)))
        if self.hook is not None:
            self.hook(event)

    def payload(self, direction: str, url: str, headers: Mapping[str, str], body: bytes | str | Any) -> None:
        """In raw mode, log a whole payload with every secret redacted; hand it to the tap."""
        if self.tap is not None:
            self.tap(direction, url, headers, body)
        if not self.raw:
            return
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
        log.debug("%s %s headers=%s body=%s", direction, redact(url), redact_headers(headers), redact(text))
