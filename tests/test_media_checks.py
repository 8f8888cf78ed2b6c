"""The media endpoints' own checks (gateway/media.py), one table each: sizes per model, the
transparent-background rewrite per host, form fields typed, speech options per model and host."""

from __future__ import annotations

from typing import Any

import pytest

from modelwire.errors import InvalidRequestError
from modelwire.gateway.config import parse_config
from modelwire.gateway.media import check_for_backend, check_image_options, form_body, upstream_model
from modelwire.gateway.routing import Target
from modelwire.gateway.upstream import Backend
from modelwire.providers.catalog import Catalog
from modelwire.providers.transport import AiohttpTransport


def backend(kind: str, **extra: Any) -> Backend:
    config = parse_config(
        {"backends": {"b": {"type": kind, "api_key": "k", "base_url": "https://h.example/v1", **extra}}}
    )
    return Backend("b", config.backends["b"], Catalog(), AiohttpTransport())


@pytest.mark.parametrize(
    ("model", "size", "ok"),
    [
        ("gpt-image-2", "3840x2160", True),  # 4K
        ("gpt-image-2", "2560x1440", True),  # 2K
        ("gpt-image-2", "1536x864", True),
        ("gpt-image-2", "3856x2160", False),  # an edge past 3840
        ("gpt-image-2", "1000x1000", False),  # not divisible by 16
        ("gpt-image-2", "3840x1024", False),  # wider than 3:1
        ("gpt-image-1.5", "1536x1024", True),
        ("gpt-image-1.5", "2560x1440", False),  # only gpt-image-2 takes free sizes
        ("gpt-image-1-mini", "auto", True),
        ("my-diffusion", "777x333", True),  # not an OpenAI image model: its server decides
    ],
)
def test_sizes_per_model(model: str, size: str, ok: bool) -> None:
    body = {"model": model, "prompt": "x", "size": size}
    if ok:
        check_image_options(body)
    else:
        with pytest.raises(InvalidRequestError) as caught:
            check_image_options(body)
        assert caught.value.param == "size"


@pytest.mark.parametrize(
    ("kind", "model", "expected"),
    [
        ("openai", "gpt-image-2", "gpt-image-1.5"),
        ("openai", "gpt-image-2-2026-04-21", "gpt-image-1.5"),
        ("openai", "gpt-image-1", "gpt-image-1"),
        ("codex", "gpt-image-2", "gpt-image-1.5"),
        ("azure", "gpt-image-2", "gpt-image-2"),  # a deployment name: the operator's
        ("openai-compatible", "gpt-image-2", "gpt-image-2"),
    ],
)
def test_transparent_backgrounds_are_rewritten_only_where_names_are_openais(
    kind: str, model: str, expected: str
) -> None:
    body = {"background": "transparent"}
    assert upstream_model("image_generation", Target("b", model), backend(kind), body) == expected
    assert (
        upstream_model("image_generation", Target("b", model), backend(kind), {"background": "auto"}) == model
    )


def test_form_fields_are_typed_and_a_wrong_one_is_named() -> None:
    assert form_body({"n": "2", "stream": "true", "temperature": "0.5", "prompt": "p"}) == {
        "n": 2,
        "stream": True,
        "temperature": 0.5,
        "prompt": "p",
    }
    for fields, name in (
        ({"n": "two"}, "n"),
        ({"stream": "yes"}, "stream"),
        ({"temperature": "hot"}, "temperature"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            form_body(fields)
        assert caught.value.param == name


def test_speech_options_per_model_and_host() -> None:
    openai = backend("openai")
    check_for_backend("speech", "gpt-4o-mini-tts", openai, {"voice": "marin", "instructions": "calm"})
    for model, body, field in (
        ("tts-1", {"voice": "alloy", "instructions": "calm"}, "instructions"),
        ("tts-1-hd", {"voice": "alloy", "stream_format": "sse"}, "stream_format"),
        ("gpt-4o-mini-tts", {"voice": "af_bella"}, "voice"),
    ):
        with pytest.raises(InvalidRequestError) as caught:
            check_for_backend("speech", model, openai, body)
        assert caught.value.param == field
    check_for_backend(
        "speech", "kokoro", backend("openai-compatible"), {"voice": "af_bella"}
    )  # its own voices
