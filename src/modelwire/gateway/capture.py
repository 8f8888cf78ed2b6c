"""Opt-in wire capture: every request, response and stream chunk as JSON Lines, secrets removed.

The request path only snapshots what it was given and puts it on a queue; a writer thread does the
redaction, encoding and file I/O, so a slow disk never stalls the event loop. The queue is bounded
by count: when the writer falls that far behind, new records are dropped (and counted in
``dropped``) rather than letting memory grow.
"""

from __future__ import annotations

import base64
import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from ..observe import redact, redact_headers

log = logging.getLogger("modelwire.capture")

DIRECTIONS = frozenset(
    {
        "client_request",
        "upstream_request",
        "upstream_response",
        "upstream_chunk",
        "client_response",
        "client_chunk",
    }
)
EXTRA_SECRET_HEADERS = frozenset({"set-cookie", "x-auth-token", "x-access-token"})
"""Beyond what :func:`modelwire.observe.redact_headers` hides: responses carry cookies too."""

REDACTED = "[REDACTED]"
MAX_PENDING = 10_000
BATCH = 256

Payload = bytes | str | dict[str, Any] | list[Any] | None


class _Entry:
    """One record as the request path left it: cheap to build, immutable from here on."""

    __slots__ = (
        "backend",
        "body",
        "client",
        "direction",
        "headers",
        "is_json",
        "key_name",
        "request_id",
        "time",
        "url",
    )

    def __init__(
        self,
        direction: str,
        request_id: str,
        body: bytes | str | None,
        is_json: bool,
        backend: str | None,
        key_name: str | None,
        headers: dict[str, str] | None,
        url: str | None,
        client: str | None,
    ) -> None:
        self.time = time.time()
        self.direction = direction
        self.request_id = request_id
        self.body = body
        self.is_json = is_json
        self.backend = backend
        self.key_name = key_name
        self.headers = headers
        self.url = url
        self.client = client


class Capture:
    """JSON Lines of inbound and outbound requests, responses and stream chunks.

    Each line has ``time``, ``request_id``, ``direction`` (one of :data:`DIRECTIONS`), ``backend``,
    ``key_name`` (the client key's name, never the key), ``client`` (the client's address, on the
    request as it arrived), ``url``, ``headers`` and ``payload``.
    Never a secret: authorization, api-key, x-api-key, x-goog-api-key and cookie header values, and
    ``?key=`` query parameters, become ``[REDACTED]``, and anything the patterns of
    :func:`modelwire.observe.redact` recognise is redacted inside payload text. Bytes that are valid
    UTF-8 are stored as text; other bytes as base64 with ``"payload_base64": true`` (not redacted:
    binary is opaque). The file is created private (0600), as captures hold prompts and answers.

    When the file would exceed ``max_bytes`` it rotates to ``.1`` … ``.N`` (``N = backups``; with no
    backups the old lines are discarded). :meth:`close` flushes everything queued.
    """

    def __init__(self, path: str, *, max_bytes: int = 50 * 1024 * 1024, backups: int = 5) -> None:
        self.dropped = 0
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        self._closed = False
        self._writer = _Writer(path, max_bytes, backups)
        self._thread = threading.Thread(target=self._run, name="modelwire-capture", daemon=True)
        self._thread.start()

    def record(
        self,
        direction: str,
        *,
        request_id: str,
        payload: Payload,
        backend: str | None = None,
        key_name: str | None = None,
        headers: Mapping[str, str] | None = None,
        url: str | None = None,
        client: str | None = None,
    ) -> None:
        """Queue one record; returns at once. Dicts are serialised now so later mutation cannot leak in."""
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown capture direction {direction!r}; expected one of {sorted(DIRECTIONS)}")
        if self._closed or self._queue.qsize() >= MAX_PENDING:
            self.dropped += 1
            return
        body, is_json = _snapshot(payload)
        # Plain strings: HTTP libraries hand over str subclasses (aiohttp's istr) JSON cannot key by.
        copied = {str(k): str(v) for k, v in headers.items()} if headers is not None else None
        self._queue.put(_Entry(direction, request_id, body, is_json, backend, key_name, copied, url, client))

    def close(self) -> None:
        """Write everything queued, then close the file. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        """The writer thread: take whatever is queued, up to a batch, and write it in one go."""
        while True:
            entries, done = _drain(self._queue)
            if entries:
                self._write(entries)
            if done:
                self._writer.close()
                return

    def _write(self, entries: list[_Entry]) -> None:
        """Encode and write a batch; an entry that cannot be encoded is lost alone, and a failed
        write loses its batch, never the writer thread."""
        lines = []
        for entry in entries:
            try:
                lines.append(_encode(entry))
            except Exception:
                self.dropped += 1
                log.exception("capture: cannot encode an entry for request %s", entry.request_id)
        try:
            self._writer.write(lines)
        except Exception:
            self.dropped += len(lines)
            log.exception("capture: cannot write %d entries", len(lines))


def _drain(source: queue.SimpleQueue[_Entry | None]) -> tuple[list[_Entry], bool]:
    """Block for one entry, then take up to a batch without waiting; ``True`` once closing."""
    entries: list[_Entry] = []
    item = source.get()
    while item is not None:
        entries.append(item)
        if len(entries) >= BATCH:
            return entries, False
        try:
            item = source.get_nowait()
        except queue.Empty:
            return entries, False
    return entries, True


def _snapshot(payload: Payload) -> tuple[bytes | str | None, bool]:
    """The payload frozen for the writer; dicts and lists as JSON bytes (flagged to embed as JSON)."""
    if isinstance(payload, dict | list):
        return orjson.dumps(payload, default=str), True
    return payload, False


def _encode(entry: _Entry) -> bytes:
    """One JSON line, every field redacted."""
    line: dict[str, Any] = {
        "time": datetime.fromtimestamp(entry.time, UTC).isoformat(timespec="milliseconds"),
        "request_id": redact(entry.request_id),
        "direction": entry.direction,
        "backend": _maybe_redact(entry.backend),
        "key_name": _maybe_redact(entry.key_name),
        "client": entry.client,
        "url": _maybe_redact(entry.url),
        "headers": _headers(entry.headers),
    }
    line.update(_payload(entry.body, entry.is_json))
    return orjson.dumps(line) + b"\n"


def _maybe_redact(text: str | None) -> str | None:
    return None if text is None else redact(text)


def _headers(headers: dict[str, str] | None) -> dict[str, str] | None:
    if headers is None:
        return None
    clean = redact_headers(headers)
    for name in clean:
        if name.lower() in EXTRA_SECRET_HEADERS:
            clean[name] = REDACTED
    return clean


def _payload(body: bytes | str | None, is_json: bool) -> dict[str, Any]:
    """``payload`` as text or embedded JSON, or base64 with a flag when the bytes are not UTF-8."""
    if body is None:
        return {"payload": None}
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return {"payload": base64.b64encode(body).decode("ascii"), "payload_base64": True}
    else:
        text = body
    text = redact(text)
    if is_json:
        return {"payload": _embed(text)}
    return {"payload": text}


def _embed(text: str) -> Any:
    """Redacted JSON back to a value, to nest in the line.

    Redacting serialised JSON can, rarely, swallow the backslash of an escaped quote; the text is
    then kept as a string, still redacted.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class _Writer:
    """The file end: appends lines, rotating by size. Used only from the writer thread."""

    def __init__(self, path: str, max_bytes: int, backups: int) -> None:
        self._path = path
        self._max = max_bytes
        self._backups = backups
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def _open(self) -> int:
        return os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, lines: list[bytes]) -> None:
        """Write the lines, rotating first whenever the next line would overflow the file."""
        chunk: list[bytes] = []
        pending = 0
        for line in lines:
            if self._size + pending + len(line) > self._max and self._size + pending > 0:
                self._flush(chunk)
                chunk, pending = [], 0
                self._rotate()
            chunk.append(line)
            pending += len(line)
        self._flush(chunk)

    def _flush(self, chunk: list[bytes]) -> None:
        if not chunk:
            return
        data = b"".join(chunk)
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            log.warning("capture: cannot write %s: %s", self._path, exc.strerror or exc)
            return
        self._size += len(data)

    def _rotate(self) -> None:
        """``path`` → ``path.1`` → … → ``path.N``; the oldest falls off the end."""
        os.close(self._fd)
        try:
            if self._backups > 0:
                for n in range(self._backups - 1, 0, -1):
                    older = f"{self._path}.{n}"
                    if os.path.exists(older):
                        os.replace(older, f"{self._path}.{n + 1}")
                os.replace(self._path, f"{self._path}.1")
            else:
                os.remove(self._path)
        except OSError as exc:
            log.warning("capture: cannot rotate %s: %s", self._path, exc.strerror or exc)
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size

    def close(self) -> None:
        os.close(self._fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
