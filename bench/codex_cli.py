#!/usr/bin/env python3
"""Codex CLI through the gateway: its built-in provider (WebSocket) against its HTTP provider.

Both run ``codex exec`` on the same gateway and fake upstream (the test suite's), alternating, for
a one-shot prompt and for a tool round trip (the model runs ``echo``, then answers). Printed: the
median wall time of each, and how many of Codex's socket complaints ("Reconnecting", "Falling
back") each run printed. Needs the Codex CLI that ``make test`` installs in ``tests/clients``.

    .venv/bin/python bench/codex_cli.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import FakeUpstream, Reply  # noqa: E402
from tests.gateway_fixtures import CLIENT_KEY, start_gateway  # noqa: E402

CODEX = ROOT / "tests" / "clients" / "node_modules" / ".bin" / "codex"
COMPLAINTS = ("Reconnecting", "Falling back")
PROVIDERS = {
    # the built-in OpenAI provider, pointed at the gateway; its key comes from CODEX_API_KEY
    "built-in (WebSocket)": 'openai_base_url = "{v1}"\n',
    # a provider of one's own: plain HTTP + SSE
    "own provider (HTTP)": (
        'model_provider = "modelwire"\n[model_providers.modelwire]\nname = "modelwire"\n'
        'base_url = "{v1}"\nwire_api = "responses"\nenv_key = "CODEX_API_KEY"\n'
    ),
}


def run(home: Path, workdir: Path, prompt: str) -> tuple[float, int]:
    env = {**os.environ, "CODEX_HOME": str(home), "CODEX_API_KEY": CLIENT_KEY}
    command = [str(CODEX), "exec", "--skip-git-repo-check", "-m", "resp-model", prompt]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"codex failed:\n{done.stderr}")
    return seconds, sum(done.stderr.count(phrase) for phrase in COMPLAINTS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    upstream = FakeUpstream().start()
    upstream.extra_fields.add("client_metadata")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        config = {
            "store": f"sqlite:///{tmp}/state.db",
            "backends": {"oai": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up-bench"}},
            "models": [{"name": "resp-model", "route": "oai/gpt-4.1"}],
            "keys": [{"key": CLIENT_KEY, "name": "bench"}],
        }
        gateway = start_gateway(config, base, name="bench")
        homes = {}
        for n, (name, text) in enumerate(PROVIDERS.items()):
            home = homes[name] = base / f"home{n}"
            home.mkdir()
            (home / "config.toml").write_text(text.format(v1=gateway.v1))
        command = json.dumps({"cmd": "echo bench"})
        cases = {
            "one-shot": (lambda: upstream.script(Reply.text("pong")), "say pong"),
            "tool round trip": (
                lambda: upstream.script(Reply.tool_calls([("exec_command", command)]), Reply.text("ran")),
                "run the command",
            ),
        }
        times: dict[tuple[str, str], list[float]] = {}
        complaints: dict[str, int] = dict.fromkeys(PROVIDERS, 0)
        try:
            for _ in range(args.rounds):
                for case, (prepare, prompt) in cases.items():
                    for name, home in homes.items():
                        prepare()
                        seconds, said = run(home, base, prompt)
                        times.setdefault((case, name), []).append(seconds)
                        complaints[name] += said
        finally:
            gateway.stop()
            upstream.stop()
    for (case, name), values in times.items():
        print(f"{case:>16} | {name:<21} | median {statistics.median(values):.2f} s over {len(values)} runs")
    for name, count in complaints.items():
        print(f"{name}: {count} reconnect/fallback messages")


if __name__ == "__main__":
    main()
