"""Wire capture: JSON lines with every field, no secret ever written, size-based rotation."""

from __future__ import annotations

import base64
import json
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from modelwire.gateway.capture import Capture

SECRETS = [
    "sk-live-123456789abc",
    "xyzBearerSecret987",
    "AIzaSyA1234567890abcdefghijklmnop",
    "s3ssionCookieValue",
    "azureKey0123456789",
    "plainHeaderKeyValue42",
    "anotherTokenInPayload",
]


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "captures" / "wire.jsonl"


def test_each_line_is_json_with_every_field(path: Path) -> None:
    capture = Capture(str(path))
    capture.record(
        "client_request",
        request_id="req-1",
        payload={"model": "gpt-5.5", "input": "hi"},
        key_name="dev",
        headers={"content-type": "application/json"},
        url="http://127.0.0.1:8000/v1/responses",
    )
    capture.record(
        "upstream_chunk", request_id="req-1", payload=b'data: {"delta":"h\xc3\xa9"}\n\n', backend="openai"
    )
    capture.record("client_response", request_id="req-1", payload=None)
    capture.close()
    first, chunk, last = read_lines(path)
    assert set(first) >= {
        "time",
        "request_id",
        "direction",
        "backend",
        "key_name",
        "url",
        "headers",
        "payload",
    }
    assert first["request_id"] == "req-1" and first["direction"] == "client_request"
    assert first["key_name"] == "dev" and first["backend"] is None
    assert first["payload"] == {"model": "gpt-5.5", "input": "hi"}, "dicts are embedded as JSON"
    assert first["headers"] == {"content-type": "application/json"}
    assert datetime.fromisoformat(first["time"]).tzinfo is not None
    assert chunk["payload"] == 'data: {"delta":"hé"}\n\n', "UTF-8 bytes are stored as text"
    assert "payload_base64" not in chunk
    assert chunk["backend"] == "openai"
    assert last["payload"] is None


def test_secrets_never_reach_the_file(path: Path) -> None:
    capture = Capture(str(path))
    headers = {
        "Authorization": "Bearer xyzBearerSecret987",
        "x-api-key": "sk-live-123456789abc",
        "x-goog-api-key": "AIzaSyA1234567890abcdefghijklmnop",
        "Cookie": "session=s3ssionCookieValue",
        "api-key": "azureKey0123456789",
        "Set-Cookie": "session=s3ssionCookieValue; HttpOnly",
        "X-Api-Key": "plainHeaderKeyValue42",
    }
    url = "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent?key=AIzaSyA1234567890abcdefghijklmnop&alt=sse"
    capture.record(
        "upstream_request",
        request_id="r",
        payload={"note": "key sk-live-123456789abc"},
        headers=headers,
        url=url,
    )
    capture.record("client_request", request_id="r", payload="Authorization: Bearer anotherTokenInPayload")
    capture.record("upstream_response", request_id="r", payload=b'{"error": "bad key sk-live-123456789abc"}')
    capture.record(
        "client_chunk", request_id="r", payload=b"data: ?key=AIzaSyA1234567890abcdefghijklmnop\n\n"
    )
    capture.record("upstream_request", request_id="r", payload={"auth": 'Bearer xyzBearerSecret987"tail'})
    capture.close()
    raw = path.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in raw, secret
    lines = read_lines(path)
    assert lines[0]["headers"]["Authorization"] == "[REDACTED]"
    assert lines[0]["headers"]["Set-Cookie"] == "[REDACTED]"
    assert lines[0]["url"].endswith("?key=[REDACTED]&alt=sse")
    assert lines[0]["payload"] == {"note": "key [REDACTED]"}
    assert len(lines) == 5, "every line stays valid JSON, even when redaction meets an escaped quote"


def test_binary_payloads_are_base64_with_a_flag(path: Path) -> None:
    capture = Capture(str(path))
    blob = b"\x89PNG\r\n\x1a\n\xff\xfe"
    capture.record("upstream_response", request_id="r", payload=blob)
    capture.close()
    (line,) = read_lines(path)
    assert line["payload_base64"] is True
    assert base64.b64decode(line["payload"]) == blob


def test_a_dict_is_captured_as_it_was_when_recorded(path: Path) -> None:
    capture = Capture(str(path))
    body: dict[str, Any] = {"model": "a"}
    capture.record("client_request", request_id="r", payload=body)
    body["model"] = "changed"
    capture.close()
    assert read_lines(path)[0]["payload"] == {"model": "a"}


def test_unknown_direction_is_a_programming_error(path: Path) -> None:
    capture = Capture(str(path))
    try:
        with pytest.raises(ValueError, match="direction"):
            capture.record("sideways", request_id="r", payload=None)
    finally:
        capture.close()


def test_close_is_idempotent_and_later_records_are_dropped(path: Path) -> None:
    capture = Capture(str(path))
    capture.record("client_request", request_id="r", payload="one")
    capture.close()
    capture.close()
    capture.record("client_request", request_id="r", payload="two")
    assert capture.dropped == 1
    assert [line["payload"] for line in read_lines(path)] == ["one"]


def test_the_file_is_private(path: Path) -> None:
    capture = Capture(str(path))
    capture.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_many_records_all_arrive_in_order(path: Path) -> None:
    capture = Capture(str(path))
    for n in range(2000):
        capture.record("client_chunk", request_id=f"r{n}", payload=f"chunk {n}")
    capture.close()
    assert [line["request_id"] for line in read_lines(path)] == [f"r{n}" for n in range(2000)]


def record_many(path: Path, count: int, *, max_bytes: int, backups: int) -> None:
    capture = Capture(str(path), max_bytes=max_bytes, backups=backups)
    for n in range(count):
        capture.record("upstream_chunk", request_id=f"r{n:04d}", payload="x" * 100, backend="openai")
    capture.close()


def test_rotation_keeps_the_configured_backups(path: Path) -> None:
    record_many(path, 200, max_bytes=2048, backups=2)
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == ["wire.jsonl", "wire.jsonl.1", "wire.jsonl.2"]
    ids = []
    for name in ("wire.jsonl.2", "wire.jsonl.1", "wire.jsonl"):
        rotated = path.parent / name
        assert 0 < rotated.stat().st_size <= 2048
        ids += [line["request_id"] for line in read_lines(rotated)]
    assert ids == sorted(ids) and ids[-1] == "r0199", "newest in the live file, oldest in the last backup"


def test_rotation_without_backups_starts_over(path: Path) -> None:
    record_many(path, 200, max_bytes=2048, backups=0)
    assert [p.name for p in path.parent.iterdir()] == ["wire.jsonl"]
    assert read_lines(path)[-1]["request_id"] == "r0199"


def test_rotation_counts_what_the_file_already_holds(path: Path) -> None:
    record_many(path, 5, max_bytes=2048, backups=1)
    before = path.stat().st_size
    record_many(path, 15, max_bytes=2048, backups=1)
    assert before > 0 and (path.parent / "wire.jsonl.1").exists()
    assert path.stat().st_size <= 2048


def test_headers_from_http_libraries_are_captured(path: Path) -> None:
    from multidict import CIMultiDict, istr

    headers = CIMultiDict({istr("Content-Type"): "application/json", istr("X-Request-Id"): "abc"})
    capture = Capture(str(path))
    capture.record("upstream_response", request_id="r1", payload=b"{}", headers=headers)
    capture.close()
    (line,) = read_lines(path)
    assert line["headers"] == {"Content-Type": "application/json", "X-Request-Id": "abc"}
    assert capture.dropped == 0
