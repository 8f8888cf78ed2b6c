"""Driver behaviours 8-11: catalog discovery, observability, the Python API, ``modelwire chat``."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import modelwire as mw
from modelwire.observe import (
    RequestSent,
    ResponseReceived,
    RetryScheduled,
    StreamAborted,
    StreamEnded,
    StreamStarted,
    redact,
)
from modelwire.types import BlockDelta, Finish

from .driver_fixtures import Recorder, collect, driver
from .fake_upstream import FakeUpstream, Reply, embedding_for

ROOT = Path(__file__).resolve().parent.parent
MODELWIRE = str(Path(sys.executable).parent / "modelwire")


# --------------------------------------------------------------------------------------- 8. catalog


async def test_discovery_merges_the_upstreams_models(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    ids = await client.list_models()
    assert ids == upstream.models
    assert client.catalog.models() == sorted(upstream.models)
    assert client.catalog.profile("gpt-4.1").known
    await client.aclose()


async def test_embeddings(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    result = await client.embed(["hello", "world"], model="text-embedding-3-small")
    assert upstream.last.body["encoding_format"] == "base64"
    assert result.vectors[0] == pytest.approx(embedding_for("hello"), rel=1e-6)
    assert len(result.vectors) == 2 and result.usage.input_tokens > 0
    assert result.usage.cost is not None
    await client.aclose()


# --------------------------------------------------------------------------------- 9. observability


async def test_events_for_a_call_with_a_retry(upstream: FakeUpstream) -> None:
    events = Recorder()
    client = driver(upstream, on_event=events)
    upstream.script(Reply.error(503), Reply.text("ok"))
    await client.complete(model="gpt-4.1", messages=[mw.user("q")])
    assert [e.attempt for e in events.of(RequestSent)] == [0, 1]
    assert len(events.of(RetryScheduled)) == 1
    (received,) = events.of(ResponseReceived)
    assert received.status == 200 and received.usage is not None
    await client.aclose()


async def test_stream_events_start_end_and_abort(upstream: FakeUpstream) -> None:
    events = Recorder()
    client = driver(upstream, on_event=events)
    await collect(client.stream(model="gpt-4.1", messages=[mw.user("q")]))
    assert len(events.of(StreamStarted)) == 1 and len(events.of(StreamEnded)) == 1
    upstream.script(Reply.stream_error("a b c d e f g h", after=6))
    with pytest.raises(mw.ModelwireError):
        await collect(client.stream(model="gpt-4.1", messages=[mw.user("q")]))
    assert len(events.of(StreamAborted)) == 1
    await client.aclose()


async def test_debug_and_raw_modes_log_without_secrets(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="modelwire")
    client = driver(upstream, raw=True)
    upstream.script(Reply.text("the answer"))
    await client.complete(model="gpt-4.1", messages=[mw.user("say sk-live-abcdef1234567890 back")])
    assert "RequestSent" in caplog.text and "the answer" in caplog.text  # summaries and whole payloads
    assert "sk-test-key-123456" not in caplog.text and "sk-live-abcdef1234567890" not in caplog.text
    assert "[REDACTED]" in caplog.text
    await client.aclose()


def test_redaction_patterns() -> None:
    text = "Bearer abc.def key sk-proj-AAAAAAAAAAAA AIzaSyA-1234567890123456789012 ?key=secret&x=1"
    out = redact(text)
    for secret in ("abc.def", "sk-proj-AAAAAAAAAAAA", "AIzaSyA-1234567890123456789012", "secret"):
        assert secret not in out


# ---------------------------------------------------------------------------------- 10. Python API


def test_sync_api(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    upstream.script(Reply.text("sync hello"), Reply.text("sync stream"))
    assert client.complete_sync(model="gpt-4.1", messages="hi").text == "sync hello"
    events = list(client.stream_sync(model="gpt-4.1", messages=[mw.user("hi")]))
    assert "".join(e.text for e in events if isinstance(e, BlockDelta)) == "sync stream"
    assert isinstance(events[-1], Finish)


async def test_request_object_and_keyword_forms_agree(upstream: FakeUpstream) -> None:
    client = driver(upstream)
    await client.complete(mw.Request(model="gpt-4.1", messages=[mw.user("q")], temperature=0.5))
    by_object = upstream.last.body
    await client.complete(model="gpt-4.1", messages=[mw.user("q")], temperature=0.5)
    assert upstream.last.body == by_object
    with pytest.raises(mw.InvalidRequestError, match="model"):
        await client.complete(messages=[mw.user("q")])
    await client.aclose()


def test_message_helpers() -> None:
    assert mw.user("a", mw.Image(url="u")).content[1] == mw.Image(url="u")
    assert mw.system("s").role == "system" and mw.developer("d").role == "developer"
    result = mw.tool_result("call_1", "out", is_error=True)
    assert result.role == "tool" and result.content[0] == mw.ToolResult(
        call_id="call_1", content=[mw.Text(text="out")], is_error=True
    )


def test_public_api_is_curated() -> None:
    import types

    public = {
        name
        for name, value in vars(mw).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public == set(mw.__all__) - {"__version__"}  # nothing exported by accident, nothing missing
    assert mw.__all__ == sorted(mw.__all__)


def test_readme_example_runs(upstream: FakeUpstream) -> None:
    readme = (ROOT / "README.md").read_text()
    example = re.search(r"## The library\n\n```python\n(.*?)```", readme, re.S)
    assert example is not None
    upstream.script(
        Reply.tool_calls([("get_weather", '{"city": "Paris"}')]),
        Reply.text("It is 18°C and sunny in Paris."),
        Reply.text("one two three four five"),
    )
    env = {**os.environ, "OPENAI_API_KEY": "sk-readme", "OPENAI_BASE_URL": upstream.url}
    out = subprocess.run(
        [sys.executable, "-c", example.group(1)], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "It is 18°C and sunny in Paris." in out.stdout and "one two three four five" in out.stdout
    assert re.search(r"\d+ tokens, \$\d+\.\d{6}", out.stdout)
    tool_turn = upstream.requests[1].body["input"]
    assert tool_turn[-1]["type"] == "function_call_output" and tool_turn[-1]["output"] == "18°C and sunny"


# ---------------------------------------------------------------------------------- 11. the CLI


def run_cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI"))}
    return subprocess.run(
        [MODELWIRE, *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )


def test_cli_chat_streams_and_reports_usage(upstream: FakeUpstream) -> None:
    upstream.script(Reply.text("Keep-alive reuses connections.", usage=(21, 5)))
    out = run_cli(
        "chat",
        "-m",
        "gpt-4.1",
        "what is keep-alive?",
        env={"OPENAI_API_KEY": "sk-cli", "OPENAI_BASE_URL": upstream.url},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Keep-alive reuses connections."
    assert "in 21" in out.stderr and "out 5" in out.stderr and "$" in out.stderr
    assert upstream.last.body["input"][0]["content"] == "what is keep-alive?"


def test_cli_chat_api_and_reasoning_flags(upstream: FakeUpstream) -> None:
    out = run_cli(
        "chat",
        "-m",
        "gpt-5.1",
        "--api",
        "chat",
        "--reasoning",
        "low",
        "-",
        env={"OPENAI_API_KEY": "sk-cli", "OPENAI_BASE_URL": upstream.url},
        stdin="from stdin",
    )
    assert out.returncode == 0, out.stderr
    body = upstream.last.body
    assert upstream.last.path == "/v1/chat/completions" and body["reasoning_effort"] == "low"
    assert body["messages"][-1]["content"] == "from stdin"


def test_cli_chat_without_a_key() -> None:
    out = run_cli("chat", "-m", "gpt-4.1", "hi")
    assert out.returncode == 2 and "no API key" in out.stderr and "OPENAI_API_KEY" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_chat_unreachable_host() -> None:
    out = run_cli(
        "chat", "-m", "gpt-4.1", "hi", "--base-url", "http://127.0.0.1:9/v1", env={"OPENAI_API_KEY": "sk-cli"}
    )
    assert out.returncode == 1 and "cannot reach http://127.0.0.1:9/v1" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_chat_rejected_key(upstream: FakeUpstream) -> None:
    upstream.script(Reply.error(401, "Incorrect API key provided"))
    out = run_cli("chat", "hi", env={"OPENAI_API_KEY": "sk-bad", "OPENAI_BASE_URL": upstream.url})
    assert out.returncode == 1 and "refused the key" in out.stderr and "sk-bad" not in out.stderr
