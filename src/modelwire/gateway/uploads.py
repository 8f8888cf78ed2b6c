"""Multipart uploads relayed upstream without holding them in memory.

How: the client's ``multipart/form-data`` body is read as it arrives and each chunk is appended
to a spool (a temporary file that stays in memory up to :data:`SPOOL_IN_MEMORY`, then lives on
disk) while a small incremental parser walks its parts. Text parts (``model``, ``prompt``,
``language`` …) are kept, bounded in size; file parts are only counted and hashed (SHA-256, for
the wire capture). The body sent upstream is the client's own bytes, **re-encoded on the fly**
with one edit: the ``model`` part's value replaced by the route's upstream model (or a ``model``
part inserted when the client sent none). Each attempt replays what is spooled, then keeps
reading the client; so the first attempt streams the upload through as it arrives, and a failover
to another target replays it from the spool, never from memory.

Routing needs the small fields first: admission reads until the ``model`` part is complete and a
file part has begun (the official SDKs send text fields first), or to the end of the form (curl
may send the file first; the spool takes it meanwhile).

Limits: the whole body is bounded (413 before anything goes upstream when ``Content-Length``
says so, else as soon as it grows past the limit); a malformed body is a 400 saying what is wrong.
"""

from __future__ import annotations

import asyncio
import email.message
import hashlib
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import InvalidRequestError, ModelwireError
from .http import BodyTooLarge, Receive, _size

SPOOL_IN_MEMORY = 1024 * 1024  # the spool moves to disk past this
READ_CHUNK = 256 * 1024  # replayed from the spool this much at a time
MAX_FIELD_BYTES = 64 * 1024  # one text part
MAX_HEADER_BYTES = 16 * 1024  # one part's headers
MAX_FIELDS = 64  # text parts in one form


@dataclass(slots=True)
class FilePart:
    """A file the client uploaded, as the gateway saw it pass (never its bytes)."""

    name: str
    filename: str
    content_type: str
    start: int = 0  # where its bytes lie in the client's body
    end: int = 0
    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256, repr=False)

    def summary(self) -> dict[str, object]:
        """What the wire capture records instead of the file."""
        return {
            "field": self.name,
            "filename": self.filename,
            "content_type": self.content_type,
            "bytes": self.size,
            "sha256": self.digest.hexdigest(),
        }


def malformed(problem: str) -> InvalidRequestError:
    return InvalidRequestError(f"malformed multipart body: {problem}", code="invalid_multipart")


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type, or a 400 saying what is wrong."""
    value = (content_type or b"").decode("latin-1")
    message = email.message.Message()
    message["content-type"] = value
    if message.get_content_type() != "multipart/form-data":
        raise InvalidRequestError(
            f"this endpoint takes multipart/form-data, not {value.split(';')[0] or 'an untyped body'}",
            code="invalid_content_type",
        )
    boundary = message.get_param("boundary")
    if not isinstance(boundary, str) or not 0 < len(boundary) <= 70:
        raise malformed("its content type names no boundary")
    return boundary.encode("latin-1")


class _Parser:
    """Walks a multipart body fed in chunks, tracking absolute offsets; calls back into the
    :class:`Upload` for each part's start, data and end."""

    def __init__(self, boundary: bytes, upload: Upload) -> None:
        self.opening = b"--" + boundary
        self.delimiter = b"\r\n--" + boundary
        self.upload = upload
        self.buf = b""
        self.at = 0  # absolute offset of buf[0]
        self.state = "preamble"

    def feed(self, data: bytes) -> None:
        self.buf += data
        while self._step():
            pass

    def finish(self) -> None:
        if self.state != "end":
            raise malformed("it ends before its closing boundary")

    def _consume(self, n: int) -> None:
        self.buf = self.buf[n:]
        self.at += n

    def _step(self) -> bool:
        """One move of the state machine; False when it needs more bytes."""
        buf = self.buf
        if self.state == "preamble":
            i = buf.find(self.opening)
            if i < 0:
                self._consume(max(0, len(buf) - len(self.opening)))
                return False
            self.upload.first_delimiter = self.at + i
            self._consume(i + len(self.opening))
            self.state = "delimited"
        elif self.state == "delimited":
            if len(buf) < 2:
                return False
            if buf.startswith(b"--"):
                self.state = "end"
            elif buf.startswith(b"\r\n"):
                self._consume(2)
                self.state = "headers"
            else:
                raise malformed("a boundary is followed by neither a line break nor '--'")
        elif self.state == "headers":
            i = buf.find(b"\r\n\r\n")
            if i < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise malformed("a part's headers are too long")
                return False
            self.upload.part_started(_part_headers(buf[:i]), self.at + i + 4)
            self._consume(i + 4)
            self.state = "body"
        elif self.state == "body":
            i = buf.find(self.delimiter)
            if i < 0:
                keep = len(self.delimiter) - 1
                if len(buf) > keep:
                    self.upload.part_data(buf[: len(buf) - keep])
                    self._consume(len(buf) - keep)
                return False
            self.upload.part_data(buf[:i])
            self.upload.part_ended(self.at + i)
            self._consume(i + len(self.delimiter))
            self.state = "delimited"
        else:  # the epilogue, ignored
            self._consume(len(buf))
            return False
        return True


def _part_headers(raw: bytes) -> tuple[str, str | None, str]:
    """A part's field name, filename (None for a text part) and content type."""
    message = email.message.Message()
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        name, sep, value = line.partition(":")
        if sep:
            message[name.strip()] = value.strip()
    if message.get_content_disposition() != "form-data":
        raise malformed("a part has no 'Content-Disposition: form-data' header")
    field_name = message.get_param("name", header="content-disposition")
    if not isinstance(field_name, str) or not field_name:
        raise malformed("a part has no field name")
    filename = message.get_filename()
    return field_name, filename, message.get_content_type() if "content-type" in message else ""


class Upload:
    """One client's multipart body: its text fields, its files' summaries, and its bytes replayable
    upstream with the model edited (see the module docstring)."""

    def __init__(
        self, receive: Receive, content_type: bytes | None, limit: int, declared: bytes | None
    ) -> None:
        boundary = boundary_of(content_type)
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        self.boundary = boundary
        self.limit = limit
        self.fields: dict[str, str] = {}
        self.files: list[FilePart] = []
        self.first_delimiter: int | None = None
        self.model_span: tuple[int, int] | None = None  # where the client's model value lies
        self.size = 0
        self.done = False
        # What ended the client's body early (too large, malformed, the client gone), for the attempt
        # to raise instead of the upstream error it causes.
        self.error: BaseException | None = None
        self._receive = receive
        self._parser = _Parser(boundary, self)
        self._spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        self._text: tuple[str, int, bytearray] | None = None  # the text part being read
        self._file: FilePart | None = None
        self._lock = asyncio.Lock()
        self._attempt = 0

    # -------------------------------------------------------------------------- reading

    async def read_head(self) -> None:
        """Read until the fields that route the request are known (see the module docstring)."""
        while not self.done and not (self.model_span is not None and self.files):
            await self._pull()

    async def read_all(self) -> None:
        while not self.done:
            await self._pull()

    async def _pull(self) -> None:
        """One message of the client's body: spooled, parsed, bounded."""
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away while sending")
        chunk = message.get("body", b"")
        if chunk:
            self.size += len(chunk)
            if self.size > self.limit:
                raise _too_large(self.limit)
            self._spool.seek(0, 2)
            self._spool.write(chunk)
            self._parser.feed(chunk)
        if not message.get("more_body", False):
            self._parser.finish()
            self.done = True

    # --------------------------------------------------------------- parser callbacks

    def part_started(self, headers: tuple[str, str | None, str], body_at: int) -> None:
        name, filename, content_type = headers
        if filename is None and not content_type.startswith("application/octet-stream"):
            if len(self.fields) >= MAX_FIELDS:
                raise malformed(f"more than {MAX_FIELDS} text fields")
            self._text = (name, body_at, bytearray())
        else:
            self._file = FilePart(name, filename or "", content_type, start=body_at)
            self.files.append(self._file)

    def part_data(self, data: bytes) -> None:
        if self._file is not None:
            self._file.size += len(data)
            self._file.digest.update(data)
        elif self._text is not None:
            value = self._text[2]
            value += data
            if len(value) > MAX_FIELD_BYTES:
                raise InvalidRequestError(
                    f"{self._text[0]}: longer than {MAX_FIELD_BYTES // 1024} KiB", param=self._text[0]
                )

    def part_ended(self, end: int) -> None:
        if self._text is not None:
            name, start, value = self._text
            self.fields[name] = value.decode("utf-8", "replace")
            if name == "model":
                self.model_span = (start, end)
        if self._file is not None:
            self._file.end = end
        self._text = self._file = None

    # ------------------------------------------------------------------------ re-encoding

    async def body(self, model: str) -> AsyncIterator[bytes]:
        """The body for one attempt: the client's bytes with ``model`` as the model part's value.
        A later attempt supersedes this one (which then stops reading the client)."""
        self._attempt += 1
        mine = self._attempt
        value = model.encode()
        if self.model_span is not None:
            start, end = self.model_span
            insert = value
        else:
            start = end = self.first_delimiter or 0
            insert = (
                b"--"
                + self.boundary
                + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\n'
                + value
                + b"\r\n"
            )
        async for piece in self._replay(0, start, mine):
            yield piece
        yield insert
        async for piece in self._replay(end, None, mine):
            yield piece

    async def _replay(self, pos: int, stop: int | None, mine: int) -> AsyncIterator[bytes]:
        """Spooled bytes from ``pos`` to ``stop`` (None: to the end of the body, reading the client
        as needed)."""
        while stop is None or pos < stop:
            spooled = self.size
            if pos < spooled:
                n = min(READ_CHUNK, spooled - pos, (stop - pos) if stop is not None else READ_CHUNK)
                self._spool.seek(pos)
                piece = self._spool.read(n)
                pos += len(piece)
                yield piece
                continue
            if self.done:
                return
            async with self._lock:
                if mine != self._attempt:
                    return
                if pos >= self.size and not self.done:
                    try:
                        await self._pull()
                    except (ModelwireError, ConnectionResetError) as err:
                        self.error = err
                        raise

    async def file_bytes(self, part: FilePart) -> bytes:
        """A file's bytes from the spool (for routes that must inline it; bounded by the limit)."""
        await self.read_all()
        self._spool.seek(part.start)
        return self._spool.read(part.end - part.start)

    def close(self) -> None:
        self._spool.close()


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(
        f"the upload is larger than this endpoint accepts ({_size(limit)})", code="request_too_large"
    )
