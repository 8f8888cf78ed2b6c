#!/usr/bin/env python3
# ruff: noqa: E501, SIM115  (long config templates and table rows; logs stay open while their process runs)
"""Side-by-side gateway benchmark (``make bench``): the upstream directly, modelwire, the floor
(the leanest Python passthrough, on aiohttp and on modelwire's own HTTP/1.1 client) and peer
gateways, in one run.

Starts a static OpenAI-shaped upstream (nginx), the gateways under test (one worker each), and
drives each with wrk over loopback, interleaving targets round by round so that machine drift hits
all alike. Prints a table of medians and writes every raw figure as JSON.

    python3 bench/compare.py                       # modelwire vs the upstream directly
    python3 bench/compare.py --floor --peers litellm,portkey
    python3 bench/compare.py --scenarios chat,chat_c1 --rounds 3 --json out.json
    python3 bench/compare.py --workers 2 --core-share 0.5 --scenarios chat,chat_stream
                                                   # one worker on half a core, two on a whole one

Peers are installed on first use under .bench/ (LiteLLM from PyPI into its own venv, Portkey's
gateway from npm). nginx and wrk come from Debian's packages (apt-get, only when missing).
Translated scenarios (Anthropic Messages, Gemini generateContent and Responses, each to a Chat
upstream) run on modelwire and on the peers that serve that surface.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BODIES = os.path.join(HERE, "bodies")
PEERS_DIR = os.path.join(ROOT, ".bench")
TEXT = "The quick brown fox jumps over the lazy dog. " * 4
CLIENT_KEY = "sk-client-bench"
UPSTREAM_KEY = "sk-upstream-bench"

# name -> (path on the gateway, body file, connections)
SCENARIOS = {
    "chat_c1": ("/v1/chat/completions", "chat.json", 1),
    "chat": ("/v1/chat/completions", "chat.json", 32),
    "chat_stream": ("/v1/chat/completions", "chat-stream.json", 32),
    "responses": ("/v1/responses", "responses.json", 32),
    "messages_to_chat": ("/v1/messages", "messages.json", 32),
    "gemini_to_chat": ("/v1beta/models/bench-model:generateContent", "gemini.json", 32),
    "responses_to_chat": ("/v1/responses", "responses-to-chat.json", 32),
    # Token streams paced by the upstream (~1 s each, like a real model): how many concurrent
    # streams a gateway sustains and what latency it adds on top of the pace.
    "stream_slow_256": ("/v1/chat/completions", "chat-stream-slow.json", 256),
    "stream_slow_1024": ("/v1/chat/completions", "chat-stream-slow.json", 1024),
}
TRANSLATED = ("messages_to_chat", "gemini_to_chat", "responses_to_chat")
# The floor forwards /v1/<upstream path> as it came: no routing, so the upstream's own paths.
FLOOR_PATHS = {
    "chat_c1": "/v1/plain/v1/chat/completions",
    "chat": "/v1/plain/v1/chat/completions",
    "chat_stream": "/v1/stream/v1/chat/completions",
    "responses": "/v1/plain/v1/responses",
    "stream_slow_256": "/v1/slow/v1/chat/completions",
    "stream_slow_1024": "/v1/slow/v1/chat/completions",
}
SLOW_RATE = "8k"  # nginx limit_rate for /slow/: the ~8 KB stream takes about a second


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, headers: dict[str, str] | None = None) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, headers=headers or {})
            urllib.request.urlopen(req, timeout=2).read()
            return True
        except urllib.error.HTTPError:
            return True  # it answers; a 401/404 still means it is up
        except Exception:
            time.sleep(0.3)
    return False


def ensure_debian(binary: str, package: str) -> None:
    if shutil.which(binary):
        return
    subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, stdout=subprocess.DEVNULL)


def write_upstream(root: str, port: int) -> str:
    """Canned upstream bodies plus an nginx config serving them; returns the config path."""
    chat = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1763700000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 25, "completion_tokens": 40, "total_tokens": 65},
        "system_fingerprint": "fp_bench",
    }
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1763700000,
        "model": "bench-model",
        "system_fingerprint": "fp_bench",
    }
    chunks = [
        {
            **base,
            "choices": [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ],
        }
    ]
    for word in TEXT.split(" "):
        if word:
            chunks.append(
                {
                    **base,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": word + " "},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ],
                }
            )
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    chunks.append(
        {**base, "choices": [], "usage": {"prompt_tokens": 25, "completion_tokens": 40, "total_tokens": 65}}
    )
    sse = (
        "".join("data: " + json.dumps(c, separators=(",", ":")) + "\n\n" for c in chunks) + "data: [DONE]\n\n"
    )
    resp = {
        "id": "resp_bench",
        "object": "response",
        "created_at": 1763700000,
        "status": "completed",
        "model": "bench-model",
        "output": [
            {
                "type": "message",
                "id": "msg_bench",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": TEXT, "annotations": []}],
            }
        ],
        "usage": {
            "input_tokens": 25,
            "output_tokens": 40,
            "total_tokens": 65,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "max_output_tokens": None,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "user": None,
        "store": False,
    }
    models = {
        "object": "list",
        "data": [{"id": "bench-model", "object": "model", "created": 1763700000, "owned_by": "bench"}],
    }
    files = {
        "plain/v1/chat/completions.json": json.dumps(chat),
        "stream/v1/chat/completions.sse": sse,
        "plain/v1/responses.json": json.dumps(resp),
        "plain/v1/models.json": json.dumps(models),
        "stream/v1/models.json": json.dumps(models),
        "slow/v1/chat/completions.sse": sse,
        "slow/v1/models.json": json.dumps(models),
    }
    for rel, body in files.items():
        path = os.path.join(root, "files", rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(body)
    conf = f"""worker_processes 1;
error_log {root}/error.log warn;
pid {root}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {root}/body; proxy_temp_path {root}/proxy; fastcgi_temp_path {root}/fcgi;
  uwsgi_temp_path {root}/uwsgi; scgi_temp_path {root}/scgi;
  keepalive_requests 1000000;
  types {{ application/json json; text/event-stream sse; }}
  server {{
    listen 127.0.0.1:{port};
    root {root}/files;
    client_max_body_size 64m;
    location /plain/ {{ error_page 405 =200 $uri; try_files $uri.json $uri =404; }}
    location /stream/ {{ error_page 405 =200 $uri; try_files $uri.sse $uri.json $uri =404; }}
    location /slow/ {{ error_page 405 =200 $uri; try_files $uri.sse $uri.json $uri =404;
                      sendfile off; output_buffers 1 512; postpone_output 0; limit_rate {SLOW_RATE}; }}
  }}
}}
"""
    path = os.path.join(root, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    return path


@contextlib.contextmanager
def canned_upstream(prefix: str) -> Iterator[tuple[str, int]]:
    """A fresh working directory and the port of the canned upstream (nginx) serving from it, for
    the tools beside this harness; nginx is stopped on leaving."""
    root = tempfile.mkdtemp(prefix=prefix)
    os.chmod(root, 0o755)  # nginx workers run as an unprivileged user
    up = free_port()
    nginx = subprocess.Popen(["nginx", "-c", write_upstream(root, up), "-g", "daemon off;"])
    try:
        if not wait_http(f"http://127.0.0.1:{up}/plain/v1/models"):
            raise SystemExit("the upstream (nginx) did not start")
        yield root, up
    finally:
        nginx.terminate()
        nginx.wait()


REDIS_URL = os.environ.get("MODELWIRE_BENCH_REDIS", "redis://127.0.0.1:6379/15")


def modelwire_config(root: str, port: int, up: int, workers: int = 0) -> str:
    """The default target's config; with ``workers``, that many workers sharing limits through
    Redis (the key has an rpm limit the run cannot reach, so every request is counted)."""
    name = f"modelwire-{workers}w" if workers else "modelwire"
    path = os.path.join(root, f"{name}.yaml")
    shared = f"redis: {REDIS_URL}\n" if workers else ""
    limit = ", rpm: 100000000" if workers else ""
    with open(path, "w") as f:
        f.write(f"""server: {{host: 127.0.0.1, port: {port}, workers: {workers or 1}}}
{shared}store: sqlite:///{root}/{name}-state.db
backends:
  plain: {{type: openai-compatible, api: chat, base_url: "http://127.0.0.1:{up}/plain/v1", api_key: {UPSTREAM_KEY}}}
  stream: {{type: openai-compatible, api: chat, base_url: "http://127.0.0.1:{up}/stream/v1", api_key: {UPSTREAM_KEY}}}
  slow: {{type: openai-compatible, api: chat, base_url: "http://127.0.0.1:{up}/slow/v1", api_key: {UPSTREAM_KEY}}}
  plainr: {{type: openai, api: responses, base_url: "http://127.0.0.1:{up}/plain/v1", api_key: {UPSTREAM_KEY}}}
models:
  - {{name: bench-model, route: plain/bench-model}}
  - {{name: bench-stream, route: stream/bench-model}}
  - {{name: bench-slow, route: slow/bench-model}}
  - {{name: bench-resp, route: plainr/bench-model}}
keys:
  - {{key: {CLIENT_KEY}, name: bench, models: ["*"]{limit}}}
""")
    return path


def litellm_config(root: str, up: int) -> str:
    path = os.path.join(root, "litellm.yaml")
    with open(path, "w") as f:
        f.write(f"""model_list:
  - model_name: bench-model
    litellm_params: {{model: openai/bench-model, api_base: "http://127.0.0.1:{up}/plain/v1", api_key: {UPSTREAM_KEY}}}
  - model_name: bench-stream
    litellm_params: {{model: openai/bench-model, api_base: "http://127.0.0.1:{up}/stream/v1", api_key: {UPSTREAM_KEY}}}
  - model_name: bench-slow
    litellm_params: {{model: openai/bench-model, api_base: "http://127.0.0.1:{up}/slow/v1", api_key: {UPSTREAM_KEY}}}
  - model_name: bench-resp
    litellm_params: {{model: openai/bench-model, api_base: "http://127.0.0.1:{up}/plain/v1", api_key: {UPSTREAM_KEY}}}
general_settings: {{master_key: {CLIENT_KEY}}}
litellm_settings: {{drop_params: true}}
""")
    return path


def ensure_peer(name: str) -> list[str] | None:
    os.makedirs(PEERS_DIR, exist_ok=True)
    if name == "litellm":
        venv = os.path.join(PEERS_DIR, "litellm-venv")
        exe = os.path.join(venv, "bin", "litellm")
        if not os.path.exists(exe):
            subprocess.run([sys.executable, "-m", "venv", venv], check=True)
            subprocess.run(
                [os.path.join(venv, "bin", "pip"), "install", "-q", "litellm[proxy]<1.109"], check=True
            )
        return [exe]
    if name == "portkey":
        d = os.path.join(PEERS_DIR, "portkey")
        entry = os.path.join(d, "node_modules", "@portkey-ai", "gateway", "build", "start-server.js")
        if not os.path.exists(entry):
            os.makedirs(d, exist_ok=True)
            subprocess.run(["npm", "init", "-y"], cwd=d, check=True, stdout=subprocess.DEVNULL)
            subprocess.run(
                ["npm", "install", "-q", "@portkey-ai/gateway@1.15.2"],
                cwd=d,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        return ["node", entry]
    raise SystemExit(f"unknown peer {name}")


def run_wrk(url: str, body: str, conns: int, seconds: int, auth: str = "", extra: str = "") -> dict[str, Any]:
    env = dict(os.environ, BODY_FILE=os.path.join(BODIES, body), AUTH_HEADER=auth, EXTRA_HEADERS=extra)
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{conns}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            os.path.join(HERE, "post.lua"),
            url,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            row: dict[str, Any] = json.loads(line)
            return row
    return {"error": (out.stdout + out.stderr)[-300:]}


def rss_kb(pid: int) -> int:
    total = 0
    pids = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(k) for k in kids]
    except Exception:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_cgroup(name: str, cores: float) -> str:
    """A CPU cgroup (v1's CFS quota, or v2's ``cpu.max``) capped at ``cores``, for ``--core-share``:
    returns its ``cgroup.procs`` path. Needs root and a writable cgroup hierarchy with the cpu
    controller; the period is 10 ms so a capped gateway is throttled in short slices, not 100 ms
    stalls."""
    period = 10_000
    quota = int(cores * period)
    v1 = {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}
    v2 = {"cpu.max": f"{quota} {period}"}
    mounts = [line.split()[1:4] for line in open("/proc/mounts")]
    found = [
        (where, v1) for where, kind, options in mounts if kind == "cgroup" and "cpu" in options.split(",")
    ]
    found += [(where, v2) for where, kind, _ in mounts if kind == "cgroup2" and _has_cpu(where)]
    if not found:
        raise SystemExit("--core-share needs a cgroup hierarchy with the cpu controller (and root)")
    where, limits = found[0]
    group = os.path.join(where, name)
    os.makedirs(group, exist_ok=True)
    for file, value in limits.items():
        with open(os.path.join(group, file), "w") as f:
            f.write(value)
    return os.path.join(group, "cgroup.procs")


def _has_cpu(hierarchy: str) -> bool:
    controllers = os.path.join(hierarchy, "cgroup.controllers")
    return os.path.exists(controllers) and "cpu" in open(controllers).read().split()


def in_cgroup(procs_file: str, cmd: list[str]) -> list[str]:
    """``cmd`` started inside a cgroup: the shell joins it, then becomes ``cmd``, whose workers
    inherit it."""
    return ["sh", "-c", f'echo $$ > {procs_file} && exec "$@"', "sh", *cmd]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children (workers), in seconds."""
    pids = [pid]
    try:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(k) for k in kids]
    except Exception:
        pass
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def isolate(procs: dict[str, subprocess.Popen], active: str | None) -> None:
    """Freeze every gateway but the one measured (``active``; None thaws them all), so that no
    target's leftover work taxes whoever runs next. The upstream always runs."""
    for name, p in procs.items():
        if name == "upstream":
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGCONT if active in (None, name) else signal.SIGSTOP)
    time.sleep(0.3)


def quiesce(pid: int, limit: float = 120.0, step: float = 0.5, busy: float = 0.05) -> float:
    """Wait until a target has finished what its turn left it, its CPU under ``busy`` of a core;
    returns the seconds waited. A gateway may go on serving requests whose clients wrk has closed
    (LiteLLM ran a full core ~10 s after the 1,024 paced streams): frozen with that backlog, it
    spent its next turns on it and answered no chat request in rounds 2 and 3."""
    start = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - start < limit:
        time.sleep(step)
        now = cpu_seconds(pid)
        if now - last < busy * step:
            break
        last = now
    return round(time.monotonic() - start, 1)


def print_ratios(results: dict, scenarios: list[str], med: Callable[[list[dict], str], float | None]) -> None:
    """The issue's goals as ratios: CPU per request against each floor, rps against the peers, the
    translated paths against chat passthrough, paced streams against the upstream directly."""

    def fig(target: str, scen: str, key: str) -> float | None:
        return med(results.get(target, {}).get(scen, []), key)

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:.2f}" if a and b else "n/a"

    print("\nratios (single run)")
    for scen in ("chat", "chat_stream", "responses"):
        if scen in scenarios:
            cpu = fig("modelwire", scen, "cpu_us_per_req")
            for floor in ("floor", "floor-http1"):
                print(
                    f"  {scen}: modelwire CPU/req ÷ {floor}'s = {ratio(cpu, fig(floor, scen, 'cpu_us_per_req'))}"
                )
    if "chat_c1" in scenarios:
        for floor in ("floor", "floor-http1"):
            p50, fp50 = fig("modelwire", "chat_c1", "p50_ms"), fig(floor, "chat_c1", "p50_ms")
            if p50 is not None and fp50 is not None:
                print(
                    f"  chat_c1: p50 {p50 - fp50:+.3f} ms over {floor}; p99 ÷ {floor}'s = "
                    f"{ratio(fig('modelwire', 'chat_c1', 'p99_ms'), fig(floor, 'chat_c1', 'p99_ms'))}"
                )
    for scen in ("stream_slow_256", "stream_slow_1024"):
        if scen in scenarios:
            d50, m50 = fig("direct", scen, "p50_ms"), fig("modelwire", scen, "p50_ms")
            added = f"{m50 - d50:+.1f} ms" if d50 is not None and m50 is not None else "n/a"
            print(
                f"  {scen}: modelwire rps ÷ direct = {ratio(fig('modelwire', scen, 'rps'), fig('direct', scen, 'rps'))}"
                f", p50 added {added}"
            )
    for scen in TRANSLATED:
        if scen in scenarios:
            # The CPU ratio beside it: rps moves with the machine's drift over the minutes between
            # the two scenarios, CPU per request far less.
            print(
                f"  {scen}: rps ÷ chat passthrough = {ratio(fig('modelwire', scen, 'rps'), fig('modelwire', 'chat', 'rps'))}"
                f" (CPU/req: chat's ÷ this one's = "
                f"{ratio(fig('modelwire', 'chat', 'cpu_us_per_req'), fig('modelwire', scen, 'cpu_us_per_req'))})"
            )
    many = sorted((t for t in results if t.startswith("modelwire-") and t != "modelwire-1w"), key=len)
    for target in many:
        for scen in scenarios:
            # Each round measures the two targets back to back: their ratio in that round is spared
            # the machine's drift between rounds, which the ratio of medians is not.
            several = results[target].get(scen, [])
            one = results.get("modelwire-1w", {}).get(scen, [])
            rounds = ", ".join(ratio(a.get("rps"), b.get("rps")) for a, b in zip(several, one, strict=False))
            print(
                f"  {scen}: {target} rps ÷ modelwire-1w's = "
                f"{ratio(fig(target, scen, 'rps'), fig('modelwire-1w', scen, 'rps'))} (rounds: {rounds})"
            )
    for peer in ("portkey", "litellm"):
        if peer in results and "chat" in scenarios:
            print(
                f"  chat: modelwire rps ÷ {peer} = {ratio(fig('modelwire', 'chat', 'rps'), fig(peer, 'chat', 'rps'))}"
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="", help="comma list: litellm,portkey")
    ap.add_argument("--no-modelwire", action="store_true", help="measure only the upstream and the peers")
    ap.add_argument(
        "--modelwire-cmd",
        default="",
        help="command that runs the modelwire CLI "
        "(default: .venv/bin/modelwire if present, else modelwire on PATH)",
    )
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also measure floor_proxy.py, the leanest Python "
        "passthrough on the same stack (needs the modelwire venv's python: uvicorn, aiohttp)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run modelwire with 1 and with N workers, limits shared through Redis "
        f"(MODELWIRE_BENCH_REDIS, default {REDIS_URL}), and report the scaling",
    )
    ap.add_argument(
        "--core-share",
        type=float,
        default=0.0,
        help="with --workers: cap each modelwire-Nw target at N times this many cores (a CPU "
        "cgroup), so its workers scale over cores of their own while wrk and nginx use the rest; "
        "on two cores, 0.5 compares one worker on half a core with two on a whole one (needs root)",
    )
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--json", default="", help="write raw results here")
    ap.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="also read each target's RSS again after this many idle seconds (what it gives back "
        "once a burst is over: modelwire trims its heap after a quiet spell of 10-20 s)",
    )
    args = ap.parse_args()

    ensure_debian("nginx", "nginx-light")
    ensure_debian("wrk", "wrk")
    root = tempfile.mkdtemp(prefix="modelwire-bench-")
    os.chmod(root, 0o755)  # nginx workers run as an unprivileged user
    up = free_port()
    procs: dict[str, subprocess.Popen] = {}
    logs = {}
    groups: list[str] = []  # CPU cgroups made for --core-share, removed once their targets exit

    def start(name: str, cmd: list[str], env: dict | None = None, cwd: str | None = None) -> subprocess.Popen:
        log = open(os.path.join(root, f"{name}.log"), "w")
        logs[name] = log.name
        p = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env or os.environ.copy(),
            cwd=cwd,
            start_new_session=True,
        )
        procs[name] = p
        return p

    targets: dict[str, dict] = {}
    try:
        nginx_conf = write_upstream(root, up)
        start("upstream", ["nginx", "-c", nginx_conf, "-g", "daemon off;"])
        if not wait_http(f"http://127.0.0.1:{up}/plain/v1/models"):
            raise SystemExit("upstream stub did not start")
        targets["direct"] = {
            "base": f"http://127.0.0.1:{up}",
            "auth": "",
            "extra": "",
            "paths": {
                "chat_c1": "/plain/v1/chat/completions",
                "chat": "/plain/v1/chat/completions",
                "chat_stream": "/stream/v1/chat/completions",
                "stream_slow_256": "/slow/v1/chat/completions",
                "stream_slow_1024": "/slow/v1/chat/completions",
                "responses": "/plain/v1/responses",
            },
        }

        if not args.no_modelwire:
            cmd = (
                args.modelwire_cmd.split()
                if args.modelwire_cmd
                else [os.path.join(ROOT, ".venv/bin/modelwire")]
            )
            scaling = sorted({1, args.workers}) if args.workers else []
            for name, workers in [("modelwire", 0)] + [(f"modelwire-{n}w", n) for n in scaling]:
                port = free_port()
                serve = [*cmd, "serve", "--config", modelwire_config(root, port, up, workers)]
                if workers and args.core_share:
                    group = cpu_cgroup(f"{os.path.basename(root)}-{name}", workers * args.core_share)
                    groups.append(os.path.dirname(group))
                    serve = in_cgroup(group, serve)
                start(name, serve)
                if not wait_http(
                    f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
                ):
                    print(open(logs[name]).read()[-2000:], file=sys.stderr)
                    raise SystemExit(f"{name} did not start")
                targets[name] = {
                    "base": f"http://127.0.0.1:{port}",
                    "auth": f"Authorization: Bearer {CLIENT_KEY}",
                    "extra": "",
                    "paths": {},
                }

        if args.floor:
            cmd = (
                args.modelwire_cmd.split()
                if args.modelwire_cmd
                else [os.path.join(ROOT, ".venv/bin/modelwire")]
            )
            py = os.path.join(os.path.dirname(cmd[0]), "python")
            for name, client in (("floor", "aiohttp"), ("floor-http1", "http1")):
                port = free_port()
                start(
                    name,
                    [py, os.path.join(HERE, "floor_proxy.py"), f"http://127.0.0.1:{up}", str(port), client],
                )
                if wait_http(f"http://127.0.0.1:{port}/v1/models"):
                    targets[name] = {
                        "base": f"http://127.0.0.1:{port}",
                        "auth": "",
                        "extra": "",
                        "paths": {s: FLOOR_PATHS.get(s) for s in SCENARIOS},
                    }
                else:
                    print(f"{name} proxy did not start; see {logs[name]}", file=sys.stderr)

        for peer in [p for p in args.peers.split(",") if p]:
            exe = ensure_peer(peer)
            port = free_port()
            if peer == "litellm":
                env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
                start(
                    peer,
                    [
                        *exe,
                        "--config",
                        litellm_config(root, up),
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                        "--num_workers",
                        "1",
                    ],
                    env=env,
                )
                targets[peer] = {
                    "base": f"http://127.0.0.1:{port}",
                    "auth": f"Authorization: Bearer {CLIENT_KEY}",
                    "extra": "",
                    "paths": {},
                }
            elif peer == "portkey":
                start(peer, [*exe, f"--port={port}", "--headless"], cwd=os.path.join(PEERS_DIR, "portkey"))
                targets[peer] = {
                    "base": f"http://127.0.0.1:{port}",
                    "auth": f"Authorization: Bearer {UPSTREAM_KEY}",
                    "extra": f"x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:{up}/plain/v1",
                    "extra_stream": f"x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:{up}/stream/v1",
                    "extra_slow": f"x-portkey-provider: openai|x-portkey-custom-host: http://127.0.0.1:{up}/slow/v1",
                    "paths": dict.fromkeys(TRANSLATED),
                }
            auth = {"Authorization": targets[peer]["auth"].split(": ", 1)[1]}  # unauthenticated: a traceback
            if not wait_http(targets[peer]["base"] + "/v1/models", timeout=120, headers=auth):
                print(f"{peer} did not start; see {logs[peer]}", file=sys.stderr)
                del targets[peer]

        scenarios = [s for s in args.scenarios.split(",") if s]
        results: dict[str, dict[str, list[dict]]] = {t: {s: [] for s in scenarios} for t in targets}
        for _rnd in range(args.rounds):
            for scen in scenarios:
                path, body, conns = SCENARIOS[scen]
                for name, t in targets.items():
                    p = (
                        t["paths"].get(scen)
                        if name.startswith(("direct", "floor"))
                        else t["paths"].get(scen, path)
                    )
                    if p is None:
                        continue
                    extra = t["extra"]
                    if scen == "chat_stream":
                        extra = t.get("extra_stream", extra)
                    elif scen.startswith("stream_slow"):
                        extra = t.get("extra_slow", extra)
                    isolate(procs, name)
                    proc = procs.get(name)
                    cpu0 = cpu_seconds(proc.pid) if proc else 0.0
                    r = run_wrk(t["base"] + p, body, conns, args.seconds, t["auth"], extra)
                    if proc:
                        r["quiesce_s"] = quiesce(proc.pid)  # the turn's leftovers count as its CPU
                    if proc and r.get("requests"):
                        r["cpu_us_per_req"] = (cpu_seconds(proc.pid) - cpu0) * 1e6 / r["requests"]
                    results[name][scen].append(r)
        isolate(procs, None)
        for name in targets:
            if name in procs:
                results[name]["rss_kb"] = rss_kb(procs[name].pid)
        if args.settle > 0:
            time.sleep(args.settle)
            for name in targets:
                if name in procs:
                    results[name]["rss_settled_kb"] = rss_kb(procs[name].pid)

        def med(rows: list[dict], key: str) -> float | None:
            vals = [r[key] for r in rows if key in r]
            return statistics.median(vals) if vals else None

        print(f"\nrounds={args.rounds} seconds={args.seconds} (medians; errors = non-2xx or socket errors)\n")
        print(
            "| scenario | target | rps | p50 ms | p99 ms | errors | CPU µs/req | rps / direct | rps / modelwire |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for scen in scenarios:
            d = med(results.get("direct", {}).get(scen, []), "rps")
            m = med(results.get("modelwire", {}).get(scen, []), "rps")
            for name in targets:
                rows = results[name].get(scen, [])
                if not rows:
                    continue
                rps = med(rows, "rps")
                errs = sum(r.get("errors", 0) for r in rows)
                bad = [r["error"] for r in rows if "error" in r]
                if rps is None:
                    print(f"| {scen} | {name} | failed: {bad[:1]} | | | | | | |")
                    continue
                cpu = med(rows, "cpu_us_per_req")
                print(
                    f"| {scen} | {name} | {rps:.0f} | {med(rows, 'p50_ms'):.3f} | {med(rows, 'p99_ms'):.3f} | {errs} | "
                    f"{'' if cpu is None else f'{cpu:.0f}'} | "
                    f"{(rps / d) if d else float('nan'):.3f} | {(rps / m) if m else float('nan'):.2f} |"
                )
        for name in targets:
            if "rss_kb" in results[name]:
                settled = results[name].get("rss_settled_kb")
                after = f" ({settled / 1024:.0f} MiB after {args.settle:g} s idle)" if settled else ""
                print(f"rss {name}: {results[name]['rss_kb'] / 1024:.0f} MiB{after}")
        print_ratios(results, scenarios, med)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        for p in procs.values():
            try:
                os.killpg(p.pid, signal.SIGCONT)
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs.values():
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for group in groups:
            with contextlib.suppress(OSError):
                os.rmdir(group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
