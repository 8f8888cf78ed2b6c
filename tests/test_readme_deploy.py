"""The README's deployment example, run as written: its config file and its commands, two replicas
of two workers each on a PostgreSQL and a Redis of the test's own, behind one fake upstream."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson

from .fake_upstream import FakeUpstream
from .gateway_fixtures import MODELWIRE, free_port
from .services import PrivatePostgres, PrivateRedis

ROOT = Path(__file__).resolve().parent.parent
SECTION = "### A worked example"


def example() -> tuple[str, list[str]]:
    """The example's YAML file, and its commands (the exports are the test's to set)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index(SECTION) :]
    config = re.search(r"```yaml\n(.*?)```", section, re.S)
    commands = re.search(r"```sh\n(.*?)```", section, re.S)
    assert config is not None and commands is not None
    lines = [line.split("#", 1)[0].strip() for line in commands.group(1).splitlines()]
    return config.group(1), [line for line in lines if line and not line.startswith("export ")]


def chat(port: int, key: str) -> int:
    body = {"model": "default", "messages": [{"role": "user", "content": "q"}]}
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as err:
        return err.code


def wait_up(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise AssertionError(f"replica on {port} did not become ready:\n{log.read_text()}")


def test_the_readme_deployment_runs_as_written(
    upstream: FakeUpstream, private_postgres: PrivatePostgres, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    config_text, commands = example()
    assert commands[0] == "modelwire db upgrade" and commands[-1] == "modelwire serve", commands
    config = tmp_path / "etc" / "modelwire.yaml"
    config.parent.mkdir()
    config.write_text(config_text)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "MODELWIRE_"))},
        "MODELWIRE_CONFIG": str(config),
        "MODELWIRE_STORE": private_postgres.url,
        "MODELWIRE_REDIS": private_redis.url,
        "OPENAI_API_KEY": "sk-upstream-readme-0000",
        "OPENAI_BASE_URL": upstream.url,
    }
    outputs = {}
    for command in commands[:-1]:
        argv = [MODELWIRE, *shlex.split(command)[1:]]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        outputs[command] = done.stdout
    secret = next(out for cmd, out in outputs.items() if "keys create" in cmd).strip()
    replicas: list[tuple[int, subprocess.Popen[bytes], Path]] = []
    try:
        for n in range(2):
            port, log = free_port(), tmp_path / f"replica{n}.log"
            with log.open("wb") as out:
                argv = [MODELWIRE, *shlex.split(commands[-1])[1:]]
                proc = subprocess.Popen(argv, env={**env, "PORT": str(port)}, stdout=out, stderr=out)
            replicas.append((port, proc, log))
        for port, proc, log in replicas:
            wait_up(port, proc, log)
        statuses = [chat(replicas[i % 2][0], secret) for i in range(61)]
        assert statuses.count(200) == 60 and statuses[-1] == 429, statuses
    finally:
        for _, proc, _ in replicas:
            proc.terminate()
        for _, proc, _ in replicas:
            proc.wait(timeout=30)
    for _, proc, log in replicas:
        assert proc.returncode == 0, log.read_text()
        assert_json_request_lines(log.read_text())
    usage = subprocess.run(
        [MODELWIRE, "usage", "--by", "key", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    rows = json.loads(usage.stdout)
    assert [(r["key"], r["requests"]) for r in rows] == [("alice", 61)], usage.stdout


def assert_json_request_lines(log: str) -> None:
    """``log_format: json``: every line is one JSON object; the requests are logged with the key name."""
    docs: list[dict[str, Any]] = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any(doc.get("key") == "alice" and doc.get("status") == 200 for doc in docs), log[-2000:]
