"""One log line per request, and the gateway's log format.

Each answered request gets one INFO line on the ``modelwire.access`` logger: when, which request,
from whom (the real client address, behind trusted proxies), which key (by name), which surface,
the public model, the backend and upstream model that served it, the status, the latency, the time
to first token, tokens and cost, and an error code when it failed. ``text`` writes logfmt
(``name=value`` pairs, values quoted only when they must be, so a model name cannot forge a line);
``json`` writes one JSON object per line, and every other log line becomes JSON too.

Client-supplied strings (the model name, a client's ``x-request-id``) pass through
:func:`modelwire.observe.redact` first: a client that puts a key where a model name goes must not
get it written to the log. Never a secret: keys appear only by name.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import TYPE_CHECKING, Any, Literal

import orjson

from ..observe import redact

if TYPE_CHECKING:
    from .call import Call

LogFormat = Literal["text", "json"]
ACCESS = "modelwire.access"
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+\-\[\]]+")
_SAFE_LIMIT = 4096


class RequestLog:
    """Writes the per-request line; cheap enough to leave on (measured with the benchmark)."""

    __slots__ = ("_json", "_log", "_safe")

    def __init__(self, fmt: LogFormat = "text") -> None:
        self._json = fmt == "json"
        self._log = logging.getLogger(ACCESS)
        self._safe: dict[str, str] = {}

    def write(self, call: Call) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        fields = self.fields(call)
        if self._json:
            line = orjson.dumps(fields).decode()
        else:
            line = " ".join(f"{k}={_logfmt(v)}" for k, v in fields.items() if v is not None)
        self._log.info(line)

    def fields(self, call: Call) -> dict[str, Any]:
        usage = call.usage
        return {
            "time": _timestamp(time.time()),
            "request_id": self._clean(call.request_id),
            "client": call.client,
            "key": call.key.name if call.key else None,
            "surface": call.surface.dialect,
            "model": self._clean(call.model) if call.model else None,
            "backend": call.backend,
            "upstream_model": call.upstream_model,
            "status": call.status,
            "latency_ms": round((time.monotonic() - call.started) * 1000, 1),
            "ttft_ms": round(call.ttft * 1000, 1) if call.ttft is not None else None,
            "input_tokens": usage.input_tokens if usage else None,
            "output_tokens": usage.output_tokens if usage else None,
            "cost_usd": round(call.cost, 8) if call.cost else None,
            "error": call.error,
        }

    def _clean(self, value: str) -> str:
        """``value`` with anything key-like redacted, remembered (model names repeat)."""
        cleaned = self._safe.get(value)
        if cleaned is None:
            cleaned = redact(value)
            if len(self._safe) < _SAFE_LIMIT:
                self._safe[value] = cleaned
        return cleaned


def _logfmt(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if _PLAIN.fullmatch(text) else orjson.dumps(text).decode()


def _timestamp(now: float) -> str:
    seconds = int(now)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((now - seconds) * 1000):03d}Z"


class _JsonFormatter(logging.Formatter):
    """Every other log line as one JSON object too, so a log shipper parses one format."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": _timestamp(record.created),
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
    access = logging.getLogger(ACCESS)
    access.handlers[:] = [_bare_handler()]
    access.propagate = False
    # Alembic announces its plugins on every start; which migrations ran is what an operator wants.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.migration").setLevel(logging.INFO)


def _bare_handler() -> logging.Handler:
    """Request lines carry their own time and are already formatted (logfmt or JSON)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler
