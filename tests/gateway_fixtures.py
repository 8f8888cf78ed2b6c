"""A real ``modelwire serve`` process on loopback, configured against the fake upstream."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import websockets.sync.client as ws_client
import yaml
from sqlalchemy import select

from modelwire.gateway.store import Store
from modelwire.gateway.tables import usage_table

from .fake_upstream import FakeUpstream

MODELWIRE = str(Path(sys.executable).parent / "modelwire")
CLIENT_KEY = "sk-client-all-0123456789"


# A gateway built and started in a fresh interpreter serves one chat request (the HTTP upstream
# path), then says which modules of the packages named got loaded on the way.
_LOADED_PROBE = """
import asyncio, json, sys
import modelwire.cli, modelwire.gateway.server
from modelwire.gateway.app import Gateway
from modelwire.gateway.config import parse_config
from modelwire.gateway.server import migrate_apart

async def main():
    config = parse_config(json.loads(sys.argv[1]))
    migrate_apart(config.store)
    gateway = Gateway(config)
    await gateway.startup()
    body = json.dumps({"model": "chat-model", "messages": [{"role": "user", "content": "hi"}]}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
        "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000),
        "headers": [(b"authorization", b"Bearer sk-probe"), (b"content-type", b"application/json")],
    }
    messages, sent = [{"type": "http.request", "body": body, "more_body": False}], []

    async def receive():
        return messages.pop() if messages else await asyncio.Future()  # then the client stays

    async def send(message):
        sent.append(message)

    await gateway(scope, receive, send)
    await gateway.shutdown()
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    names = sys.argv[2].split(",")
    print(status, sorted(m for m in sys.modules if any(m == n or m.startswith(n + ".") for n in names)))

asyncio.run(main())
"""


def loaded_by_a_serving_gateway(upstream: FakeUpstream, tmp: Path, packages: set[str]) -> str:
    """``<status> [modules]``: a chat request's status through a fresh gateway on SQLite, and the
    modules in ``packages`` (names of packages or subpackages) it had loaded by then: a check that
    start-up and the HTTP path leave them out."""
    backend = {"type": "openai-compatible", "api": "chat", "base_url": upstream.url, "api_key": "sk-up"}
    config = {
        "store": f"sqlite:///{tmp}/state.db",
        "backends": {"compat": backend},
        "models": [{"name": "chat-model", "route": "compat/gpt-4.1"}],
        "keys": [{"key": "sk-probe", "name": "probe"}],
    }
    command = [sys.executable, "-c", _LOADED_PROBE, json.dumps(config), ",".join(sorted(packages))]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningGateway:
    url: str
    proc: subprocess.Popen[bytes]
    config_path: Path
    log_path: Path
    config: dict[str, Any]

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a modelwire CLI command against this gateway's config."""
        return subprocess.run(
            [MODELWIRE, *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **(env or {})},
        )


def base_config(upstream: FakeUpstream, tmp: Path) -> dict[str, Any]:
    """Backends of every kind on the one fake, routes that exercise each path, a few client keys."""
    url = upstream.url
    return {
        "store": f"sqlite:///{tmp}/state.db",
        "server": {"keepalive_seconds": 0.25, "grace_seconds": 10},
        "failover": {"budget_seconds": 15},
        "usage": {"flush_seconds": 0.1},
        "backends": {
            "oai": {
                "type": "openai",
                "api": "responses",
                "base_url": url,
                "api_keys": ["sk-up-oai-1", "sk-up-oai-2"],
            },
            "compat": {
                "type": "openai-compatible",
                "api": "chat",
                "base_url": url,
                "api_key": "sk-up-compat",
            },
            "compat_resp": {
                "type": "openai-compatible",
                "api": "responses",
                "base_url": url,
                "api_key": "sk-up-cr",
            },
            "flaky": {
                "type": "openai-compatible",
                "api": "chat",
                "base_url": url,
                "api_key": "sk-up-flaky",
                "max_retries": 1,
            },
            "native_chat": {"type": "openai", "api": "chat", "base_url": url, "api_key": "sk-up-nc"},
        },
        "models": [
            {"name": "chat-model", "route": "compat/gpt-4.1"},
            {"name": "resp-model", "route": "oai/gpt-4.1"},
            {"name": "reasoner", "route": "oai/gpt-5.1"},
            {"name": "stateless-resp", "route": "compat_resp/gpt-4.1"},
            {"name": "native-chat", "route": "native_chat/gpt-4.1"},
            {"name": "failover", "route": ["flaky/flaky-model", "compat/backup-model"]},
            {"name": "failover-translated", "route": ["oai/failing-model", "compat/backup-model"]},
            {
                "name": "tuned",
                "route": "compat/gpt-4.1?temperature=0.2&max_output_tokens=50&reasoning_effort=low",
            },
            {"name": "tuned-resp", "route": "oai/gpt-4.1?max_output_tokens=64&verbosity=low"},
            {"name": "pro", "route": "oai/gpt-5-pro"},
            {"match": "^claude-", "route": "compat/gpt-4.1"},
        ],
        "keys": [
            {"key": CLIENT_KEY, "name": "all"},
            {"key": "sk-client-chat-only-0000", "name": "chat-only", "models": ["chat-model", "compat/*"]},
            {"key": "sk-client-rpm-000000000", "name": "rpm", "rpm": 2},
        ],
    }


def add_vendor_backends(
    config: dict[str, Any], upstream: FakeUpstream, *, anthropic: str | None = None, gemini: str | None = None
) -> None:
    """An Anthropic backend ``anthropic`` and a Gemini backend ``gem`` on the fake, each added when
    its upstream key is given."""
    if anthropic is not None:
        config["backends"]["anthropic"] = {
            "type": "anthropic",
            "base_url": upstream.root,
            "api_key": anthropic,
        }
    if gemini is not None:
        config["backends"]["gem"] = {"type": "gemini", "base_url": upstream.root, "api_key": gemini}


@contextlib.contextmanager
def running_gateway(config: dict[str, Any], tmp: Path, **kw: Any) -> Iterator[RunningGateway]:
    """:func:`start_gateway`, stopped when the block ends (a module fixture's whole life)."""
    running = start_gateway(config, tmp, **kw)
    try:
        yield running
    finally:
        running.stop()


BIND_ATTEMPTS = 3


def start_gateway(
    config: dict[str, Any],
    tmp: Path,
    *,
    env: dict[str, str] | None = None,
    name: str = "gateway",
    args: tuple[str, ...] = (),
    cwd: Path | None = None,
) -> RunningGateway:
    """``modelwire serve`` with ``config`` (and extra command-line ``args``, run in ``cwd``), once it
    answers.

    The port is free when picked, but another process (or an outgoing connection's ephemeral
    port, under a busy parallel run) can take it before the gateway binds: then it is tried again
    on another port."""
    for _ in range(BIND_ATTEMPTS):
        running = _start_once(config, tmp, env=env, name=name, args=args, cwd=cwd)
        if running is not None:
            return running
    raise RuntimeError(f"gateway could not bind a free port in {BIND_ATTEMPTS} attempts")


def _start_once(
    config: dict[str, Any],
    tmp: Path,
    *,
    env: dict[str, str] | None,
    name: str,
    args: tuple[str, ...],
    cwd: Path | None = None,
) -> RunningGateway | None:
    """The running gateway; None when its port was taken before it could bind."""
    config = {**config, "server": {**config.get("server", {}), "host": "127.0.0.1", "port": free_port()}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = tmp / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [MODELWIRE, "serve", "--config", str(path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
    url = f"http://127.0.0.1:{config['server']['port']}"
    running = RunningGateway(url, proc, path, log_path, config)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if "address already in use" in running.log():
                return None
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{running.log()}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as reply:
                if reply.status == 200:
                    return running
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.05)
    running.stop()
    raise RuntimeError(f"gateway did not start:\n{running.log()}")


def request(
    gateway: RunningGateway,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP request (for what SDKs will not send: malformed bodies, odd headers)."""
    req = urllib.request.Request(
        gateway.url + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {CLIENT_KEY}", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, {k.lower(): v for k, v in reply.headers.items()}, reply.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def usage_rows(gateway: RunningGateway, request_id: str, count: int = 1) -> list[dict[str, Any]]:
    """The request's usage rows once the batch writer has written ``count`` of them (or 10 s on)."""
    deadline = time.monotonic() + 10
    while True:
        with Store(gateway.config["store"]) as store, store.engine.connect() as conn:
            stmt = select(usage_table).where(usage_table.c.request_id == request_id)
            rows = [dict(row) for row in conn.execute(stmt).mappings()]
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def sse_events(body: bytes) -> list[tuple[str | None, str]]:
    """The (event name, data) pairs of an SSE body; comments (keep-alives) are skipped."""
    events = []
    for block in body.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, "\n".join(data)))
    return events


def open_socket(gateway: RunningGateway, key: str = CLIENT_KEY) -> ws_client.ClientConnection:
    """A Responses WebSocket to ``gateway`` with ``key`` on the upgrade (use it with ``with``)."""
    url = gateway.url.replace("http://", "ws://") + "/v1/responses"
    return ws_client.connect(url, additional_headers={"Authorization": f"Bearer {key}"})
