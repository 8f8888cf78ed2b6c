"""Who gets in, against a real ``modelwire serve``: secrets that fail closed, key changes that reach
a running gateway within a second, client addresses behind trusted proxies, and the request log."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from modelwire.gateway import app as gateway_app
from modelwire.gateway.call import MINTED_ID_PREFIX

from .fake_upstream import FakeUpstream, Reply
from .gateway_fixtures import CLIENT_KEY, MODELWIRE, RunningGateway, base_config, free_port, start_gateway

USER = [{"role": "user", "content": "q"}]
CHAT = "/v1/chat/completions"
Answer = tuple[int, dict[str, str], bytes]


def post(
    url: str,
    path: str,
    body: dict[str, Any],
    key: str | None = CLIENT_KEY,
    headers: dict[str, str] | None = None,
) -> Answer:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=orjson.dumps(body), method="POST", headers=sent)
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def chat(url: str, key: str | None = CLIENT_KEY, headers: dict[str, str] | None = None) -> Answer:
    return post(url, CHAT, {"model": "chat-model", "messages": USER}, key, headers)


def serve_once(config: dict[str, Any], tmp: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    """``modelwire serve`` expected to refuse to start: its completed process."""
    path = tmp / "refused.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [MODELWIRE, "serve", "--config", str(path), "--port", str(free_port()), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def until(condition: Any, seconds: float) -> float | None:
    """Seconds until ``condition()`` held, polling; None if it never did within ``seconds``."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if condition():
            return time.monotonic() - start
        time.sleep(0.02)
    return None


def no_listener(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# ----------------------------------------------------------------------------------------------
# Secrets fail closed
# ----------------------------------------------------------------------------------------------

README_KEYS = [{"key": "${MODELWIRE_KEY}", "name": "dev"}]


def test_an_unset_client_key_variable_stops_the_gateway(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The README's own ``keys:`` example with MODELWIRE_KEY unset, on 0.0.0.0: it used to serve
    without auth; now it does not start, naming the file, the key and the variable."""
    config = {**base_config(upstream, tmp_path), "keys": README_KEYS}
    env = {k: v for k, v in os.environ.items() if k != "MODELWIRE_KEY"}
    port = free_port()
    path = tmp_path / "modelwire.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [MODELWIRE, "serve", "--config", str(path), "--host", "0.0.0.0", "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    stderr = " ".join(result.stderr.split())
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr.replace("\n", "") and "keys[0].key" in stderr, stderr
    assert "${MODELWIRE_KEY} is not set" in stderr and "Traceback" not in stderr
    assert no_listener(port)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda c: c.update(keys=README_KEYS), "keys[0].key"),
        (lambda c: c["backends"]["compat"].update(api_key="${MODELWIRE_KEY}"), "backends.compat.api_key"),
        (lambda c: c["backends"]["oai"].update(api_keys=["sk-up", "${MODELWIRE_KEY:-}"]), "api_keys[1]"),
    ],
)
def test_a_key_that_expands_to_nothing_stops_the_gateway(
    upstream: FakeUpstream, tmp_path: Path, edit: Any, where: str
) -> None:
    config = base_config(upstream, tmp_path)
    edit(config)
    result = serve_once(config, tmp_path, env={"MODELWIRE_KEY": ""})
    stderr = " ".join(result.stderr.split())
    assert result.returncode == 2, stderr
    assert where in stderr and "empty" in stderr, stderr


def test_zero_config_without_an_upstream_key_starts_and_says_so_per_request(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    """``make run`` on a fresh machine: no file, no OPENAI_API_KEY. It starts, says so once, and
    answers each request in the client's own dialect naming the variable, never calling upstream."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MODELWIRE_"))}
    env["OPENAI_BASE_URL"] = upstream.url
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [MODELWIRE, "serve", "--port", str(port)], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert until(lambda: not no_listener(port), 30) is not None, log_path.read_text()
        status, _, body = chat(url, key=None)
        assert status == 503 and "OPENAI_API_KEY" in orjson.loads(body)["error"]["message"], body
        status, _, body = post(url, "/v1/messages", {"model": "m", "max_tokens": 5, "messages": USER}, None)
        doc = orjson.loads(body)
        assert doc["type"] == "error" and "OPENAI_API_KEY" in doc["error"]["message"], body
        gemini = {"contents": [{"role": "user", "parts": [{"text": "q"}]}]}
        status, _, body = post(url, "/v1beta/models/m:generateContent", gemini, None)
        assert status == 503 and orjson.loads(body)["error"]["status"] == "UNAVAILABLE", body
        assert upstream.requests == [], "nothing may reach the upstream without a key"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    log = log_path.read_text()
    assert log.count("no upstream key is set") == 1 and "OPENAI_API_KEY" in log, log
    assert "Traceback" not in log


def test_a_gateway_beyond_loopback_never_opens(upstream: FakeUpstream, tmp_path: Path) -> None:
    """Started on 0.0.0.0 with a store key, then that key revoked: nobody gets in, not even
    without credentials (the open decision is made once, from the keys loaded and the bind)."""
    config = base_config(upstream, tmp_path)
    del config["keys"]
    refused = serve_once(config, tmp_path, "--host", "0.0.0.0")
    assert refused.returncode == 2 and "refusing to listen on 0.0.0.0" in refused.stderr, refused.stderr
    created = subprocess.run(
        [MODELWIRE, "keys", "create", "--name", "only", "--config", str(tmp_path / "refused.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    secret = created.stdout.strip()
    gateway = start_gateway(config, tmp_path, name="public", args=("--host", "0.0.0.0"))
    try:
        assert chat(gateway.url, key=secret)[0] == 200
        assert chat(gateway.url, key=None)[0] == 401
        assert gateway.cli("keys", "revoke", "only").returncode == 0
        assert until(lambda: chat(gateway.url, key=secret)[0] == 401, 2.0) is not None
        status, _, body = chat(gateway.url, key=None)
        assert status == 401, body
    finally:
        gateway.stop()


# ----------------------------------------------------------------------------------------------
# Key changes reach a running gateway within a second
# ----------------------------------------------------------------------------------------------


def test_key_changes_take_effect_within_a_second(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    del config["keys"]
    gateway = start_gateway(config, tmp_path, name="sync")
    try:
        assert chat(gateway.url, key=None)[0] == 200, "no keys yet, on loopback: open"
        created = gateway.cli("keys", "create", "--name", "alice")
        assert created.returncode == 0, created.stderr
        secret = created.stdout.strip()
        closed = until(lambda: chat(gateway.url, key=None)[0] == 401, 1.0)
        assert closed is not None, "a new key must close an open gateway within a second"
        assert chat(gateway.url, key=secret)[0] == 200
        fresh = gateway.cli("keys", "create", "--name", "bob").stdout.strip()
        assert chat(gateway.url, key=fresh)[0] == 200, "a new key works on its very first request"
        assert gateway.cli("keys", "revoke", "alice").returncode == 0
        revoked = until(lambda: chat(gateway.url, key=secret)[0] == 401, 1.0)
        assert revoked is not None, "a revoked key must stop working within a second"
        # Long enough to outlast a slow CLI start on a loaded machine; the sleep below ends it.
        expiring = gateway.cli("keys", "create", "--name", "brief", "--expires", "6s").stdout.strip()
        assert until(lambda: chat(gateway.url, key=expiring)[0] == 200, 1.0) is not None
        time.sleep(6.0)
        status, _, body = chat(gateway.url, key=expiring)
        assert status == 401 and b"expired" in body, body
    finally:
        gateway.stop()
    assert "Traceback" not in gateway.log()


# ----------------------------------------------------------------------------------------------
# Behind a load balancer
# ----------------------------------------------------------------------------------------------


def lockout_config(upstream: FakeUpstream, tmp: Path, trusted: list[str]) -> dict[str, Any]:
    config = base_config(upstream, tmp)
    config["server"] = {**config["server"], "trusted_proxies": trusted}
    config["lockout"] = {"failures": 2, "first_seconds": 30}
    config["capture"] = {"path": str(tmp / "capture.jsonl")}
    return config


def test_lockout_counts_the_real_client_behind_a_trusted_proxy(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    gateway = start_gateway(lockout_config(upstream, tmp_path, ["127.0.0.1/32"]), tmp_path, name="proxied")
    guesser = {"X-Forwarded-For": "198.51.100.66"}
    colleague = {"X-Forwarded-For": "203.0.113.7"}
    try:
        for _ in range(2):
            assert chat(gateway.url, key="sk-wrong-guess-000", headers=guesser)[0] == 401
        assert chat(gateway.url, headers=guesser)[0] == 429, "the guesser is locked out"
        status, _, body = chat(gateway.url, headers=colleague)
        assert status == 200, body
    finally:
        gateway.stop()
    lines = [json.loads(line) for line in (tmp_path / "capture.jsonl").read_text().splitlines()]
    clients = {line["client"] for line in lines if line["direction"] == "client_request"}
    assert clients == {"203.0.113.7"}, clients
    assert "client=203.0.113.7" in gateway.log() and "client=198.51.100.66" in gateway.log()


@pytest.mark.parametrize("trusted", [[], ["10.0.0.0/8"]])
def test_forwarded_headers_from_others_are_not_believed(
    upstream: FakeUpstream, tmp_path: Path, trusted: list[str]
) -> None:
    gateway = start_gateway(lockout_config(upstream, tmp_path, trusted), tmp_path, name="direct")
    try:
        for address in ("198.51.100.66", "198.51.100.67"):
            assert chat(gateway.url, key="sk-wrong-guess-000", headers={"X-Forwarded-For": address})[0] == 401
        status, _, _ = chat(gateway.url, headers={"X-Forwarded-For": "203.0.113.7"})
        assert status == 429, "a forged header must not dodge the lockout of the real peer"
    finally:
        gateway.stop()
    assert "client=127.0.0.1" in gateway.log()


# ----------------------------------------------------------------------------------------------
# The request log
# ----------------------------------------------------------------------------------------------


def test_a_request_id_is_the_clients_own_only_when_it_is_usable() -> None:
    def request_id(*sent: tuple[bytes, bytes]) -> str:
        return gateway_app._request_id({"headers": [(b"host", b"gw"), *sent, (b"accept", b"*/*")]})

    assert request_id((b"x-request-id", b"req-7")) == "req-7"
    assert request_id((b"x-request-id", b"r" * 128)) == "r" * 128
    minted = [request_id(), request_id((b"x-request-id", b"")), request_id((b"x-request-id", b"r" * 129))]
    assert all(m.startswith(MINTED_ID_PREFIX) for m in minted) and len(set(minted)) == 3


def test_one_line_per_request_with_what_happened(upstream: FakeUpstream, tmp_path: Path) -> None:
    config = base_config(upstream, tmp_path)
    config["server"] = {**config["server"], "log_format": "json"}
    gateway = start_gateway(config, tmp_path, name="jsonlog")
    try:
        upstream.script(Reply.text("hello there", usage=(11, 7)))
        ok = chat(gateway.url, headers={"x-request-id": "req-ok-1"})
        bad = post(gateway.url, CHAT, {"model": "chat-model"}, headers={"x-request-id": "req-bad-1"})
        garbage = urllib.request.Request(
            gateway.url + CHAT,
            data=b"{nope",
            method="POST",
            headers={"Authorization": f"Bearer {CLIENT_KEY}"},
        )
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(garbage, timeout=10)
        denied = chat(gateway.url, key="sk-client-not-a-key-0000000")
        assert (ok[0], bad[0], denied[0]) == (200, 400, 401)
        log_text = until_logged(gateway, 4)
    finally:
        gateway.stop()
    lines = [json.loads(line) for line in log_text.splitlines() if line.startswith('{"time"')]
    requests = [line for line in lines if "request_id" in line]
    assert len(requests) == 4, log_text
    first = next(line for line in requests if line["request_id"] == "req-ok-1")
    assert first["status"] == 200 and first["key"] == "all" and first["client"] == "127.0.0.1"
    assert (first["surface"], first["model"], first["backend"], first["upstream_model"]) == (
        "openai_chat",
        "chat-model",
        "compat",
        "gpt-4.1",
    )
    assert first["input_tokens"] == 11 and first["output_tokens"] == 7 and first["latency_ms"] > 0
    assert first["cost_usd"] > 0 and first["ttft_ms"] is not None
    mistake = next(line for line in requests if line["request_id"] == "req-bad-1")
    assert mistake["status"] == 400 and mistake["error"] and mistake["backend"] is None
    assert {line["status"] for line in requests} == {200, 400, 401}
    assert "failed" not in log_text, "a client's mistake is not an upstream failure"
    assert CLIENT_KEY not in log_text and "sk-client-not-a-key" not in log_text
    assert "sk-up-" not in log_text


def until_logged(gateway: RunningGateway, count: int) -> str:
    until(lambda: gateway.log().count('"request_id"') >= count, 5)
    return gateway.log()


def test_text_lines_cannot_be_forged_or_leak_a_key(upstream: FakeUpstream, gateway: RunningGateway) -> None:
    model = "chat-model\nforged=1 sk-leakedsecret0123456789"
    status, _, _ = post(gateway.url, CHAT, {"model": model, "messages": USER})
    assert status == 404
    until(lambda: "forged" in gateway.log(), 5)
    log = gateway.log()
    line = next(line for line in log.splitlines() if "forged" in line)
    assert line.startswith("time=") and 'model="chat-model\\nforged=1 [REDACTED]"' in line, line
    assert "sk-leakedsecret" not in log
