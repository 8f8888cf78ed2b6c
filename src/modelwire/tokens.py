"""Offline token counting for OpenAI models.

The two BPE vocabularies ship with modelwire (``modelwire/data/o200k_base.tiktoken`` and
``cl100k_base.tiktoken``, byte-identical to OpenAI's published files: their sha256 is the one
tiktoken pins, and is checked on load). Nothing is downloaded, ever: the ranks are read from the
package with :mod:`importlib.resources`.

An :class:`Encoding` splits text into pieces with the encoding's own pattern (tiktoken's, run by
the ``regex`` module, which releases the GIL while it matches) and merges each piece by tiktoken's
byte-pair rule in ``modelwire._bpe``, a small C extension over a compact vocabulary: the same ids
as tiktoken (tests compare them on a corpus and on random text), in ~3 MiB for o200k where
tiktoken's core holds ~40, built in ~35 ms where tiktoken takes 0.2-0.5 s.
One difference is known: a character Unicode assigned after the tables of tiktoken's regex engine
(U+323B0 and the rest of CJK Extension J, Unicode 17) is a letter to the ``regex`` module and
not to tiktoken, so text holding one may count a token more or less.

``o200k_base`` serves gpt-4o, gpt-4.1, gpt-4.5, gpt-5.x, gpt-6, chatgpt-*, codex-* and the o-series
(and is the default for any model not known to be older); ``cl100k_base`` serves gpt-4 (not 4o /
4.1 / 4.5), gpt-3.5 and the ``text-embedding-*`` models. Encodings are built on first use and
kept for the life of the process.

:func:`count_request_tokens` estimates the input tokens of a neutral :class:`~modelwire.types.Request`.
Text is tokenized exactly (``encode_ordinary``: special-token text counts as plain text, as the API
does); everything around it is an estimate:

* **Message framing**: OpenAI's documented chat-format overhead (the cookbook's
  ``num_tokens_from_messages``): 3 tokens per message plus the tokens of the role, 1 more plus the
  tokens of ``name`` when a message has one, and 3 for priming the reply
  (``<|start|>assistant<|message|>``). Exact for plain text chat on gpt-3.5/4/4o-era models.
* **Tool definitions**: the compact JSON of each tool's ``name``, ``description`` and
  ``parameters`` plus 8 tokens per tool, plus 12 once when there are tools (the
  ``namespace functions { ... }`` preamble the model sees). OpenAI renders tools as TypeScript-ish
  declarations that are usually a little shorter than their JSON, so this leans high.
* **Structured output**: a ``json_schema`` response format counts its schema's JSON (plus name and
  description) and 8 tokens.
* **Tool calls**: name + arguments + 3 tokens of framing each. **Tool results**: their content
  (text, images, files as below) + 3 tokens each.
* **Reasoning**: summaries and raw reasoning text where present; opaque replay data (encrypted
  reasoning, signatures) is not counted — what it stands for cannot be known offline.
  **Refusals** count their text. **Provider items** count the JSON of their data without
  ``encrypted_content``.
* **Images**: OpenAI's documented vision cost. ``detail="low"``: 85 tokens. ``high``/``auto``/unset:
  fit within 2048x2048, then scale the shortest side down to 768 px, then 85 + 170 per 512-px tile.
  Dimensions are read from PNG / JPEG / GIF / WEBP headers when the bytes are at hand (no imaging
  library; EXIF rotation does not matter, the formula is symmetric); otherwise (a URL, a file id,
  an unreadable header) a 1024x1024 image is assumed: 765 tokens. Newer models that bill images by
  32-px patches, and gpt-4o-mini's image multiplier, are not modelled.
* **Audio**: ~10 tokens per second (1 token per 100 ms, OpenAI's figure for input audio). WAV
  durations are read from the header; other formats assume 128 kbit/s (16 kB/s), ``pcm16``
  24 kHz mono 16-bit (48 kB/s), G.711 8 kB/s.
* **Files**: inline ``text/*``, JSON, XML, YAML and similar are decoded and tokenized exactly
  (+ the filename); PDFs cost 1,500 tokens per page (page count from the ``/Type /Page`` objects;
  OpenAI feeds a page's extracted text plus an image of it, Anthropic documents 1,500-3,000
  tokens a page); other inline bytes one token per 4 bytes; a file known only by id or URL
  1,500 tokens (one page) — a floor, not a bound.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, TypeVar

import regex

from . import _bpe
from .types import (
    Audio,
    File,
    Image,
    Message,
    Part,
    ProviderItem,
    Reasoning,
    Refusal,
    Request,
    Text,
    Tool,
    ToolCall,
    ToolResult,
)

__all__ = [
    "AUDIO_TOKENS_PER_SECOND",
    "FILE_PAGE_TOKENS",
    "IMAGE_BASE_TOKENS",
    "IMAGE_TILE_TOKENS",
    "Encoding",
    "count_message_tokens",
    "count_request_tokens",
    "count_text",
    "encoding_for",
    "encoding_name_for",
    "get_encoding",
    "image_size",
    "image_tokens",
]

# ------------------------------------------------------------------------------------- encodings


@dataclass(frozen=True, slots=True)
class _Spec:
    """How to build one encoding. Values are tiktoken_ext.openai_public's (tests check they match)."""

    file: str
    sha256: str
    pat_str: str
    special_tokens: dict[str, int]


_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"

_SPECS: dict[str, _Spec] = {
    "o200k_base": _Spec(
        file="o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    "cl100k_base": _Spec(
        file="cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Encoding:
    """One BPE encoding: its pattern splits text into pieces, its vocabulary merges each piece.
    Special-token text (``<|endoftext|>``) is ordinary text here, as the API counts it."""

    name: str
    pattern: regex.Pattern[str]
    vocabulary: _bpe.Vocabulary
    special_tokens: dict[str, int]

    @property
    def n_vocab(self) -> int:
        return max(len(self.vocabulary), *(id + 1 for id in self.special_tokens.values()))

    @property
    def eot_token(self) -> int:
        return self.special_tokens[_ENDOFTEXT]

    def count(self, text: str) -> int:
        """How many tokens ``text`` is."""
        return self._merge(self.vocabulary.count, text) if text else 0

    def encode_ordinary(self, text: str) -> list[int]:
        """The token ids of ``text``."""
        return self._merge(self.vocabulary.encode, text)

    def _merge(self, merge: Callable[[list[str]], T], text: str) -> T:
        try:
            return merge(self.pattern.findall(text, concurrent=True))
        except UnicodeEncodeError:  # a lone surrogate: UTF-8 has no bytes for it
            return merge(self.pattern.findall(_without_surrogates(text), concurrent=True))

    def decode_bytes(self, ids: list[int]) -> bytes:
        """The bytes of token ``ids``; :class:`KeyError` for an id the encoding does not have."""
        special = {id: text.encode() for text, id in self.special_tokens.items()}
        if special.keys().isdisjoint(ids):
            return self.vocabulary.decode(ids)
        return b"".join(special[id] if id in special else self.vocabulary.decode((id,)) for id in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", "replace")


def _without_surrogates(text: str) -> str:
    """``text`` with each lone surrogate (JSON's ``\\ud800`` escapes can carry one) as U+FFFD,
    which is what tiktoken counts in its place."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


_lock = threading.Lock()
_encodings: dict[str, Encoding] = {}


def _read_vocabulary(spec: _Spec) -> bytes:
    """The packaged ``.tiktoken`` file (one ``base64(token) rank`` per line), after checking it
    against tiktoken's pinned hash."""
    contents = resources.files("modelwire").joinpath("data", spec.file).read_bytes()
    digest = hashlib.sha256(contents).hexdigest()
    if digest != spec.sha256:
        raise RuntimeError(f"modelwire/data/{spec.file} is corrupt: sha256 {digest}, expected {spec.sha256}")
    return contents


def get_encoding(name: str) -> Encoding:
    """``o200k_base`` or ``cl100k_base``, built from the packaged files on first use and kept."""
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"unknown encoding {name!r}; modelwire ships {', '.join(_SPECS)}")
    with _lock:
        enc = _encodings.get(name)
        if enc is None:
            vocabulary = _bpe.Vocabulary(_read_vocabulary(spec))
            enc = Encoding(name, regex.compile(spec.pat_str), vocabulary, spec.special_tokens)
            _encodings[name] = enc
    return enc


# Checked in order, on the lower-cased name without any ``provider/`` or ``ft:`` prefix.
_O200K_PREFIXES = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "gpt-6",
    "chatgpt",
    "codex",
    "gpt-oss",  # o200k_harmony: the same ordinary tokens as o200k_base
    "o1",
    "o3",
    "o4",
)
_CL100K_PREFIXES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-", "davinci-002", "babbage-002")


@lru_cache(maxsize=1024)
def encoding_name_for(model: str) -> str:
    """The encoding name for ``model``; ``o200k_base`` when the model is not known to be older."""
    name = model.strip().lower().rsplit("/", 1)[-1]
    name = name.removeprefix("ft:")
    if name.startswith(_O200K_PREFIXES):
        return "o200k_base"
    if name.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return "o200k_base"


def encoding_for(model: str) -> Encoding:
    """The encoding for ``model`` (see :func:`encoding_name_for`), cached."""
    return get_encoding(encoding_name_for(model))


def decode_tokens(ids: list[int], encoding: str = "cl100k_base") -> str:
    """The text of token ``ids`` in ``encoding``; :class:`ValueError` for an id it does not have."""
    try:
        raw = get_encoding(encoding).decode_bytes(ids)
    except (KeyError, TypeError, OverflowError) as exc:
        raise ValueError(f"a token id {encoding} does not have: {exc}") from None
    return raw.decode("utf-8", "replace")


def count_text(text: str, model: str = "gpt-4o") -> int:
    """Tokens in ``text`` for ``model``; special-token text (``<|endoftext|>``) counts as plain text."""
    return encoding_for(model).count(text)


# ------------------------------------------------------------------------------ request counting

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
TOOLS_PREAMBLE_TOKENS = 12
TOKENS_PER_TOOL = 8
RESPONSE_FORMAT_TOKENS = 8
TOKENS_PER_TOOL_CALL = 3
TOKENS_PER_TOOL_RESULT = 3

IMAGE_BASE_TOKENS = 85
IMAGE_TILE_TOKENS = 170
IMAGE_MAX_SIDE = 2048
IMAGE_SHORT_SIDE = 768
IMAGE_TILE = 512
IMAGE_ASSUMED_SIZE = (1024, 1024)

AUDIO_TOKENS_PER_SECOND = 10
_AUDIO_BYTES_PER_SECOND = {"pcm16": 48_000, "g711_ulaw": 8_000, "g711_alaw": 8_000}
_AUDIO_DEFAULT_BYTES_PER_SECOND = 16_000

FILE_PAGE_TOKENS = 1_500
FILE_BYTES_PER_TOKEN = 4
_TEXT_MEDIA_TYPES = (
    "application/json",
    "application/xml",
    "application/yaml",
    "application/x-yaml",
    "application/javascript",
    "application/x-ndjson",
    "application/csv",
    "application/x-sh",
    "application/sql",
)
_PDF_PAGE = re.compile(rb"/Type\s*/Page(?![a-zA-Z])")


def count_request_tokens(req: Request) -> int:
    """Estimated input tokens of ``req`` for ``req.model`` (see the module docstring for the rules)."""
    enc = encoding_for(req.model)
    total = REPLY_PRIMING_TOKENS
    for message in req.messages:
        total += count_message_tokens(message, enc)
    if req.tools:
        total += TOOLS_PREAMBLE_TOKENS + sum(_tool_tokens(tool, enc) for tool in req.tools)
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_schema":
        total += RESPONSE_FORMAT_TOKENS + _text(enc, fmt.name) + _text(enc, fmt.description)
        if fmt.schema is not None:
            total += _text(enc, _json(fmt.schema))
    return total


def count_message_tokens(message: Message, enc: Encoding) -> int:
    """One message: its framing (3 + the role's tokens, and 1 + the name's tokens) and its parts."""
    total = TOKENS_PER_MESSAGE + _text(enc, message.role)
    if message.name:
        total += TOKENS_PER_NAME + _text(enc, message.name)
    return total + sum(_part_tokens(part, enc) for part in message.content)


def _part_tokens(part: Part, enc: Encoding) -> int:
    match part:
        case Text(text=text) | Refusal(text=text):
            return _text(enc, text)
        case Image():
            return _image_part_tokens(part)
        case Audio(data=data, format=fmt):
            return _audio_tokens(data, fmt)
        case File():
            return _file_tokens(part, enc)
        case ToolCall(name=name, arguments=arguments):
            return TOKENS_PER_TOOL_CALL + _text(enc, name) + _text(enc, arguments)
        case ToolResult(content=content):
            return TOKENS_PER_TOOL_RESULT + sum(_part_tokens(p, enc) for p in content)
        case Reasoning(summary=summary, text=text):
            return sum(_text(enc, s) for s in summary) + _text(enc, text)
        case ProviderItem(data=data):
            return _text(enc, _json({k: v for k, v in data.items() if k != "encrypted_content"}))


def _tool_tokens(tool: Tool, enc: Encoding) -> int:
    spec: dict[str, Any] = {"name": tool.name}
    if tool.description:
        spec["description"] = tool.description
    if tool.parameters is not None:
        spec["parameters"] = tool.parameters
    return TOKENS_PER_TOOL + _text(enc, _json(spec))


def _text(enc: Encoding, text: str | None) -> int:
    return enc.count(text) if text else 0


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


# ----------------------------------------------------------------------------------------- images


def image_tokens(width: int | None, height: int | None, detail: str | None = None) -> int:
    """OpenAI's vision estimate for a ``width`` x ``height`` image (1024x1024 when unknown)."""
    if detail == "low":
        return IMAGE_BASE_TOKENS
    if not width or not height or width <= 0 or height <= 0:
        width, height = IMAGE_ASSUMED_SIZE
    w, h = float(width), float(height)
    if max(w, h) > IMAGE_MAX_SIDE:
        scale = IMAGE_MAX_SIDE / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > IMAGE_SHORT_SIDE:
        scale = IMAGE_SHORT_SIDE / min(w, h)
        w, h = w * scale, h * scale
    # Whole pixels, as a resized image has; rounding keeps 1536.0000001 from becoming a 4th tile.
    tiles_w = math.ceil(max(1, round(w)) / IMAGE_TILE)
    tiles_h = math.ceil(max(1, round(h)) / IMAGE_TILE)
    return IMAGE_BASE_TOKENS + IMAGE_TILE_TOKENS * tiles_w * tiles_h


def _image_part_tokens(image: Image) -> int:
    if image.detail == "low":
        return IMAGE_BASE_TOKENS
    data = image.data
    if data is None and image.url:
        data = _data_url(image.url)[1]
    width, height = (image_size(data) if data else None) or (None, None)
    return image_tokens(width, height, image.detail)


def _data_url(url: str) -> tuple[str, bytes | None]:
    """``(media_type, bytes)`` of a base64 ``data:`` URL; ``("", None)`` for anything else."""
    if not url.startswith("data:"):
        return "", None
    header, sep, payload = url[5:].partition(",")
    if not sep or not header.endswith(";base64"):
        return "", None
    try:
        return header.removesuffix(";base64"), base64.b64decode(payload)
    except ValueError:
        return "", None


def image_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG, JPEG, GIF or WEBP header, or ``None`` if unrecognised."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return _positive(int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
        return None
    if data.startswith((b"GIF87a", b"GIF89a")):
        if len(data) >= 10:
            return _positive(int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little"))
        return None
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    return None


def _positive(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


# Start-of-frame markers (baseline, progressive, lossless, ...): C0-CF but DHT, JPG and DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _JPEG_STANDALONE:
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header found
            return None
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in _JPEG_SOF:
            if i + 9 > n:
                return None
            height = int.from_bytes(data[i + 5 : i + 7], "big")
            width = int.from_bytes(data[i + 7 : i + 9], "big")
            return _positive(width, height)
        if length < 2:
            return None
        i += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width = int.from_bytes(data[26:28], "little") & 0x3FFF
        height = int.from_bytes(data[28:30], "little") & 0x3FFF
        return _positive(width, height)
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = int.from_bytes(data[21:25], "little")
        return ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    if chunk == b"VP8X" and len(data) >= 30:
        return (int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1)
    return None


# ------------------------------------------------------------------------------------ audio, files


def _audio_tokens(data: bytes, fmt: str) -> int:
    seconds = _wav_seconds(data)
    if seconds is None:
        rate = _AUDIO_BYTES_PER_SECOND.get(fmt.lower(), _AUDIO_DEFAULT_BYTES_PER_SECOND)
        seconds = len(data) / rate
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def _wav_seconds(data: bytes) -> float | None:
    """Duration of a RIFF/WAVE file from its ``fmt `` byte rate and ``data`` chunk size."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    i, byte_rate = 12, 0
    while i + 8 <= len(data):
        chunk, size = data[i : i + 4], int.from_bytes(data[i + 4 : i + 8], "little")
        if chunk == b"fmt " and i + 20 <= len(data):
            byte_rate = int.from_bytes(data[i + 16 : i + 20], "little")
        elif chunk == b"data":
            if not byte_rate:
                return None
            # A streamed WAV may carry a placeholder size: never count past the bytes we have.
            return min(size, len(data) - i - 8) / byte_rate
        i += 8 + size + (size & 1)
    return None


def _file_tokens(file: File, enc: Encoding) -> int:
    name = _text(enc, file.filename)
    data, media_type = file.data, file.media_type or ""
    if data is None and file.url:
        url_type, data = _data_url(file.url)
        media_type = media_type or url_type
    if data is None:
        return name + FILE_PAGE_TOKENS
    media_type = media_type.split(";", 1)[0].strip().lower()
    if media_type == "application/pdf" or data.startswith(b"%PDF-"):
        return name + FILE_PAGE_TOKENS * max(1, len(_PDF_PAGE.findall(data)))
    if (
        media_type.startswith("text/")
        or media_type in _TEXT_MEDIA_TYPES
        or media_type.endswith(("+json", "+xml"))
    ):
        return name + _text(enc, data.decode("utf-8", errors="replace"))
    return name + math.ceil(len(data) / FILE_BYTES_PER_TOKEN)
