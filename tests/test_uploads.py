"""The multipart reader the media endpoints relay uploads through (gateway/uploads.py): fields and
files found in any chunking, the body re-encoded with only the model changed, replayed for a second
attempt, bounded, and malformed bodies refused naming what is wrong."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from modelwire.errors import InvalidRequestError
from modelwire.gateway.http import BodyTooLarge
from modelwire.gateway.uploads import Upload

BOUNDARY = "----mw-test-boundary"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}".encode()


def form(parts: list[tuple[str, bytes, str | None]], preamble: bytes = b"") -> bytes:
    out = preamble
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if filename:
            out += b"Content-Type: audio/wav\r\n"
        out += b"\r\n" + value + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def chunked(body: bytes, seed: int) -> Any:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(body):
        n = rng.randint(1, 97)
        pieces.append(body[i : i + n])
        i += n
    messages = [{"type": "http.request", "body": p, "more_body": True} for p in pieces]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    it = iter(messages)

    async def receive() -> dict[str, Any]:
        return next(it)

    return receive


async def read(body: bytes, seed: int = 1, limit: int = 10_000_000) -> Upload:
    upload = Upload(chunked(body, seed), CONTENT_TYPE, limit, None)
    await upload.read_head()
    return upload


async def drain(upload: Upload, model: str) -> bytes:
    return b"".join([piece async for piece in upload.body(model)])


AUDIO = bytes(range(256)) * 40 + b"\r\n--" + b"not-the-boundary"


@pytest.mark.parametrize("seed", range(6))
async def test_fields_files_and_the_model_replaced_in_any_chunking(seed: int) -> None:
    body = form([("model", b"public-name", None), ("language", b"en", None), ("file", AUDIO, "a.wav")])
    upload = await read(body, seed)
    assert upload.fields == {"model": "public-name", "language": "en"}
    sent = await drain(upload, "whisper-1")
    assert sent == body.replace(b"public-name", b"whisper-1")
    assert [f.summary() for f in upload.files] == [
        {
            "field": "file",
            "filename": "a.wav",
            "content_type": "audio/wav",
            "bytes": len(AUDIO),
            "sha256": hashlib.sha256(AUDIO).hexdigest(),
        }
    ]
    # A second attempt (failover) replays the same bytes from the spool.
    assert await drain(upload, "other") == body.replace(b"public-name", b"other")
    upload.close()


async def test_a_file_before_the_model_is_spooled_until_the_model_is_known() -> None:
    body = form([("file", AUDIO, "a.wav"), ("model", b"m", None)])
    upload = await read(body)
    assert upload.fields["model"] == "m" and upload.files[0].size == len(AUDIO)
    assert await drain(upload, "up") == body.replace(b"\r\n\r\nm\r\n", b"\r\n\r\nup\r\n")


async def test_a_missing_model_part_is_inserted_before_the_first_part() -> None:
    body = form([("file", AUDIO, "a.wav")], preamble=b"ignored preamble\r\n")
    upload = await read(body)
    sent = await drain(upload, "gpt-4o-transcribe")
    assert sent.startswith(b"ignored preamble\r\n--" + BOUNDARY.encode())
    assert b'name="model"\r\n\r\ngpt-4o-transcribe\r\n--' + BOUNDARY.encode() in sent
    assert sent.endswith(body.removeprefix(b"ignored preamble\r\n"))
    assert await upload.file_bytes(upload.files[0]) == AUDIO


async def test_too_large_is_413_and_a_declared_length_is_refused_before_reading() -> None:
    body = form([("model", b"m", None), ("file", AUDIO, "a.wav")])
    upload = await read(body, limit=len(body) + 10)
    assert upload.fields["model"] == "m"
    with pytest.raises(BodyTooLarge):
        await read(form([("file", AUDIO, "a.wav")]), limit=1000)
    with pytest.raises(BodyTooLarge):
        Upload(chunked(body, 1), CONTENT_TYPE, 1000, b"999999")


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (
            b"--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="a"\r\n\r\nx',
            CONTENT_TYPE,
            "ends before its closing boundary",
        ),
        (
            b"--"
            + BOUNDARY.encode()
            + b"\r\nContent-Type: text/plain\r\n\r\nx\r\n--"
            + BOUNDARY.encode()
            + b"--",
            CONTENT_TYPE,
            "Content-Disposition",
        ),
        (b"{}", b"application/json", "multipart/form-data"),
        (b"", b"multipart/form-data", "no boundary"),
    ],
)
async def test_malformed_bodies_are_refused_saying_why(body: bytes, content_type: bytes, says: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        upload = Upload(chunked(body, 2), content_type, 10_000, None)
        await upload.read_head()
    assert says in caught.value.message
    assert caught.value.status == 400
