"""Offline token counting (modelwire.tokens): the packaged encodings and their byte-pair encoding
(against tiktoken's own ids), the model map, and the request estimate (message framing, tools,
images, audio, files, reasoning)."""

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
import threading
import time
import weakref
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.registry
import tiktoken_ext.openai_public as openai_public
from hypothesis import given, settings
from hypothesis import strategies as st

from modelwire import _bpe, tokens
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
ENCODINGS = ["o200k_base", "cl100k_base"]


def _no_network(*args: object, **kwargs: object) -> Any:
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network at all, and modelwire's encoding cache emptied so the encodings are really built
    from the package files."""
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(socket, "getaddrinfo", _no_network)
    monkeypatch.setattr(tokens, "_encodings", {})


@pytest.fixture(scope="module")
def tiktoken_encodings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tiktoken.Encoding]]:
    """tiktoken's own registry encodings, fed our files through its cache (keyed by the sha1 of the
    URL; tiktoken checks each file's sha256), with the network off while they load."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name in ENCODINGS:
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        shutil.copy(DATA / f"{name}.tiktoken", cache / hashlib.sha1(url.encode()).hexdigest())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        mp.setattr(tiktoken.registry, "ENCODINGS", {})
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        yield {name: tiktoken.get_encoding(name) for name in ENCODINGS}


# ------------------------------------------------------------------------------------- encodings


@pytest.mark.usefixtures("offline")
def test_counts_with_network_disabled() -> None:
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
    assert enc.count(text) == len(ids)
    assert enc.decode(ids) == text


def test_encodings_shape() -> None:
    o200k, cl100k = tokens.get_encoding("o200k_base"), tokens.get_encoding("cl100k_base")
    assert (o200k.name, o200k.n_vocab, o200k.eot_token) == ("o200k_base", 200019, 199999)
    assert (cl100k.name, cl100k.n_vocab, cl100k.eot_token) == ("cl100k_base", 100277, 100257)
    assert (len(o200k.vocabulary), len(cl100k.vocabulary)) == (199998, 100256)
    assert tokens.get_encoding("o200k_base") is o200k  # cached
    with pytest.raises(ValueError, match="unknown encoding"):
        tokens.get_encoding("p50k_base")


@pytest.mark.parametrize("name", ENCODINGS)
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


CORPUS = [
    "hello world",
    "Unicode snowman: ☃️ and 👋🌎, combining e\u0301 and a ZWJ family 👨\u200d👩\u200d👧",
    "こんにちは世界。お元気ですか 안녕하세요 Привет, мир! مرحبا بالعالم",
    "def f(x):\n    return x**2  # squared\n\n\n",
    "URLs? https://www.example.com/a/b?c=1 — and numbers 123 45.6 -78.9 1234567",
    'JSON {"a": [1, 2, {"b": null}], "c": "d"}',
    "<|endoftext|> is ordinary text here, <|fim_prefix|> too",
    "    indented\ttabs\r\nand CRLF\r\n\r\n  \n",
    "I'm sure they'LL say you'RE right, it's John's DON'T",
    "x" * 5000 + " " + "ab" * 3000 + " " + "9" * 100 + " " * 300 + "\n" * 50,
    "".join(map(chr, range(0x20, 0x800))),
]


@pytest.mark.parametrize("name", ENCODINGS)
def test_same_tokens_as_tiktoken_itself(name: str, tiktoken_encodings: dict[str, tiktoken.Encoding]) -> None:
    theirs, ours = tiktoken_encodings[name], tokens.get_encoding(name)
    for text in CORPUS:
        ids = theirs.encode_ordinary(text)
        assert ours.encode_ordinary(text) == ids, text[:60]
        assert ours.count(text) == len(ids)
        assert ours.decode_bytes(ids) == theirs.decode_bytes(ids)


# Text that stresses the split and the merge: runs of one letter or digit (long merges), mixed
# scripts, marks, apostrophes, every kind of whitespace, lone surrogates.
_ALPHABET = st.sampled_from(
    list("aAbBzZ019 \t\n\r\x0b\x0c\x85\xa0\u2028'\".,;:!?-_/\\<|>()[]{}#@$%^&*+=~`")
    + list("éÉüßñçøåæœ日本語中文한국어приветПРИВЕТ👋🌎☃\u0301\u0308\u200d\ufe0f\U0001f9d1\ud800\udfff")
)
_TEXT = st.one_of(
    st.text(_ALPHABET, max_size=300),
    # Any assigned character: one Unicode assigned after Python's unicodedata (Cn there) may be a
    # letter to the regex module's newer tables and not to tiktoken's (U+323B0, CJK Extension J).
    st.text(st.characters(exclude_categories=("Cn",)), max_size=100),
    st.builds(
        lambda c, n, t: c * n + t,
        st.sampled_from(["a", "ab", "1", " ", "\n", "é", "日"]),
        st.integers(1, 3000),
        st.text(_ALPHABET, max_size=20),
    ),
)


@pytest.mark.parametrize("name", ENCODINGS)
@settings(max_examples=300, deadline=None)
@given(text=_TEXT)
def test_same_tokens_as_tiktoken_on_random_text(
    name: str, text: str, tiktoken_encodings: dict[str, tiktoken.Encoding]
) -> None:
    ids = tiktoken_encodings[name].encode_ordinary(text)
    ours = tokens.get_encoding(name)
    assert ours.encode_ordinary(text) == ids
    assert ours.count(text) == len(ids)


def test_a_lone_surrogate_counts_as_tiktoken_counts_it(
    tiktoken_encodings: dict[str, tiktoken.Encoding],
) -> None:
    text = "before \ud83d after \udc4b end"
    ids = tiktoken_encodings["o200k_base"].encode_ordinary(text)
    assert tokens.get_encoding("o200k_base").encode_ordinary(text) == ids
    assert tokens.count_text(text, "gpt-5") == len(ids)


def test_decoding_special_and_unknown_ids() -> None:
    enc = tokens.get_encoding("cl100k_base")
    assert enc.decode([15339, 100257, 1917]) == "hello<|endoftext|> world"
    assert tokens.decode_tokens([15339, 1917]) == "hello world"
    for bad in ([100256], [-1], [2**70], ["1"]):
        with pytest.raises(ValueError, match="a token id cl100k_base does not have"):
            tokens.decode_tokens(bad)  # type: ignore[list-item]


def test_counting_from_several_threads_at_once() -> None:
    """Counting releases the GIL while it splits and merges: threads share one encoding."""
    enc = tokens.get_encoding("o200k_base")
    texts = [text * 40 for text in CORPUS]
    expected = [enc.count(text) for text in texts]
    results: list[list[int]] = []

    def count_all() -> None:
        results.append([enc.count(text) for text in texts])

    threads = [threading.Thread(target=count_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [expected] * 4


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_an_encoding_is_small() -> None:
    """In a process of its own, so the figure is this encoding's alone: tiktoken's core held ~40 MiB
    for o200k; the compact vocabulary holds ~4."""
    code = """
from modelwire import tokens
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
before = rss()
tokens.count_text("hello world", "gpt-5")
print(rss() - before, tokens.get_encoding("o200k_base").vocabulary.nbytes / 2**20)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    grown, held = map(float, out.stdout.split())
    assert held < 6, out.stdout
    assert grown < 12, out.stdout


def _vocabulary(lines: list[bytes]) -> bytes:
    every_byte = [base64.b64encode(bytes([b])) + b" %d" % b for b in range(256)]
    return b"\n".join(every_byte + lines) + b"\n"


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (_vocabulary([b"YWI="]), "no space between token and rank on line 257"),
        (_vocabulary([b"YWI= "]), "no rank on line 257"),
        (_vocabulary([b"YWI= 2x7"]), "the rank is not a number on line 257"),
        (_vocabulary([b"YWI 256"]), "the token is not base64 on line 257"),
        (_vocabulary([b"Y*I= 256"]), "the token is not base64 on line 257"),
        (_vocabulary([b"YWI= 300"]), r"ranks are not 0, 1, 2\.\.\. in order on line 257"),
        (_vocabulary([b"YQ== 256"]), "a token listed twice on line 257"),
        (b"YQ== 0\n", "byte 0 is not a token"),
        (b"", "byte 0 is not a token"),
    ],
)
def test_a_malformed_vocabulary_is_refused(data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _bpe.Vocabulary(data)


def test_a_small_vocabulary_merges_by_rank() -> None:
    """A piece that is a token is one; else lowest rank first, leftmost of equals."""
    vocabulary = _bpe.Vocabulary(
        _vocabulary([b"YWE= 256", b"YWFh 257", b"YmM= 258", b"YWJj 259"]).replace(b"\n", b"\r\n")
    )
    assert vocabulary.encode([b"aaa"]) == [257]
    assert vocabulary.encode([b"aaaa"]) == [256, 256]
    assert vocabulary.encode([b"aaaaa"]) == [256, 257]  # aa at 0, then aa at 2; aaa needs a+aa: none
    assert vocabulary.encode([b"abc", "abcb", "a", ""]) == [259, 259, 98, 97]  # a whole token; a+bc, b
    assert vocabulary.count(["aaaaa", b"abcb"]) == 4
    assert vocabulary.decode([257, 98]) == b"aaab"
    with pytest.raises(TypeError, match="pieces are str or bytes"):
        vocabulary.count([1])


def test_corrupt_file_is_refused() -> None:
    bad = tokens._Spec(file="cl100k_base.tiktoken", sha256="0" * 64, pat_str="", special_tokens={})
    with pytest.raises(RuntimeError, match="corrupt"):
        tokens._read_vocabulary(bad)


# ------------------------------------------------------------------------------ giving memory back


async def test_the_gateway_trims_its_heap_once_a_burst_is_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not while requests keep coming, once when a whole period passed without one, and not again
    while it stays quiet (a trim walks the heap: not something to repeat for nothing). The cycles
    the burst left are collected first, not left for the collector's next pass."""
    trims: list[float] = []
    monkeypatch.setattr(app, "QUIET_CHECK_SECONDS", 0.1)
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
    expected = 3 + (3 + 1 + enc.count(sys_text)) + (3 + 1 + 2)
    assert _count(system(sys_text), user("hello world")) == expected
    named = Message(role="user", content=[Text(text="hello world")], name="example_user")
    assert _count(named) == _count(user("hello world")) + 1 + enc.count("example_user")


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
    assert one == base + tokens.TOOLS_PREAMBLE_TOKENS + tokens.TOKENS_PER_TOOL + enc.count(body)
    two = _count(user("hi"), tools=[tool, Tool(name="noop")])
    noop = tokens.TOKENS_PER_TOOL + enc.count('{"name":"noop"}')
    assert two == one + noop


def test_tool_calls_and_results_are_counted() -> None:
    enc = tokens.get_encoding("o200k_base")
    args = '{"city": "Paris", "unit": "celsius"}'
    call = ToolCall(id="call_1", name="get_weather", arguments=args)
    asked = assistant(call)
    expected_call = tokens.TOKENS_PER_TOOL_CALL + enc.count("get_weather") + enc.count(args)
    assert _count(asked) == 3 + 3 + 1 + expected_call

    output = "It is 21 degrees and sunny in Paris."
    answered = tool_result("call_1", output)
    expected_result = tokens.TOKENS_PER_TOOL_RESULT + enc.count(output)
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
    expected = 3 + 3 + 1 + sum(enc.count(s) for s in summary)
    assert _count(plain) == _count(opaque) == expected
    raw = assistant(Reasoning(text="thinking out loud"))
    assert _count(raw) == 3 + 3 + 1 + enc.count("thinking out loud")


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
    assert cost(File(data=text.encode(), media_type="text/csv")) == enc.count(text)
    assert cost(File(data=text.encode(), media_type="text/csv", filename="fruit.csv")) == enc.count(
        text
    ) + enc.count("fruit.csv")
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Pages /Count 3 >>\n" + b"<< /Type /Page >>\n" * 3 + b"%%EOF"
    assert cost(File(data=pdf, media_type="application/pdf")) == 3 * tokens.FILE_PAGE_TOKENS
    assert cost(File(file_id="file-abc")) == tokens.FILE_PAGE_TOKENS
    assert cost(File(data=bytes(4000), media_type="application/octet-stream")) == 1000
    data_url = "data:application/json;base64," + base64.b64encode(b'{"a": 1}').decode()
    assert cost(File(url=data_url)) == enc.count('{"a": 1}')
    assert cost(File(data=b'{"a": 1}', media_type="application/json")) == enc.count('{"a": 1}')


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
