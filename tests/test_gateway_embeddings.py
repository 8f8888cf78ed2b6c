"""Embeddings across dialects, end to end: the OpenAI SDK (``embeddings.create``) and google-genai
(``models.embed_content``, which posts ``:batchEmbedContents``; ``:embedContent`` raw) against a
real gateway, each over an upstream of its own dialect (the body goes as it came) and one of the
other (translated both ways). The fake upstream validates every request against the vendors' specs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from google import genai
from google.genai import errors, types
from hypothesis import given, settings
from hypothesis import strategies as st

from modelwire.dialects import gemini, openai_embeddings
from modelwire.errors import InvalidRequestError, ProtocolError
from modelwire.types import Embeddings

from .fake_upstream import FakeUpstream, Reply, decoded_embeddings, embedding_for, gemini_embedding
from .gateway_fixtures import (
    CLIENT_KEY,
    RunningGateway,
    add_vendor_backends,
    base_config,
    request,
    running_gateway,
    usage_rows,
)
from .spec import assert_gemini, assert_openai

GEMINI_KEY = "AIza-up-embeddings-000000001"
ANTHROPIC_KEY = "sk-ant-up-embeddings-0001"
GEM = "gem-embed"  # -> a Gemini backend
OAI = "chat-model"  # -> an OpenAI-compatible backend (base_config)
CLAUDE = "claude-embed"  # -> an Anthropic backend, which has no embeddings


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("embeddings-gateway")
    config = base_config(upstream_server, tmp)
    add_vendor_backends(config, upstream_server, anthropic=ANTHROPIC_KEY, gemini=GEMINI_KEY)
    config["models"][:0] = [
        {"name": GEM, "route": "gem/gemini-embedding-001"},
        {"name": CLAUDE, "route": "anthropic/claude-sonnet-4-5"},
    ]
    with running_gateway(config, tmp, name="embeddings-gateway") as running:
        yield running


@pytest.fixture
def google(gateway: RunningGateway) -> Iterator[genai.Client]:
    sdk = genai.Client(api_key=CLIENT_KEY, http_options=types.HttpOptions(base_url=gateway.url))
    yield sdk
    sdk.close()


@pytest.fixture
def oai(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


def post_gemini(gateway: RunningGateway, model: str, action: str, body: Any) -> tuple[int, dict[str, Any]]:
    status, _, raw = request(
        gateway,
        "POST",
        f"/v1beta/models/{model}:{action}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", "x-goog-api-key": CLIENT_KEY, "Authorization": ""},
    )
    return status, json.loads(raw)


def texts(*words: str) -> dict[str, Any]:
    return {"parts": [{"text": word} for word in words]}


# ------------------------------------------------------------------------------------ Gemini clients


@pytest.mark.parametrize("model", [GEM, OAI])
def test_google_genai_embed_content(
    upstream: FakeUpstream, google: genai.Client, gateway: RunningGateway, model: str
) -> None:
    """Two texts at four dimensions: a Gemini upstream gets the SDK's own batch (each request naming
    the route's model), an OpenAI one an embeddings request; the SDK reads the vectors either way,
    and the usage row counts the input (offline where Gemini counts nothing)."""
    config = types.EmbedContentConfig(output_dimensionality=4, task_type="RETRIEVAL_DOCUMENT")
    result = google.models.embed_content(model=model, contents=["red fox", "blue whale"], config=config)
    assert result.embeddings is not None
    vectors = [e.values for e in result.embeddings]
    sent = upstream.last
    if model == GEM:
        assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        assert [r["model"] for r in sent.body["requests"]] == ["models/gemini-embedding-001"] * 2
        assert sent.body["requests"][0]["taskType"] == "RETRIEVAL_DOCUMENT"
        assert vectors == [pytest.approx(gemini_embedding(r)) for r in sent.body["requests"]]
    else:
        assert sent.path == "/v1/embeddings"
        assert sent.body == {
            "model": "gpt-4.1",
            "input": ["red fox", "blue whale"],
            "encoding_format": "float",
            "dimensions": 4,
        }
        assert vectors == [pytest.approx(embedding_for(t, 4)) for t in ("red fox", "blue whale")]
    assert all(len(v or []) == 4 for v in vectors)


@pytest.mark.parametrize("model", [GEM, OAI])
def test_embed_content_single(upstream: FakeUpstream, gateway: RunningGateway, model: str) -> None:
    """``:embedContent`` (one content; its texts embedded together) answers ``{embedding: {values}}``."""
    status, doc = post_gemini(gateway, model, "embedContent", {"content": texts("one", "two")})
    assert status == 200, doc
    assert_gemini("EmbedContentResponse", doc)
    if model == GEM:
        assert upstream.last.path.endswith("/gemini-embedding-001:embedContent")
        assert "model" not in upstream.last.body  # the URL names it
        expected = gemini_embedding({"content": texts("one", "two")})
    else:
        assert upstream.last.body["input"] == ["one\ntwo"]
        expected = embedding_for("one\ntwo")
    assert doc["embedding"]["values"] == pytest.approx(expected)


def test_a_gemini_embedding_is_accounted(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    status, _, raw = request(
        gateway,
        "POST",
        f"/v1beta/models/{GEM}:batchEmbedContents",
        json.dumps(
            {"requests": [{"model": f"models/{GEM}", "content": texts("count these four words")}]}
        ).encode(),
        {"Content-Type": "application/json", "x-goog-api-key": CLIENT_KEY, "x-request-id": "emb-count-1"},
    )
    assert status == 200, raw
    (row,) = usage_rows(gateway, "emb-count-1")
    assert (row["status"], row["public_model"], row["backend"], row["dialect"]) == (200, GEM, "gem", "gemini")
    assert row["input_tokens"] == 4 and row["output_tokens"] == 0


# ------------------------------------------------------------------------------------ OpenAI clients


@pytest.mark.parametrize("encoding", ["float", "base64", None])
def test_openai_embeddings_from_a_gemini_upstream(
    upstream: FakeUpstream, oai: openai.OpenAI, encoding: str | None
) -> None:
    """The SDK asks base64 unless told (and decodes it); either way it gets Gemini's vectors, in
    order, and a token count, though Gemini gave none."""
    extra: dict[str, Any] = {"encoding_format": encoding} if encoding else {}
    raw = oai.embeddings.with_raw_response.create(
        model=GEM, input=["alpha", "beta gamma"], dimensions=4, **extra
    )
    sent_back = json.loads(raw.content)
    as_base64 = encoding != "float"  # the SDK asks base64 by itself
    assert all(isinstance(d["embedding"], str) == as_base64 for d in sent_back["data"])
    doc = decoded_embeddings(sent_back)  # little-endian float32, read back
    assert_openai("CreateEmbeddingResponse", doc)
    sent = upstream.last
    assert sent.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent.body == {
        "requests": [
            {"model": "models/gemini-embedding-001", "outputDimensionality": 4, "content": texts("alpha")},
            {
                "model": "models/gemini-embedding-001",
                "outputDimensionality": 4,
                "content": texts("beta gamma"),
            },
        ]
    }
    assert [d["index"] for d in doc["data"]] == [0, 1]
    for item, request_sent in zip(doc["data"], sent.body["requests"], strict=True):
        assert item["embedding"] == pytest.approx(gemini_embedding(request_sent), rel=1e-6)
    result = raw.parse()
    if encoding is None:  # decoded by the SDK itself
        assert result.data[1].embedding == pytest.approx(gemini_embedding(sent.body["requests"][1]), rel=1e-6)
    assert result.model == GEM and result.usage.prompt_tokens == 3


def test_token_arrays_reach_a_gemini_upstream_as_text(upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    """Token ids (as LangChain sends them) are read back as text with cl100k_base, the encoding of
    OpenAI's embedding models; one array alone is one input."""
    for tokens, expected in (
        ([[9906, 1917], [9906]], ["Hello world", "Hello"]),
        ([9906, 1917], ["Hello world"]),
    ):
        result = oai.embeddings.create(model=GEM, input=tokens, encoding_format="float")
        assert [r["content"]["parts"][0]["text"] for r in upstream.last.body["requests"]] == expected
        assert len(result.data) == len(expected)


def test_openai_embeddings_pass_through_untouched(upstream: FakeUpstream, oai: openai.OpenAI) -> None:
    """Between two OpenAI ends the body goes as it came (token arrays too), with the route's model."""
    oai.embeddings.create(model=OAI, input=[[1, 2, 3]], encoding_format="float", user="u-1")
    assert upstream.last.body == {
        "model": "gpt-4.1",
        "input": [[1, 2, 3]],
        "encoding_format": "float",
        "user": "u-1",
    }


# ------------------------------------------------------------------------------------------- errors


def test_what_cannot_be_translated_is_a_400_in_the_clients_dialect(
    upstream: FakeUpstream, oai: openai.OpenAI, gateway: RunningGateway
) -> None:
    upstream.requests.clear()
    with pytest.raises(openai.BadRequestError) as tokens:
        oai.embeddings.create(model=GEM, input=[[9906, 1917], [10**9]])
    assert "input[1]: a token id cl100k_base does not have" in str(tokens.value.body)
    image = {"parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}
    status, doc = post_gemini(gateway, OAI, "embedContent", {"content": image})
    assert status == 400 and doc["error"]["status"] == "INVALID_ARGUMENT"
    assert "only text parts" in doc["error"]["message"]
    for body in ({"requests": []}, {"requests": [{"content": "not an object"}]}, {"content": None}):
        status, doc = post_gemini(
            gateway, OAI, "batchEmbedContents" if "requests" in body else "embedContent", body
        )
        assert status == 400 and doc["error"]["status"] == "INVALID_ARGUMENT", doc
    assert not upstream.requests  # nothing half-made went upstream


@pytest.mark.parametrize("dialect", ["openai", "gemini"])
def test_a_backend_without_embeddings_says_so(
    oai: openai.OpenAI, gateway: RunningGateway, dialect: str
) -> None:
    if dialect == "openai":
        with pytest.raises(openai.BadRequestError) as info:
            oai.embeddings.create(model=CLAUDE, input="hi")
        message = str(info.value.body)
    else:
        status, doc = post_gemini(gateway, CLAUDE, "embedContent", {"content": texts("hi")})
        assert status == 400
        message = doc["error"]["message"]
    assert "backend 'anthropic' serves no embeddings" in message


def test_an_upstream_error_reaches_the_client_in_its_dialect(
    upstream: FakeUpstream, google: genai.Client, oai: openai.OpenAI
) -> None:
    upstream.script(Reply.error(400, "outputDimensionality too large"))
    with pytest.raises(openai.BadRequestError) as refused:
        oai.embeddings.create(model=GEM, input="x")
    assert "outputDimensionality too large" in str(refused.value.body)
    upstream.script(Reply.error(400, "bad dimensions"))
    with pytest.raises(errors.ClientError) as info:
        google.models.embed_content(model=OAI, contents="x")
    assert info.value.code == 400 and "bad dimensions" in str(info.value.message)


def test_a_wrong_key_is_refused_before_any_upstream(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    upstream.requests.clear()
    status, _, raw = request(
        gateway,
        "POST",
        f"/v1beta/models/{GEM}:embedContent",
        json.dumps({"content": texts("hi")}).encode(),
        {
            "Content-Type": "application/json",
            "x-goog-api-key": "AIza-not-a-key-of-this-gateway",
            "Authorization": "",
        },
    )
    assert status == 401 and json.loads(raw)["error"]["status"] == "UNAUTHENTICATED"
    assert not upstream.requests


@pytest.mark.parametrize(
    ("model", "garbage"),
    [
        (GEM, b'{"embeddings": [{"values": ["not", "numbers"]}]}'),
        (GEM, b'{"embeddings": "none"}'),
        (GEM, b"<html>bad gateway</html>"),
        (OAI, b'{"data": [{"index": 0, "embedding": "not base64!"}]}'),
        (OAI, b'{"data": [{"index": 0, "embedding": "AAAA"}, {"index": 1, "embedding": "AAA="}]}'),
        (OAI, b'{"data": [{"index": 0, "embedding": [0.5]}]}'),  # one vector for two texts
    ],
)
def test_upstream_garbage_is_a_502_in_the_clients_dialect(
    upstream: FakeUpstream, gateway: RunningGateway, oai: openai.OpenAI, model: str, garbage: bytes
) -> None:
    """Answers the translation cannot read (not numbers, not float32 base64, too few vectors, not
    JSON) are the upstream's fault, said as such: never a 500 or a half-made answer."""
    upstream.script(Reply.raw(200, garbage, {"Content-Type": "application/json"}))
    if model == GEM:
        with pytest.raises(openai.APIStatusError) as info:
            oai.embeddings.create(model=GEM, input=["a", "b"], encoding_format="float")
        assert info.value.status_code == 502
    else:
        status, doc = post_gemini(
            gateway,
            OAI,
            "batchEmbedContents",
            {
                "requests": [
                    {"model": f"models/{OAI}", "content": texts("a")},
                    {"model": f"models/{OAI}", "content": texts("b")},
                ]
            },
        )
        assert status == 502 and doc["error"]["status"] in ("UNAVAILABLE", "INTERNAL"), doc


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_fields = st.sampled_from(
    [
        "model",
        "input",
        "dimensions",
        "content",
        "requests",
        "parts",
        "text",
        "outputDimensionality",
        "taskType",
        "data",
        "embedding",
        "embeddings",
        "values",
        "index",
        "usage",
    ]
)
_bodies = st.dictionaries(_fields, _json | st.dictionaries(_fields, _json, max_size=3), max_size=4)


@settings(max_examples=300, deadline=None)
@given(body=_bodies, batch=st.booleans())
def test_the_embedding_codecs_refuse_what_they_cannot_read_with_their_own_errors(
    body: dict[str, Any], batch: bool
) -> None:
    """Whatever JSON arrives, a client's body reads or is a 400, an upstream's answer reads or is
    a protocol error (502): never another exception, which would be a 500 and a traceback."""
    for read in (
        openai_embeddings.decode_request,
        lambda b: gemini.decode_embed_request(b, "m", batch=batch),
    ):
        try:
            request = read(body)
        except InvalidRequestError:
            continue
        assert request.inputs and all(isinstance(text, str) for text in request.inputs)
    for answer in (openai_embeddings.decode_response, gemini.decode_embed_response):
        try:
            embeddings = answer(body)
        except ProtocolError:
            continue
        for vector in embeddings.vectors:
            assert all(type(x) in (int, float) for x in vector)


@given(
    st.lists(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=16), min_size=1, max_size=4)
)
def test_a_base64_answer_reads_back_as_the_same_float32s(vectors: list[list[float]]) -> None:
    rendered = openai_embeddings.render_response(
        Embeddings(vectors=vectors, input_tokens=3), "m", as_base64=True
    )
    assert all(isinstance(item["embedding"], str) for item in rendered["data"])
    assert openai_embeddings.decode_response(rendered) == Embeddings(vectors=vectors, input_tokens=3)


def test_gemini_embeddings_are_limited_counted_and_logged(
    upstream: FakeUpstream, gateway: RunningGateway
) -> None:
    """The key's rpm holds here as on every route (the refusal in Google's shape), each request is
    counted in /metrics by model and status, and each has its line in the request log."""
    rpm_key = "sk-client-rpm-000000000"  # base_config: 2 requests a minute
    statuses, docs = [], []
    for n in range(3):
        status, _, raw = request(
            gateway,
            "POST",
            f"/v1beta/models/{GEM}:embedContent",
            json.dumps({"content": texts(f"limited {n}")}).encode(),
            {
                "Content-Type": "application/json",
                "x-goog-api-key": rpm_key,
                "Authorization": "",
                "x-request-id": f"emb-limited-{n}",
            },
        )
        statuses.append(status)
        docs.append(json.loads(raw))
    assert statuses == [200, 200, 429], docs
    assert docs[2]["error"]["status"] == "RESOURCE_EXHAUSTED"
    status, _, payload = request(gateway, "GET", "/metrics")
    counted = [line for line in payload.decode().splitlines() if line.startswith("modelwire_requests_total{")]
    for code in ("200", "429"):
        assert any(f'model="{GEM}"' in line and f'status="{code}"' in line for line in counted), counted
    deadline = time.monotonic() + 5  # the request log is written in batches
    while not all(f"request_id=emb-limited-{n} " in gateway.log() for n in range(3)):
        assert time.monotonic() < deadline, gateway.log()[-2000:]
        time.sleep(0.05)
