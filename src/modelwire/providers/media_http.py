"""What the media APIs (images, audio, videos) share: where each modality goes, a multipart body
streamed from files without reading them whole, one request with the driver's retries, and a
streamed answer written to a file.

Per-modality base URLs: ``OpenAI(base_urls={"audio.speech": url, ...})``, or the environment
variables below, send one modality elsewhere (a local TTS server, another Azure resource) with
the driver's key. Such a URL someone configured apart from the main host is refused when it
resolves to a private or loopback address, unless ``allow_private_urls=True``.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeAlias

import orjson

from ..errors import InvalidRequestError, ModelwireError, ProtocolError
from ..observe import RequestSent, RetryScheduled
from .addresses import refuse_private
from .driver import observed_call, read_json
from .hosts import AZURE_IMAGE_TIMEOUT, Host, MediaEndpoint
from .transport import Body, Reply

if TYPE_CHECKING:
    from .openai import OpenAI

Modality: TypeAlias = Literal["images", "audio.speech", "audio.transcriptions", "videos"]
MODALITIES: tuple[Modality, ...] = ("images", "audio.speech", "audio.transcriptions", "videos")
# Where a modality's base URL comes from when ``base_urls`` does not name it.
BASE_URL_ENV: dict[Modality, str] = {
    "images": "OPENAI_IMAGE_BASE_URL",
    "audio.speech": "OPENAI_TTS_BASE_URL",
    "audio.transcriptions": "OPENAI_STT_BASE_URL",  # translations too
    "videos": "OPENAI_VIDEO_BASE_URL",
}
CHUNK = 256 * 1024  # read and write files in pieces of this size

FileInput: TypeAlias = "str | os.PathLike[str] | bytes | IO[bytes] | tuple[str, bytes | IO[bytes]]"
Progress: TypeAlias = Callable[[int, int | None], None]  # (bytes so far, total when known)


# -------------------------------------------------------------------------------- multipart


@dataclass(slots=True)
class FilePart:
    """One file of a form: a path (opened per attempt), bytes, or an open binary file."""

    field: str
    filename: str
    content_type: str
    source: Path | bytes | IO[bytes]
    size: int | None
    start: int = 0  # where a file object's data begins (it is rewound there for a retry)

    @classmethod
    def of(cls, field: str, value: FileInput) -> FilePart:
        name, source = value if isinstance(value, tuple) else (None, value)
        if isinstance(source, str | os.PathLike):
            path = Path(source)
            if not path.is_file():
                raise InvalidRequestError(f"{path} is not a file", param=field)
            return cls(field, name or path.name, _media_type(name or path.name), path, path.stat().st_size)
        if isinstance(source, bytes):
            filename = name or field
            return cls(field, filename, _media_type(filename), source, len(source))
        filename = name or Path(str(getattr(source, "name", field))).name
        size, start = _remaining(source)
        return cls(field, filename, _media_type(filename), source, size, start)

    async def chunks(self) -> AsyncIterator[bytes]:
        if isinstance(self.source, bytes):
            yield self.source
            return
        if isinstance(self.source, Path):
            with self.source.open("rb") as file:
                async for chunk in _read(file):
                    yield chunk
            return
        if self.source.seekable():
            self.source.seek(self.start)
        async for chunk in _read(self.source):
            yield chunk


async def _read(file: IO[bytes]) -> AsyncIterator[bytes]:
    while chunk := await asyncio.to_thread(file.read, CHUNK):
        yield chunk


def _remaining(file: IO[bytes]) -> tuple[int | None, int]:
    """(bytes left to read, current position) of a file object; size None when it cannot seek."""
    try:
        if not file.seekable():
            return None, 0
        start = file.tell()
        end = file.seek(0, os.SEEK_END)
        file.seek(start)
        return end - start, start
    except (OSError, ValueError):
        return None, 0


def _media_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


def form_fields(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Request settings as form fields: None left out, booleans as ``true``/``false``, lists as
    repeated ``name[]`` fields (the encoding the OpenAI SDKs use)."""
    fields: list[tuple[str, str]] = []
    for name, value in params.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            fields += [(f"{name}[]", _form_value(item)) for item in value]
        else:
            fields.append((name, _form_value(value)))
    return fields


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return orjson.dumps(value).decode()
    return str(value)


class Multipart:
    """A ``multipart/form-data`` body made on the fly from fields and files, never held whole.

    Its length is known (and sent as ``Content-Length``) when every file's size is; a file object
    that cannot seek makes the body chunked and the request not retryable (it cannot be re-read).
    """

    def __init__(self, fields: list[tuple[str, str]], files: list[FilePart]) -> None:
        self.boundary = uuid.uuid4().hex
        self.fields = fields
        self.files = files
        self.sent = 0  # body bytes handed to the transport by the current attempt

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def replayable(self) -> bool:
        return all(isinstance(f.source, Path | bytes) or f.source.seekable() for f in self.files)

    @property
    def length(self) -> int | None:
        sizes = [f.size for f in self.files]
        if any(size is None for size in sizes):
            return None
        fields = sum(len(self._field(name, value)) for name, value in self.fields)
        heads = sum(len(self._head(part)) + 2 for part in self.files)  # + the CRLF after each file
        return fields + heads + sum(size or 0 for size in sizes) + len(self._end())

    def _field(self, name: str, value: str) -> bytes:
        head = f'--{self.boundary}\r\nContent-Disposition: form-data; name="{_quote(name)}"\r\n\r\n'
        return head.encode() + value.encode() + b"\r\n"

    def _head(self, part: FilePart) -> bytes:
        disposition = f'form-data; name="{_quote(part.field)}"; filename="{_quote(part.filename)}"'
        head = f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n"
        return (head + f"Content-Type: {part.content_type}\r\n\r\n").encode()

    def _end(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    async def body(self, on_progress: Progress | None = None) -> AsyncIterator[bytes]:
        """The body, read from the files as it is sent; ``on_progress`` sees the upload advance."""
        self.sent = 0
        total = self.length
        for piece in self._pieces():
            async for chunk in piece:
                self.sent += len(chunk)
                if on_progress is not None:
                    on_progress(self.sent, total)
                yield chunk

    def _pieces(self) -> list[AsyncIterator[bytes]]:
        pieces = [_once(b"".join(self._field(n, v) for n, v in self.fields))]
        for part in self.files:
            pieces += [_once(self._head(part)), part.chunks(), _once(b"\r\n")]
        return [*pieces, _once(self._end())]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


# ------------------------------------------------------------------------------ the requests


class MediaHTTP:
    """One driver's media requests: hosts per modality, auth, timeouts and retries."""

    def __init__(
        self, driver: OpenAI, base_urls: Mapping[str, str] | None = None, *, allow_private_urls: bool = False
    ) -> None:
        self.driver = driver
        self.allow_private_urls = allow_private_urls
        unknown = set(base_urls or {}) - set(MODALITIES)
        if unknown:
            raise InvalidRequestError(
                f"unknown base_urls keys {sorted(unknown)}; use {', '.join(MODALITIES)}", param="base_urls"
            )
        self.hosts: dict[Modality, Host] = {}
        self.custom: set[Modality] = set()
        for modality in MODALITIES:
            url = (base_urls or {}).get(modality) or os.environ.get(BASE_URL_ENV[modality])
            if url:
                self.hosts[modality] = Host.create(None, url, driver.host.api_version)
                self.custom.add(modality)
            else:
                self.hosts[modality] = driver.host
        self._checked: set[Modality] = set()

    async def _host(self, modality: Modality) -> Host:
        host = self.hosts[modality]
        if host.profile.signs_in:
            raise InvalidRequestError("the Codex subscription route serves no media endpoints", param="model")
        if modality in self.custom and modality not in self._checked:
            hint = f"pass allow_private_urls=True to send {modality} there"
            await refuse_private(host.base_url, allow=self.allow_private_urls, hint=hint)
            self._checked.add(modality)
        return host

    async def _auth(self, modality: Modality, host: Host) -> dict[str, str]:
        """The driver's own auth, or the driver's key in the way a modality's own host takes it
        (``api-key`` for an Azure resource)."""
        if modality in self.custom:
            return host.auth_headers(self.driver.api_key)
        return await self.driver._auth()

    def timeout(self, modality: Modality, host: Host, timeout: float | None) -> float:
        if timeout is not None:
            return timeout
        if modality == "images" and host.kind == "azure":
            return AZURE_IMAGE_TIMEOUT
        return self.driver.timeout

    async def send(
        self,
        modality: Modality,
        endpoint: MediaEndpoint,
        model: str,
        *,
        method: str = "POST",
        json: Mapping[str, Any] | None = None,
        form: Multipart | None = None,
        suffix: str = "",
        read_timeout: float | None = None,
        accept: str | None = None,
        on_progress: Progress | None = None,
    ) -> Reply:
        """One request, retried on the driver's policy until an answer with a success status."""
        host = await self._host(modality)
        url = host.media_url(endpoint, model, suffix)
        headers = {**self.driver._headers, **await self._auth(modality, host)}
        payload: bytes | None = orjson.dumps(json) if json is not None else None
        if form is not None:
            headers["Content-Type"] = form.content_type
            length = form.length
            if length is not None:
                headers["Content-Length"] = str(length)
        elif payload is None:
            headers.pop("Content-Type", None)
        if accept:
            headers["Accept"] = accept
        seconds = self.timeout(modality, host, read_timeout)
        observer = self.driver.observer
        shown = payload if form is None else f"<multipart, {form.length} bytes>"
        observer.payload("request", url, headers, shown)
        attempt = 0
        while True:
            observer.emit(RequestSent(url=url, model=model, api=endpoint, attempt=attempt, stream=False))
            body: Body = form.body(on_progress) if form is not None else payload
            try:
                return await observed_call(
                    self.driver.transport, observer, method, url, headers, body, seconds
                )
            except ModelwireError as err:
                wait = self.driver.retry.delay(attempt, err)
                if wait is None or (form is not None and not form.replayable):
                    raise
                observer.emit(RetryScheduled(attempt=attempt + 1, delay=wait, error=err))
                await asyncio.sleep(wait)
                attempt += 1

    async def json(self, reply: Reply) -> dict[str, Any]:
        return await read_json(reply, self.driver.observer)


async def stream_to_file(
    chunks: AsyncIterator[bytes],
    path: str | os.PathLike[str],
    *,
    total: int | None = None,
    on_progress: Progress | None = None,
) -> int:
    """Write a streamed answer to ``path`` through a ``.part`` file renamed at the end, so a cut
    download never leaves a file that looks whole; returns the bytes written. A path that is not a
    regular file (``/dev/null``, a pipe) is written in place: renaming over it would replace it."""
    target = Path(path)
    in_place = _not_a_regular_file(target)
    partial = target if in_place else target.with_name(target.name + ".part")
    written = 0
    try:
        with partial.open("wb") as file:
            async for chunk in chunks:
                file.write(chunk)
                written += len(chunk)
                if on_progress is not None:
                    on_progress(written, total)
        if total is not None and written != total:
            raise ProtocolError(f"the upstream's answer was cut off after {written} of {total} bytes")
        if not in_place:
            partial.replace(target)
    except BaseException:
        if not in_place:
            partial.unlink(missing_ok=True)
        raise
    return written


def _not_a_regular_file(path: Path) -> bool:
    return path.exists() and not path.is_file()


def content_length(reply: Reply) -> int | None:
    value = reply.headers.get("content-length", "")
    return int(value) if value.isdigit() else None
