"""Codex CLI against the gateway, the way most people point it: its built-in OpenAI provider with
``openai_base_url`` and the key in ``CODEX_API_KEY``. That provider opens a WebSocket to
``/v1/responses`` first, warms it up with ``generate: false``, then runs each turn over it; a
gateway that fumbles any of this costs every session reconnect attempts and a fall back to HTTPS.

The client is the real Codex CLI (``tests/clients``, installed by ``make test``), its upstream the
fake, which validates every request against the OpenAI spec.
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
from .gateway_fixtures import CLIENT_KEY, RunningGateway, request

CODEX = Path(__file__).parent / "clients" / "node_modules" / ".bin" / "codex"
# What Codex prints when its socket fails: none of it may appear.
SOCKET_TROUBLE = ("Reconnecting", "Falling back", "failed to connect", "WebSocket")


@pytest.fixture
def codex_home(tmp_path: Path, gateway: RunningGateway, upstream: FakeUpstream) -> Iterator[Path]:
    """A Codex home whose built-in provider is the gateway (Codex's own keys: only the base URL)."""
    home = tmp_path / "codex-home"
    home.mkdir()
    (home / "config.toml").write_text(f'openai_base_url = "{gateway.v1}"\n')
    upstream.extra_fields.add("client_metadata")  # Codex's own field, which OpenAI takes
    yield home


def codex(home: Path, workdir: Path, prompt: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CODEX_HOME": str(home), "CODEX_API_KEY": CLIENT_KEY}
    env.pop("OPENAI_API_KEY", None)
    command = [str(CODEX), "exec", "--skip-git-repo-check", "-m", "resp-model", *args, prompt]
    return subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=120)


ACCEPTED = 'modelwire_websocket_connections_total{outcome="accepted"}'


def socket_metrics(gateway: RunningGateway) -> dict[str, float]:
    status, _, payload = request(gateway, "GET", "/metrics")
    assert status == 200
    found: dict[str, float] = {ACCEPTED: 0.0}
    for line in payload.decode().splitlines():
        if line.startswith("modelwire_websocket_"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def assert_one_socket_opened_and_closed(gateway: RunningGateway, accepted_before: float) -> None:
    """Codex opened exactly one socket (no reconnects), and it is closed now that Codex exited (the
    gateway may take a moment to see the close)."""
    deadline = time.monotonic() + 5
    while (metrics := socket_metrics(gateway))["modelwire_websocket_open"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metrics[ACCEPTED] == accepted_before + 1, metrics
    assert metrics["modelwire_websocket_open"] == 0.0, metrics


def generation_requests(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """What reached the upstream: over its own socket, since ``resp-model`` is a native OpenAI route."""
    sent = [r for r in upstream.requests if r.path.endswith("/responses") and r.body is not None]
    assert all(r.websocket for r in sent), [(r.method, r.path) for r in sent]
    return [r.body for r in sent]


def assert_no_socket_trouble(result: subprocess.CompletedProcess[str], gateway: RunningGateway) -> None:
    assert result.returncode == 0, result.stderr
    for phrase in SOCKET_TROUBLE:
        assert phrase not in result.stderr, result.stderr
    log = gateway.log()
    assert "handshake" not in log and "Traceback" not in log, log


def test_codex_built_in_provider_answers_over_the_socket_first_time(
    codex_home: Path, gateway: RunningGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """One prompt: connected on the first try (no reconnects, no fall back to HTTPS), the warm-up
    answered by the gateway itself (one upstream call, not two), the answer printed."""
    upstream.script(Reply.text("Pong, through the gateway."))
    before = socket_metrics(gateway)[ACCEPTED]
    result = codex(codex_home, tmp_path, "say pong")
    assert_no_socket_trouble(result, gateway)
    assert "Pong, through the gateway." in result.stdout
    sent = generation_requests(upstream)
    assert len(sent) == 1, [list(body) for body in sent]
    assert "generate" not in sent[0] and sent[0]["type"] == "response.create"
    assert any(item.get("role") == "user" for item in sent[0]["input"])
    assert_one_socket_opened_and_closed(gateway, before)


def test_codex_tool_round_trip_over_the_socket(
    codex_home: Path, gateway: RunningGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    """The model asks Codex to run a command; Codex runs it and sends the output back on the same
    socket, chaining by ``previous_response_id`` with ``store: false``. The gateway carries both
    turns on one upstream socket, the second as only its new item (the call's output), which the
    fake accepts only if the call is in the chain that socket holds."""
    command = json.dumps({"cmd": "echo tool-output-marker"})
    upstream.script(Reply.tool_calls([("exec_command", command)]), Reply.text("The command ran."))
    before = socket_metrics(gateway)[ACCEPTED]
    result = codex(codex_home, tmp_path, "run the marker command")
    assert_no_socket_trouble(result, gateway)
    assert "The command ran." in result.stdout
    first, second = generation_requests(upstream)
    assert first["store"] is False and second["store"] is False
    assert any(item.get("role") == "user" for item in first["input"])
    assert second["previous_response_id"]
    (output,) = second["input"]
    assert output["type"] == "function_call_output" and "tool-output-marker" in output["output"]
    assert [r.socket for r in upstream.requests if r.body is not None] == [upstream.sockets[0]] * 2
    assert_one_socket_opened_and_closed(gateway, before)
