"""One log line per request, and the gateway's log format.

Each answered request gets one line on stderr (the ``modelwire.access`` logger's level decides
whether it is written: INFO): when, which request, from whom (the real client address, behind
trusted proxies), which key (by name), which surface, the public model, the backend and upstream
model that served it, the status, the latency, the time to first token, tokens and cost, and an
error code when it failed. ``text`` writes logfmt (``name=value`` pairs, values quoted only when
they must be, so a model name cannot forge a line); ``json`` writes one JSON object per line, and
every other log line becomes JSON too.

Client-supplied strings (the model name, a client's ``x-request-id``) pass through
:func:`modelwire.observe.redact` first: a client that puts a key where a model name goes must not
get it written to the log. Never a secret: keys appear only by name.

Cost matters here, as every request pays it: a line is built by hand (repeated strings quoted once
and remembered) and lines are written in batches, once per ``FLUSH_SECONDS`` or at shutdown, rather
than through a ``logging`` record and a write each (that measured 28 µs a line, ~8% of a proxied
request's CPU).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Literal

import orjson

from ..observe import redact

if TYPE_CHECKING:
    from .call import Call

LogFormat = Literal["text", "json"]
ACCESS = "modelwire.access"
FLUSH_SECONDS = 0.05
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+\-\[\]]+")
_MEMO_LIMIT = 4096


class RequestLog:
    """Builds each request's line and writes them in batches."""

    __slots__ = (
        "_clean",
        "_clock",
        "_json",
        "_logger",
        "_pending",
        "_quotes",
        "_routes",
        "_stream",
        "_timer",
    )

    def __init__(self, fmt: LogFormat = "text", stream: IO[str] | None = None) -> None:
        self._json = fmt == "json"
        self._logger = logging.getLogger(ACCESS)
        self._stream = stream
        self._quotes: dict[str, str] = {}  # text -> its logfmt value
        self._clean: dict[str, str] = {}  # a client's repeated text (model names) -> redacted
        self._routes: dict[tuple[str | None, ...], str] = {}  # (key, surface, model, …) -> their part
        self._pending: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._clock = _Clock()

    def write(self, call: Call) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        self._pending.append(self._json_line(call) if self._json else self._text_line(call))
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self._pending:
            lines, self._pending = self._pending, []
            stream = self._stream or sys.stderr
            stream.write("\n".join(lines) + "\n")
            stream.flush()

    def fields(self, call: Call) -> dict[str, Any]:
        """The line's fields, in order; absent ones are None."""
        usage = call.usage
        return {
            "time": self._clock(time.time()),
            "request_id": self._client_text(call.request_id),
            "client": call.client,  # an IP address (or "unknown"): never needs quoting
            "key": call.key.name if call.key else None,
            "surface": call.surface.label,
            "model": self._redacted(call.model) if call.model else None,
            "backend": call.backend,
            "upstream_model": self._redacted(call.upstream_model) if call.upstream_model else None,
            "status": call.status,
            "latency_ms": round((time.monotonic() - call.started) * 1000, 1),
            "ttft_ms": round(call.ttft * 1000, 1) if call.ttft is not None else None,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cost_usd": round(call.cost, 8) if call.cost else None,
            "error": call.error,
        }

    def _json_line(self, call: Call) -> str:
        return orjson.dumps(self.fields(call)).decode()

    def _text_line(self, call: Call) -> str:
        """The same fields as :meth:`fields`, in the same order. Who asked for what, and who served
        it, repeat from request to request: that part of the line is made once and remembered."""
        route = (
            call.key.name if call.key else None,
            call.surface.label,
            call.model,
            call.backend,
            call.upstream_model,
        )
        middle = self._routes.get(route)
        if middle is None:
            middle = self._route_part(*route)
        request_id = _logfmt(self._client_text(call.request_id))
        line = (
            f"time={self._clock(time.time())} request_id={request_id} client={call.client}{middle}"
            f" status={call.status} latency_ms={(time.monotonic() - call.started) * 1000:.1f}"
        )
        if call.ttft is not None:
            line += f" ttft_ms={call.ttft * 1000:.1f}"
        if call.usage is not None:
            line += f" input_tokens={call.usage.input_tokens} output_tokens={call.usage.output_tokens}"
        if call.cost:
            line += f" cost_usd={round(call.cost, 8)}"
        if call.error is not None:
            line += f" error={self._quoted(call.error)}"
        return line

    def _route_part(
        self, key: str | None, surface: str, model: str, backend: str | None, upstream: str | None
    ) -> str:
        q = self._quoted
        part = f" key={q(key)}" if key is not None else ""
        part += f" surface={surface}"
        part += f" model={q(self._redacted(model))}" if model else ""
        part += f" backend={q(backend)}" if backend is not None else ""
        part += f" upstream_model={q(self._redacted(upstream))}" if upstream else ""
        if len(self._routes) < _MEMO_LIMIT:
            self._routes[(key, surface, model, backend, upstream)] = part
        return part

    def _quoted(self, value: str) -> str:
        """``value`` as a logfmt value: bare when plain, else a JSON string (escapes newlines)."""
        return _remembered(self._quotes, value, _logfmt)

    def _redacted(self, value: str) -> str:
        """A client's repeated text (a model name) with anything key-shaped redacted."""
        return _remembered(self._clean, value, redact)

    @staticmethod
    def _client_text(value: str) -> str:
        """Text a client chose, with anything key-shaped redacted (the gateway's own ids are plain)."""
        if value.startswith("req_") and value[4:].isalnum():
            return value
        return redact(value)


def _logfmt(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else orjson.dumps(value).decode()


def _remembered(memo: dict[str, str], value: str, make: Callable[[str], str]) -> str:
    """``make(value)``, computed once per distinct value (up to a bound: clients choose values)."""
    made = memo.get(value)
    if made is None:
        made = make(value)
        if len(memo) < _MEMO_LIMIT:
            memo[value] = made
    return made


class _Clock:
    """ISO 8601 UTC with milliseconds; the part up to the second is made once a second."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")

    def __call__(self, now: float) -> str:
        second = int(now)
        if second != self._second[0]:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return "%s.%03dZ" % (self._second[1], (now - second) * 1000)  # noqa: UP031 (faster here)


class _JsonFormatter(logging.Formatter):
    """Every other log line as one JSON object too, so a log shipper parses one format."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _Clock()

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": self._clock(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def configure_logging(level: str, fmt: LogFormat) -> None:
    """The process's logging: request lines as they are, everything else with time, level, logger."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Alembic announces its plugins on every start; which migrations ran is what an operator wants.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)
