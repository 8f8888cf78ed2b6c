"""Offline token counting (modelwire.tokens): the packaged encodings, the model map, and the
request estimate (message framing, tools, images, audio, files, reasoning)."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import shutil
import socket
import struct
import subprocess
import sys
import time
import weakref
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import tiktoken_ext.openai_public as openai_public

from modelwire import tokens
from modelwire.gateway import app
from modelwire.gateway.call import Call
from modelwire.gateway.config import parse_config
from modelwire.gateway.surfaces import CHAT
from modelwire.types import (
    Audio,
    File,
    Image,
    Message,
    ProviderItem,
    Reasoning,
    Request,
    ResponseFormat,
    Text,
    Tool,
    ToolCall,
    ToolResult,
    assistant,
    system,
    tool_result,
    user,
)

DATA = Path(tokens.__file__).parent / "data"


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No network at all, an empty tiktoken cache dir, tiktoken's own loaders booby-trapped, and
    modelwire's encoding cache emptied so the encodings are really built from the package files."""

    def refuse(*args: object, **kwargs: object) -> Any:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tokens, "_encodings", {})
    yield cache
    assert list(cache.iterdir()) == [], "something was written to the tiktoken cache"


# ------------------------------------------------------------------------------------- encodings


def test_counts_with_network_disabled_and_writes_no_cache(offline: Path) -> None:
    req = Request(model="gpt-5.1", messages=[system("Be brief."), user("hello world")])
    assert tokens.count_request_tokens(req) > 0
    assert tokens.count_text("hello world", "gpt-3.5-turbo") == 2
    assert set(tokens._encodings) == {"o200k_base", "cl100k_base"}


# Ground truth. cl100k: openai/tiktoken tests/test_encoding.py (test_simple, test_simple_regex,
# test_encode_surrogate_pairs) and tests/test_base_encodings.py ("Hello world!"). o200k: tiktoken's
# public tests have no o200k vectors; openai/harmony tests/test_harmony.py
# (test_encode_allowed_special) encodes with o200k_harmony, whose ordinary tokens are o200k_base's.
@pytest.mark.parametrize(
    ("name", "text", "ids"),
    [
        ("cl100k_base", "hello world", [15339, 1917]),
        ("cl100k_base", "Hello world!", [9906, 1917, 0]),
        ("cl100k_base", "rer", [38149]),
        ("cl100k_base", "'rer", [2351, 81]),
        ("cl100k_base", "today\n \n", [31213, 27907]),
        ("cl100k_base", "👍", [9468, 239, 235]),
        ("o200k_base", "hello world", [24912, 2375]),
        ("o200k_base", "<|start|>", [27, 91, 5236, 91, 29]),
    ],
)
def test_known_token_ids(name: str, text: str, ids: list[int]) -> None:
    enc = tokens.get_encoding(name)
    assert enc.encode_ordinary(text) == ids
    assert enc.decode(ids) == text


def test_encodings_shape() -> None:
    o200k, cl100k = tokens.get_encoding("o200k_base"), tokens.get_encoding("cl100k_base")
    assert (o200k.name, o200k.n_vocab, o200k.eot_token) == ("o200k_base", 200019, 199999)
    assert (cl100k.name, cl100k.n_vocab, cl100k.eot_token) == ("cl100k_base", 100277, 100257)
    assert tokens.get_encoding("o200k_base") is o200k  # cached
    with pytest.raises(ValueError, match="unknown encoding"):
        tokens.get_encoding("p50k_base")


# ------------------------------------------------------------------------------- releasing encodings

MIXED = "こんにちは世界 hello <|endoftext|> 👋🌎\n\ndef f(x):\n    return x**2  # 123 45.6\r\n"


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_encodings", {})
    monkeypatch.setattr(tokens, "_last_used", {})


def _counts() -> tuple[Any, ...]:
    req = Request(
        model="gpt-5.1",
        messages=[system("Be brief."), user(MIXED)],
        tools=[Tool(name="lookup", description="Find it.", parameters={"type": "object"})],
    )
    o200k, cl100k = tokens.get_encoding("o200k_base"), tokens.get_encoding("cl100k_base")
    return (
        tokens.count_request_tokens(req),
        tokens.count_text(MIXED, "gpt-4"),
        o200k.encode_ordinary(MIXED),
        cl100k.encode_ordinary(MIXED),
    )


def test_released_encodings_are_rebuilt_with_the_same_counts(fresh: None) -> None:
    before = _counts()
    o200k = tokens.get_encoding("o200k_base")
    assert tokens.release_idle(3600) == []  # just used: kept
    assert tokens.get_encoding("o200k_base") is o200k
    assert sorted(tokens.release_idle(0)) == ["cl100k_base", "o200k_base"]
    assert tokens._encodings == {}
    assert _counts() == before
    assert tokens.get_encoding("o200k_base") is not o200k  # really built again


def test_only_the_idle_encoding_is_released(fresh: None) -> None:
    tokens.get_encoding("o200k_base")
    cl100k = tokens.get_encoding("cl100k_base")
    tokens._last_used["o200k_base"] -= 100
    assert tokens.release_idle(50) == ["o200k_base"]
    assert tokens._encodings == {"cl100k_base": cl100k}


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_a_released_encoding_gives_its_memory_back() -> None:
    """In a process of its own, so the figure is this encoding's alone."""
    code = """
from modelwire import tokens
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
tokens.count_text("hello world", "gpt-5")
loaded = rss()
assert tokens.release_idle(0) == ["o200k_base"]
print(loaded - rss())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert float(out.stdout) > 25, out.stdout  # MiB; o200k's core holds ~40


async def test_the_gateway_releases_encodings_it_has_not_used(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "TOKENIZER_IDLE_SECONDS", 0.3)
    gateway = app.Gateway(parse_config({"store": f"sqlite:///{tmp_path}/state.db"}))
    await gateway.startup()
    try:
        tokens.get_encoding("cl100k_base")
        for _ in range(200):  # 10 s at most
            if not tokens._encodings:
                break
            await asyncio.sleep(0.05)
        assert tokens._encodings == {}
    finally:
        await gateway.shutdown()


async def test_the_gateway_trims_its_heap_once_a_burst_is_over(
    fresh: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not while requests keep coming, once when a whole period passed without one, and not again
    while it stays quiet (a trim walks the heap: not something to repeat for nothing). The cycles
    the burst left are collected first, not left for the collector's next pass."""
    trims: list[float] = []
    monkeypatch.setattr(app, "TOKENIZER_IDLE_SECONDS", 0.3)  # a tick every 0.1 s
    monkeypatch.setattr(app.heap, "give_back", lambda: trims.append(time.monotonic()))
    gateway = app.Gateway(parse_config({"store": f"sqlite:///{tmp_path}/state.db"}))
    await gateway.startup()
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.35)
        assert trims == []  # nothing served yet: nothing to give back
        busy_until = loop.time() + 0.6
        while loop.time() < busy_until:  # a request every 20 ms: never a quiet tick
            call = Call("req-test", CHAT, time.monotonic())
            gateway.inflight.enter(call)
            await asyncio.sleep(0.02)
            gateway.inflight.leave(call)
        assert trims == []
        gc.disable()  # only the gateway's own collection may free it
        left = Leftover()
        left.me = left
        ref = weakref.ref(left)
        del left
        for _ in range(200):  # 10 s at most
            if trims:
                break
            await asyncio.sleep(0.05)
        assert len(trims) == 1
        assert ref() is None
        await asyncio.sleep(0.5)
        assert len(trims) == 1, "trimmed again with nothing served since"
    finally:
        gc.enable()
        await gateway.shutdown()


class Leftover:
    me: Any = None


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_specs_match_tiktoken_ext(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """pat_str, special tokens, file name and pinned sha256 are exactly tiktoken_ext.openai_public's."""
    seen: list[tuple[str, str | None]] = []

    def fake_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.append((url, expected_hash))
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
    theirs = openai_public.ENCODING_CONSTRUCTORS[name]()
    ours = tokens._SPECS[name]
    assert theirs["pat_str"] == ours.pat_str
    assert theirs["special_tokens"] == ours.special_tokens
    [(url, expected_hash)] = seen
    assert url.rsplit("/", 1)[-1] == ours.file
    assert expected_hash == ours.sha256
    assert hashlib.sha256((DATA / ours.file).read_bytes()).hexdigest() == ours.sha256


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_same_tokens_as_tiktoken_itself(name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """tiktoken's own registry encoding, fed our file through its cache (keyed by sha1 of the URL),
    tokenizes a mixed corpus exactly as ours does. The network stays off."""
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    cache = tmp_path / "seeded"
    cache.mkdir()
    url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    shutil.copy(DATA / f"{name}.tiktoken", cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    theirs = tiktoken.get_encoding(name)
    ours = tokens.get_encoding(name)
    corpus = [
        "hello world",
        "Unicode snowman: ☃️ and 👋🌎",
        "こんにちは世界。お元気ですか",
        "def f(x):\n    return x**2  # squared\n\n\n",
        "URLs? https://www.example.com/a/b?c=1 — and numbers 123 45.6 -78.9",
        'JSON {"a": [1, 2, {"b": null}], "c": "d"}',
        "<|endoftext|> is ordinary text here",
        "    indented\ttabs\r\nand CRLF",
    ]
    for text in corpus:
        assert ours.encode_ordinary(text) == theirs.encode_ordinary(text), text


def _no_network(*args: object, **kwargs: object) -> Any:
    raise AssertionError("network access attempted")


def test_corrupt_file_is_refused() -> None:
    bad = tokens._Spec(file="cl100k_base.tiktoken", sha256="0" * 64, pat_str="", special_tokens={})
    with pytest.raises(RuntimeError, match="corrupt"):
        tokens._load_ranks(bad)


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("chatgpt-4o-latest", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-4.5-preview", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5.1-codex-max", "o200k_base"),
        ("gpt-6", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini-deep-research", "o200k_base"),
        ("codex-mini-latest", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("ft:gpt-4o-mini:acme::abc123", "o200k_base"),
        ("GPT-4O", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-32k", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-35-turbo", "cl100k_base"),
        ("ft:gpt-3.5-turbo:acme::xyz", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("text-embedding-ada-002", "cl100k_base"),
        ("claude-sonnet-4-5", "o200k_base"),
        ("some-unknown-model", "o200k_base"),
    ],
)
def test_encoding_for(model: str, name: str) -> None:
    assert tokens.encoding_name_for(model) == name
    assert tokens.encoding_for(model).name == name


# ---------------------------------------------------------------------------------------- framing


def _count(*messages: Message, model: str = "gpt-4o", **kw: Any) -> int:
    return tokens.count_request_tokens(Request(model=model, messages=list(messages), **kw))


def test_message_framing_matches_openai_cookbook() -> None:
    enc = tokens.get_encoding("o200k_base")
    # 3 reply priming + (3 + "user") + "hello world"
    assert _count(user("hello world")) == 3 + 3 + 1 + 2
    assert _count() == 3
    sys_text = "You are a helpful, pattern-following assistant."
    expected = 3 + (3 + 1 + len(enc.encode(sys_text))) + (3 + 1 + 2)
    assert _count(system(sys_text), user("hello world")) == expected
    named = Message(role="user", content=[Text(text="hello world")], name="example_user")
    assert _count(named) == _count(user("hello world")) + 1 + len(enc.encode("example_user"))


def test_model_chooses_the_encoding() -> None:
    text = "こんにちは世界。お元気ですか" * 20
    assert _count(user(text), model="gpt-4o") != _count(user(text), model="gpt-4")
    cl100k = tokens.get_encoding("cl100k_base")
    assert _count(user(text), model="gpt-4") == 3 + 3 + 1 + len(cl100k.encode_ordinary(text))


def test_special_token_text_is_counted_as_text() -> None:
    assert tokens.count_text("<|endoftext|>") == 7
    assert _count(user("<|endoftext|>")) == 3 + 3 + 1 + 7


def test_monotonic_in_text_messages_tools_and_images() -> None:
    counts = [_count(user("word " * (10 * n))) for n in range(1, 8)]
    assert counts == sorted(counts) and len(set(counts)) == len(counts)
    one = _count(user("hi"))
    two = _count(user("hi"), assistant("hello"))
    assert two > one
    tool = Tool(name="get_weather", description="Weather for a city", parameters={"type": "object"})
    assert _count(user("hi"), tools=[tool]) > one
    with_image = Message(role="user", content=[Text(text="hi"), Image(url="https://x/y.png")])
    assert _count(with_image) > one


# ------------------------------------------------------------------------------------------ tools


def test_tool_definitions_are_counted_as_json_plus_overhead() -> None:
    enc = tokens.get_encoding("o200k_base")
    params = {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    }
    tool = Tool(name="get_weather", description="Current weather", parameters=params)
    body = json.dumps(
        {"name": "get_weather", "description": "Current weather", "parameters": params},
        separators=(",", ":"),
    )
    base = _count(user("hi"))
    one = _count(user("hi"), tools=[tool])
    assert one == base + tokens.TOOLS_PREAMBLE_TOKENS + tokens.TOKENS_PER_TOOL + len(enc.encode(body))
    two = _count(user("hi"), tools=[tool, Tool(name="noop")])
    noop = tokens.TOKENS_PER_TOOL + len(enc.encode('{"name":"noop"}'))
    assert two == one + noop


def test_tool_calls_and_results_are_counted() -> None:
    enc = tokens.get_encoding("o200k_base")
    args = '{"city": "Paris", "unit": "celsius"}'
    call = ToolCall(id="call_1", name="get_weather", arguments=args)
    asked = assistant(call)
    expected_call = tokens.TOKENS_PER_TOOL_CALL + len(enc.encode("get_weather")) + len(enc.encode(args))
    assert _count(asked) == 3 + 3 + 1 + expected_call

    output = "It is 21 degrees and sunny in Paris."
    answered = tool_result("call_1", output)
    expected_result = tokens.TOKENS_PER_TOOL_RESULT + len(enc.encode(output))
    assert _count(answered) == 3 + 3 + 1 + expected_result
    longer = tool_result("call_1", output * 10)
    assert _count(longer) > _count(answered)

    # A result carrying an image costs the image too (unknown size: 765).
    with_image = Message(
        role="tool",
        content=[ToolResult(call_id="call_1", content=[Text(text=output), Image(url="https://x")])],
    )
    assert _count(with_image) == _count(answered) + 765


def test_reasoning_counts_summaries_not_encrypted_data() -> None:
    enc = tokens.get_encoding("o200k_base")
    summary = ["Looked up the weather.", "Chose celsius."]
    plain = assistant(Reasoning(summary=summary))
    opaque = assistant(Reasoning(summary=summary, data="gAAAAA" + "x" * 50_000, dialect="openai_responses"))
    expected = 3 + 3 + 1 + sum(len(enc.encode(s)) for s in summary)
    assert _count(plain) == _count(opaque) == expected
    raw = assistant(Reasoning(text="thinking out loud"))
    assert _count(raw) == 3 + 3 + 1 + len(enc.encode("thinking out loud"))


def test_provider_items_skip_encrypted_content() -> None:
    item = ProviderItem(
        dialect="openai_responses", data={"type": "compaction", "encrypted_content": "x" * 9999}
    )
    bare = ProviderItem(dialect="openai_responses", data={"type": "compaction"})
    assert _count(assistant(item)) == _count(assistant(bare))


def test_json_schema_response_format_is_counted() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    fmt = ResponseFormat(type="json_schema", name="answer", schema=schema)
    assert _count(user("hi"), response_format=fmt) > _count(user("hi")) + tokens.RESPONSE_FORMAT_TOKENS
    assert _count(user("hi"), response_format=ResponseFormat(type="json_object")) == _count(user("hi"))


# ----------------------------------------------------------------------------------------- images


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00;"


def _jpeg(width: int, height: int, *, progressive: bool = False) -> bytes:
    app0 = b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    exif = b"Exif\x00\x00" + b"\x00" * 300  # a large APP1 segment to skip over
    dqt = b"\x00" + bytes(64)
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    dht = b"\x00" + bytes(16)

    def seg(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload

    return (
        b"\xff\xd8"
        + seg(0xE0, app0)
        + seg(0xE1, exif)
        + seg(0xDB, dqt)
        + seg(0xC4, dht)  # DHT sits in the C0-CF range but is not a frame header
        + b"\xff"  # a fill byte before the next marker
        + seg(0xC2 if progressive else 0xC0, sof)
        + seg(0xDA, b"\x00" * 10)
        + b"\x12\x34\xff\xd9"
    )


def _riff_webp(chunk: bytes, payload: bytes) -> bytes:
    body = b"WEBP" + chunk + struct.pack("<I", len(payload)) + payload
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _webp_lossy(width: int, height: int) -> bytes:
    frame = b"\x10\x02\x00" + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + bytes(10)
    return _riff_webp(b"VP8 ", frame)


def _webp_lossless(width: int, height: int) -> bytes:
    bits = (width - 1) | ((height - 1) << 14)
    return _riff_webp(b"VP8L", b"\x2f" + struct.pack("<I", bits) + bytes(8))


def _webp_extended(width: int, height: int) -> bytes:
    payload = b"\x10\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return _riff_webp(b"VP8X", payload)


@pytest.mark.parametrize(
    "make", [_png, _gif, _jpeg, _webp_lossy, _webp_lossless, _webp_extended], ids=lambda f: f.__name__
)
@pytest.mark.parametrize(("width", "height"), [(1, 1), (640, 480), (1920, 1080), (3000, 4000)])
def test_image_size_from_headers(make: Any, width: int, height: int) -> None:
    assert tokens.image_size(make(width, height)) == (width, height)


def test_image_size_progressive_jpeg_and_large_dimensions() -> None:
    assert tokens.image_size(_jpeg(4032, 3024, progressive=True)) == (4032, 3024)
    assert tokens.image_size(_png(20000, 30000)) == (20000, 30000)
    assert tokens.image_size(_webp_extended(16383, 9000)) == (16383, 9000)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        b"\x89PNG\r\n\x1a\n\x00\x00",  # truncated PNG
        b"\xff\xd8\xff\xe0\x00\x10JFIF",  # JPEG cut off before its frame header
        b"\xff\xd8\xff\xda\x00\x02",  # scan before any frame header
        b"GIF89a\x01",
        b"RIFF\x00\x00\x00\x00WEBPVP8 ",
        _png(0, 10),
    ],
)
def test_image_size_rejects_garbage(data: bytes) -> None:
    assert tokens.image_size(data) is None


@pytest.mark.parametrize(
    ("width", "height", "detail", "expected"),
    [
        # OpenAI's worked examples
        (1024, 1024, "high", 765),  # -> 768x768, 4 tiles
        (2048, 4096, "high", 1105),  # -> 1024x2048 -> 768x1536, 6 tiles
        (4096, 8192, "low", 85),
        # more
        (1024, 1024, "auto", 765),
        (1024, 1024, None, 765),
        (512, 512, "high", 255),  # small images are not scaled up: 1 tile
        (100, 100, "high", 255),
        (513, 512, "high", 425),  # 2 tiles
        (768, 768, "high", 765),
        (1920, 1080, "high", 1105),  # -> 1365x768: 3x2 tiles
        (4000, 1000, "high", 765),  # -> 2048x512 (short side already <= 768): 4x1 tiles
        (None, None, "high", 765),  # unknown: assume 1024x1024
        (None, None, "low", 85),
    ],
)
def test_image_tokens(width: int | None, height: int | None, detail: str | None, expected: int) -> None:
    assert tokens.image_tokens(width, height, detail) == expected


def test_image_parts_use_header_dimensions() -> None:
    def cost(image: Image) -> int:
        return _count(Message(role="user", content=[image])) - _count(Message(role="user"))

    assert cost(Image(data=_png(2048, 4096), media_type="image/png")) == 1105
    assert cost(Image(data=_jpeg(512, 512), media_type="image/jpeg")) == 255
    assert cost(Image(data=_gif(2048, 4096), detail="low")) == 85
    assert cost(Image(url="https://example.com/cat.png")) == 765
    assert cost(Image(url="https://example.com/cat.png", detail="low")) == 85
    assert cost(Image(file_id="file-abc")) == 765
    assert cost(Image(data=b"garbage", media_type="image/png")) == 765
    data_url = "data:image/webp;base64," + base64.b64encode(_webp_lossless(400, 300)).decode()
    assert cost(Image(url=data_url)) == 255


# ---------------------------------------------------------------------------------- audio, files


def _wav(seconds: float, rate: int = 16_000, channels: int = 1, bits: int = 16) -> bytes:
    byte_rate = rate * channels * bits // 8
    samples = bytes(int(byte_rate * seconds))
    fmt = struct.pack("<HHIIHH", 1, channels, rate, byte_rate, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples))
    return b"RIFF" + struct.pack("<I", len(body) + len(samples)) + body + samples


def test_audio_estimate() -> None:
    def cost(audio: Audio) -> int:
        return _count(Message(role="user", content=[audio])) - _count(Message(role="user"))

    assert cost(Audio(data=_wav(1.0), format="wav")) == 10
    assert cost(Audio(data=_wav(2.5, rate=44_100, channels=2), format="wav")) == 25
    assert cost(Audio(data=bytes(32_000), format="mp3")) == 20  # 2 s at 128 kbit/s
    assert cost(Audio(data=bytes(48_000), format="pcm16")) == 10


def test_file_estimate() -> None:
    enc = tokens.get_encoding("o200k_base")

    def cost(file: File) -> int:
        return _count(Message(role="user", content=[file])) - _count(Message(role="user"))

    text = "name,qty\napples,3\npears,5\n"
    assert cost(File(data=text.encode(), media_type="text/csv")) == len(enc.encode(text))
    assert cost(File(data=text.encode(), media_type="text/csv", filename="fruit.csv")) == len(
        enc.encode(text)
    ) + len(enc.encode("fruit.csv"))
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Pages /Count 3 >>\n" + b"<< /Type /Page >>\n" * 3 + b"%%EOF"
    assert cost(File(data=pdf, media_type="application/pdf")) == 3 * tokens.FILE_PAGE_TOKENS
    assert cost(File(file_id="file-abc")) == tokens.FILE_PAGE_TOKENS
    assert cost(File(data=bytes(4000), media_type="application/octet-stream")) == 1000
    data_url = "data:application/json;base64," + base64.b64encode(b'{"a": 1}').decode()
    assert cost(File(url=data_url)) == len(enc.encode('{"a": 1}'))
    assert cost(File(data=b'{"a": 1}', media_type="application/json")) == len(enc.encode('{"a": 1}'))


async def test_the_gateway_leaves_requests_in_flight_to_the_young_generation(tmp_path: Path) -> None:
    """Started, the gateway has frozen its start-up heap out of the collector and raised the young
    generation's threshold above what requests in flight allocate, keeping the older ones'."""
    gc.set_threshold(700, 10, 10)
    gateway = app.Gateway(parse_config({"store": f"sqlite:///{tmp_path}/state.db"}))
    await gateway.startup()
    try:
        assert gc.get_threshold() == (app.GC_YOUNG_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0
    finally:
        await gateway.shutdown()
