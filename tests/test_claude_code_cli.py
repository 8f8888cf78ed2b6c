"""Claude Code against the gateway, the way the README points it: ``ANTHROPIC_BASE_URL`` at the
gateway and the client key in ``ANTHROPIC_API_KEY``, run headless (``claude -p``). It posts to
``/v1/messages?beta=true`` with ``anthropic-beta`` flags, streams every answer, sends a dozen tools
and, for a model name it does not know, ``role: "system"`` messages inside ``messages`` beside the
top-level ``system``; it retries a 401 unless the answer says not to, and probes the base URL with
``/api/hello``.

The client is the real Claude Code (``tests/clients``, installed by ``make test``), its upstream
the fake, which validates every request against the vendors' specs: an Anthropic backend (the fast
path, the client's own body forwarded), and OpenAI Chat and Responses backends (translated).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, RunningGateway, base_config, start_gateway

CLAUDE = Path(__file__).parent / "clients" / "node_modules" / ".bin" / "claude"
ANTHROPIC_KEY = "sk-ant-up-claude-code-0001"
DIRECT = "claude-sonnet-4-5"  # a model Claude Code knows, routed to the Anthropic backend
# A name it does not know, also routed there: then Claude Code sends its environment section as a
# ``role: "system"`` message inside ``messages`` (for a model it knows, in the first user turn).
HOUSE = "claude-house-direct"
TRANSLATED = {
    "chat": ("claude-house-blend", "/v1/chat/completions"),
    "responses": ("resp-model", "/v1/responses"),
}
# Claude Code's environment section (in a system message, or the first user turn).
ENVIRONMENT = "You have been invoked in the following environment"


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """The usual gateway plus an Anthropic backend on the fake, serving ``claude-sonnet-4-5``;
    other ``claude-`` names go to the Chat backend (the base config's ``^claude-`` rule)."""
    tmp = tmp_path_factory.mktemp("claude-code-gateway")
    config = base_config(upstream_server, tmp)
    config["backends"]["anthropic"] = {
        "type": "anthropic",
        "base_url": upstream_server.root,
        "api_key": ANTHROPIC_KEY,
    }
    config["models"][:0] = [
        {"name": DIRECT, "route": f"anthropic/{DIRECT}"},
        {"name": HOUSE, "route": f"anthropic/{DIRECT}"},
    ]
    running = start_gateway(config, tmp)
    try:
        yield running
    finally:
        running.stop()


def claude_env(
    gateway: RunningGateway, workdir: Path, key: str = CLIENT_KEY, quiet: bool = True
) -> dict[str, str]:
    """Claude Code's environment, isolated: its own home and config, no credentials or proxies but
    the gateway's, and (``quiet``) none of its traffic beyond the API (the machine has no internet)."""
    home = workdir.parent / "claude-home"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_", "AWS_", "GOOGLE_", "VERTEX_"))
        and "proxy" not in k.lower()
    }
    env.update(
        HOME=str(home),
        CLAUDE_CONFIG_DIR=str(home / ".claude"),
        ANTHROPIC_BASE_URL=gateway.url,
        ANTHROPIC_API_KEY=key,
        NO_PROXY="127.0.0.1,localhost",
        DISABLE_TELEMETRY="1",
        DISABLE_AUTOUPDATER="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_BUG_COMMAND="1",
    )
    if quiet:
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    return env


def claude(
    gateway: RunningGateway,
    workdir: Path,
    prompt: str,
    *args: str,
    key: str = CLIENT_KEY,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``claude -p prompt args`` (headless), killed if it outlasts ``timeout``."""
    return run_claude(claude_env(gateway, workdir, key), workdir, ["-p", prompt, *args], timeout)


def run_claude(
    env: dict[str, str], workdir: Path, args: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    command = [str(CLAUDE), *args]
    return subprocess.run(
        command,
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def result_of(run: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The final ``result`` object of ``--output-format json`` (or the last line of stream-json)."""
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{run.stderr}"
    result = json.loads(lines[-1])
    assert result["type"] == "result", result
    return dict(result)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def generations(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """The generation requests that reached the upstream (Messages, Chat or Responses), in order."""
    paths = ("/v1/messages", "/v1/chat/completions", "/v1/responses")
    return [r.body for r in upstream.requests if r.method == "POST" and r.path in paths]


class GatewayLog:
    """The gateway's request log lines written since a point (one line per API request)."""

    def __init__(self, gateway: RunningGateway) -> None:
        self.gateway = gateway
        self.start = len(gateway.log())

    def lines(self, count: int, wait: float = 5) -> list[str]:
        """The lines, once there are ``count`` (the gateway writes them in batches), or ``wait`` s on."""
        deadline = time.monotonic() + wait
        while True:
            text = self.gateway.log()[self.start :]
            lines = [line for line in text.splitlines() if "request_id=" in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)


def assert_every_request_served(log: GatewayLog, count: int) -> None:
    """Every API request Claude Code made (``count`` of them, side requests included) was answered
    200: nothing it sent fell on a 404 or a refusal."""
    lines = log.lines(count)
    assert len(lines) == count, lines
    assert all(" status=200 " in line for line in lines), lines
    assert "Traceback" not in log.gateway.log()


@pytest.mark.parametrize("model", [DIRECT, HOUSE])
def test_anthropic_upstream_gets_claude_codes_request_fitted_to_the_spec(
    gateway: RunningGateway, upstream: FakeUpstream, workdir: Path, model: str
) -> None:
    """The fast path: Claude Code's own body goes to the Anthropic backend, streamed, with its beta
    flags and the backend's key, and the answer comes back as printed. The system messages it puts
    inside ``messages`` for a model it does not know (the Messages API has no such role: the fake,
    checking against the spec, flags them) are lifted into the top-level ``system``."""
    upstream.script(Reply.text("Pong, straight from Anthropic."))
    log = GatewayLog(gateway)
    run = claude(gateway, workdir, "say pong", "--output-format", "json", "--model", model)
    assert run.returncode == 0, run.stdout + run.stderr
    result = result_of(run)
    assert result["is_error"] is False and result["result"] == "Pong, straight from Anthropic."
    (sent,) = [r for r in upstream.requests if r.path == "/v1/messages"]
    body = sent.body
    assert body["model"] == DIRECT and body["stream"] is True
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY and CLIENT_KEY not in json.dumps(sent.headers)
    assert sent.headers["anthropic-version"] == "2023-06-01" and sent.headers["anthropic-beta"]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["messages"][0]["content"][-1]["text"] == "say pong"
    system_text = "".join(block["text"] for block in body["system"])
    assert "You are a Claude agent" in system_text
    where = system_text if model == HOUSE else json.dumps(body["messages"])
    assert ENVIRONMENT in where
    assert "Read" in {t["name"] for t in body["tools"]}
    assert_every_request_served(log, 1)


@pytest.mark.parametrize("api", sorted(TRANSLATED))
def test_openai_upstream_streams_to_claude_code(
    gateway: RunningGateway, upstream: FakeUpstream, workdir: Path, api: str
) -> None:
    """Translated: Claude Code's Messages request goes up as Chat Completions or Responses, the
    upstream's stream comes back as Anthropic stream events, delta by delta (``stream-json`` with
    partial messages shows each one Claude Code received), and the answer is printed whole."""
    model, path = TRANSLATED[api]
    pieces = ["Streamed ", "through ", "the gateway."]
    upstream.script(Reply.text("".join(pieces), chunks=pieces, usage=(1200, 7)))
    log = GatewayLog(gateway)
    run = claude(
        gateway,
        workdir,
        "stream something",
        "--output-format",
        "stream-json",
        "--verbose",
        "--include-partial-messages",
        "--model",
        model,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    deltas = [
        e["event"]["delta"]["text"]
        for e in events
        if e["type"] == "stream_event"
        and e["event"]["type"] == "content_block_delta"
        and e["event"]["delta"]["type"] == "text_delta"
    ]
    assert deltas == pieces
    starts = [
        e["event"]["message"]
        for e in events
        if e["type"] == "stream_event" and e["event"]["type"] == "message_start"
    ]
    assert [s["model"] for s in starts] == [model]  # the name Claude Code asked for, echoed
    result = result_of(run)
    assert result["is_error"] is False and result["result"] == "".join(pieces)
    assert result["usage"]["output_tokens"] == 7
    (sent,) = [r for r in upstream.requests if r.method == "POST" and r.path == path]
    assert sent.body["model"] == "gpt-4.1" and sent.body["stream"] is True
    assert sent.headers["authorization"] != f"Bearer {CLIENT_KEY}"
    text = json.dumps(sent.body)
    assert "stream something" in text and ENVIRONMENT in text
    tools = sent.body["tools"]
    names = {t["function"]["name"] if api == "chat" else t["name"] for t in tools}
    assert "Read" in names
    assert_every_request_served(log, 1)


@pytest.mark.parametrize("model", [DIRECT, TRANSLATED["chat"][0]])
def test_tool_round_trip(gateway: RunningGateway, upstream: FakeUpstream, workdir: Path, model: str) -> None:
    """The model asks Claude Code to read a file; Claude Code reads it (``--allowedTools Read``)
    and sends the result back, which reaches the upstream answering the call's own id; then the
    final answer is printed. Over the Anthropic backend and translated to Chat."""
    notes = workdir / "notes.txt"
    notes.write_text("the secret word is pelican\n")
    call = json.dumps({"file_path": str(notes)})
    upstream.script(Reply.tool_calls([("Read", call)]), Reply.text("The secret word is pelican."))
    log = GatewayLog(gateway)
    run = claude(
        gateway,
        workdir,
        "what is the secret word in notes.txt?",
        "--output-format",
        "json",
        "--allowedTools",
        "Read",
        "--model",
        model,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    result = result_of(run)
    assert result["is_error"] is False and result["result"] == "The secret word is pelican."
    assert result["num_turns"] == 2 and result["permission_denials"] == []
    first, second = generations(upstream)
    if model == DIRECT:
        (use,) = [b for m in second["messages"] if m["role"] == "assistant" for b in m["content"]]
        assert use["type"] == "tool_use" and use["name"] == "Read" and use["input"] == json.loads(call)
        results = [
            b
            for m in second["messages"]
            if m["role"] == "user"
            for b in m["content"]
            if b["type"] == "tool_result"
        ]
        assert [r["tool_use_id"] for r in results] == [use["id"]]
        assert "pelican" in json.dumps(results[0]["content"])
        assert len(second["messages"]) == len(first["messages"]) + 2
    else:
        (assistant,) = [m for m in second["messages"] if m["role"] == "assistant"]
        (tool_call,) = assistant["tool_calls"]
        assert tool_call["function"]["name"] == "Read" and json.loads(
            tool_call["function"]["arguments"]
        ) == json.loads(call)
        (answer,) = [m for m in second["messages"] if m["role"] == "tool"]
        assert answer["tool_call_id"] == tool_call["id"] and "pelican" in json.dumps(answer["content"])
    assert_every_request_served(log, 2)


def test_a_wrong_key_is_an_authentication_error_at_once(
    gateway: RunningGateway, upstream: FakeUpstream, workdir: Path
) -> None:
    """A bad client key: Claude Code gives up on the first 401 (the gateway says not to retry it;
    without that it tried ten more times over minutes) and says it could not authenticate; nothing
    reached the upstream."""
    log = GatewayLog(gateway)
    run = claude(
        gateway,
        workdir,
        "say pong",
        "--output-format",
        "json",
        "--model",
        DIRECT,
        key="sk-not-a-key-of-this-gateway",
        timeout=30,
    )
    assert run.returncode != 0
    result = result_of(run)
    assert result["is_error"] is True and result["api_error_status"] == 401
    assert result["api_error_type"] == "authentication_error" and "authenticate" in result["result"]
    assert upstream.requests == []
    (line,) = log.lines(1)
    assert " status=401 " in line and "error=invalid_api_key" in line


def test_claude_codes_reachability_probe_is_answered(gateway: RunningGateway, workdir: Path) -> None:
    """Claude Code checks that its base URL answers ``GET /api/hello`` with a 200 (its first-run
    check fails otherwise, ``claude doctor`` reports it; each start also sends ``HEAD /api/hello``
    ahead of the first request). ``doctor`` tests the API connection only when non-essential
    traffic is allowed, so this one run allows it (bounded by the timeout: no host but the
    gateway answers here)."""
    log = GatewayLog(gateway)
    run = run_claude(claude_env(gateway, workdir, quiet=False), workdir, ["doctor"], timeout=45)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "API (custom host): answered HTTP 200" in run.stdout, run.stdout
    assert log.lines(1, wait=0.5) == []  # answered as a probe, not a request to no route (a 404)
