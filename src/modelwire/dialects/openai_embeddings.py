"""OpenAI Embeddings (``POST /v1/embeddings``, PROTOCOLS.md §3), both ways: a client's request read
into an :class:`EmbeddingRequest` and its answer written back; an upstream's request written and
its answer read. Used only when the other side speaks another dialect: between two OpenAI ends the
gateway forwards the bytes.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from typing import Any

from ..errors import ProtocolError
from ..tokens import decode_tokens
from ..types import EmbeddingRequest, Embeddings
from . import check


def decode_request(body: dict[str, Any]) -> EmbeddingRequest:
    """A client's body. Token arrays (LangChain's ``OpenAIEmbeddings`` sends them) are read back
    as text in ``cl100k_base``, the encoding of OpenAI's embedding models, which such clients
    tokenize with; the first read loads it, so call this off the event loop."""
    raw = body.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif type(raw) is list and raw and all(isinstance(item, str) for item in raw):
        inputs = raw
    elif type(raw) is list and raw and all(type(item) is int for item in raw):
        inputs = [_text_of(raw, "input")]
    elif type(raw) is list and raw and all(type(item) is list for item in raw):
        inputs = [_text_of(ids, f"input[{i}]") for i, ids in enumerate(raw)]
    else:
        check.fail("input", "expected a string, an array of strings, or token arrays")
    dimensions = check.get(body, "dimensions", int, "")
    if dimensions is not None and dimensions < 1:
        check.fail("dimensions", "must be at least 1")
    return EmbeddingRequest(model=check.need(body, "model", str, ""), inputs=inputs, dimensions=dimensions)


def _text_of(ids: list[Any], path: str) -> str:
    if not ids or not all(type(i) is int for i in ids):
        check.fail(path, "expected a non-empty array of token ids")
    try:
        return decode_tokens(ids)
    except ValueError as exc:
        check.fail(path, str(exc))


def render_response(embeddings: Embeddings, model: str, *, as_base64: bool) -> dict[str, Any]:
    """The answer a client reads; ``as_base64`` when it asked ``encoding_format: base64`` (the
    OpenAI SDK does by default): little-endian float32, as OpenAI sends it."""
    tokens = embeddings.input_tokens or 0
    data = [
        {"object": "embedding", "index": index, "embedding": _base64(vector) if as_base64 else vector}
        for index, vector in enumerate(embeddings.vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def encode_request(req: EmbeddingRequest) -> dict[str, Any]:
    """The body for an OpenAI (or OpenAI-compatible) upstream."""
    body: dict[str, Any] = {"model": req.model, "input": req.inputs, "encoding_format": "float"}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    return body


def decode_response(doc: dict[str, Any]) -> Embeddings:
    """An upstream's answer: its vectors in input order (floats or base64), its token count."""
    data = doc.get("data")
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ProtocolError("the upstream's embeddings answer has no data array")
    ordered = sorted(data, key=lambda item: item.get("index", 0))
    vectors = [_vector(item.get("embedding")) for item in ordered]
    usage = doc.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return Embeddings(vectors=vectors, input_tokens=tokens if isinstance(tokens, int) else None)


def _vector(value: Any) -> list[float]:
    if check.numbers(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        try:
            floats = array("f", base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):  # not base64, or not a whole number of float32s
            raise ProtocolError("the upstream sent an embedding that is not base64 float32") from None
        if sys.byteorder == "big":
            floats.byteswap()
        return floats.tolist()
    raise ProtocolError("the upstream sent an embedding that is neither numbers nor base64")


def _base64(vector: list[float]) -> str:
    floats = array("f", vector)
    if sys.byteorder == "big":
        floats.byteswap()
    return base64.b64encode(floats.tobytes()).decode()
