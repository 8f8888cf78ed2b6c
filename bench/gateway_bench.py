#!/usr/bin/env python3
"""modelwire's own gateway benchmark: throughput and latency per path, and memory over a long run.

A canned upstream (nginx serving fixed Chat and Responses answers) stands in for the vendor, so
what is measured is the gateway's own cost. Load comes from wrk over loopback.

    .venv/bin/python bench/gateway_bench.py                    # every scenario, 6 s each
    .venv/bin/python bench/gateway_bench.py --scenarios chat,chat_c1 --seconds 10
    .venv/bin/python bench/gateway_bench.py --rss 100000       # RSS every 10k requests over 100k

For comparisons against the floors and the peers (LiteLLM, Portkey) use bench/compare.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEY = "sk-bench-client"
TEXT = "The quick brown fox jumps over the lazy dog. " * 4
USAGE = {"prompt_tokens": 25, "completion_tokens": 40, "total_tokens": 65}

# name -> (path, body, connections)
SCENARIOS = {
    "chat_c1": (
        "/v1/chat/completions",
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}]},
        1,
    ),
    "chat": ("/v1/chat/completions", {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}, 32),
    "chat_stream": (
        "/v1/chat/completions",
        {"model": "chat-stream", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        32,
    ),
    "responses": ("/v1/responses", {"model": "resp", "input": "hi"}, 32),
    "responses_to_chat": ("/v1/responses", {"model": "chat", "input": "hi"}, 32),
    "messages_to_chat": (
        "/v1/messages",
        {
            "model": "chat",
            "max_tokens": 64,
            "system": "You are a helpful assistant.",
            "messages": [{"role": "user", "content": "Write one sentence about foxes."}],
        },
        32,
    ),
    "chat_to_responses": (
        "/v1/chat/completions",
        {"model": "resp", "messages": [{"role": "user", "content": "hi"}]},
        32,
    ),
}

LUA = """
local f = assert(io.open(os.getenv("BODY_FILE"), "r"))
wrk.method = "POST"; wrk.body = f:read("*a"); f:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("KEY")
local bad = 0
response = function(status) if status ~= 200 then bad = bad + 1 end end
done = function(s, lat, req)
  io.write(string.format('{"rps":%.1f,"p50_ms":%.3f,"p99_ms":%.3f,"errors":%d,"requests":%d}\\n',
    s.requests / (s.duration / 1e6), lat:percentile(50) / 1000, lat:percentile(99) / 1000,
    s.errors.connect + s.errors.read + s.errors.write + s.errors.status + s.errors.timeout, s.requests))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def canned(root: Path, port: int) -> Path:
    chat = {
        "id": "chatcmpl-b",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": TEXT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    base = {"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"content": w + " "}, "finish_reason": None}]}
        for w in TEXT.split()
    ]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    chunks.append({**base, "choices": [], "usage": USAGE})
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
    resp = {
        "id": "resp_b",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "m",
        "output": [
            {
                "type": "message",
                "id": "msg_b",
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
    }
    files = {
        "plain/v1/chat/completions.json": json.dumps(chat),
        "stream/v1/chat/completions.sse": sse,
        "plain/v1/responses.json": json.dumps(resp),
    }
    for rel, body in files.items():
        path = root / "files" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(body)
    conf = root / "nginx.conf"
    temp = " ".join(
        f"{k}_temp_path {root}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(f"""worker_processes 1; error_log {root}/error.log warn; pid {root}/nginx.pid;
events {{ worker_connections 4096; }}
http {{ access_log off; {temp} keepalive_requests 1000000;
  types {{ application/json json; text/event-stream sse; }}
  server {{ listen 127.0.0.1:{port}; root {root}/files;
    location /plain/ {{ error_page 405 =200 $uri; try_files $uri.json $uri =404; }}
    location /stream/ {{ error_page 405 =200 $uri; try_files $uri.sse $uri.json $uri =404; }} }} }}
""")
    return conf


def gateway_config(root: Path, port: int, up: int) -> Path:
    path = root / "modelwire.yaml"
    path.write_text(f"""server: {{host: 127.0.0.1, port: {port}}}
store: sqlite:///{root}/state.db
backends:
  plain: {{type: openai-compatible, api: chat, base_url: "http://127.0.0.1:{up}/plain/v1", api_key: sk-up}}
  stream: {{type: openai-compatible, api: chat, base_url: "http://127.0.0.1:{up}/stream/v1", api_key: sk-up}}
  resp: {{type: openai, api: responses, base_url: "http://127.0.0.1:{up}/plain/v1", api_key: sk-up}}
models:
  - {{name: chat, route: plain/m}}
  - {{name: chat-stream, route: stream/m}}
  - {{name: resp, route: resp/m}}
keys:
  - {{key: {KEY}, name: bench}}
""")
    return path


def wait_up(url: str) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def wrk(url: str, body: dict[str, object], conns: int, seconds: int, root: Path) -> dict[str, float]:
    body_file = root / f"body-{abs(hash(json.dumps(body)))}.json"
    body_file.write_text(json.dumps(body))
    script = root / "post.lua"
    script.write_text(LUA)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(script), url],
        env={**os.environ, "BODY_FILE": str(body_file), "KEY": KEY},
        capture_output=True,
        text=True,
    )
    line = next((x for x in reversed(out.stdout.splitlines()) if x.startswith("{")), None)
    if line is None:
        raise SystemExit(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    return json.loads(line)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--rss", type=int, default=0, help="run this many chat requests, sampling RSS")
    args = ap.parse_args()
    for tool in ("nginx", "wrk"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed (apt-get install nginx-light wrk)")
    root = Path(tempfile.mkdtemp(prefix="mw-bench-"))
    root.chmod(0o755)
    up, port = free_port(), free_port()
    procs = [subprocess.Popen(["nginx", "-c", str(canned(root, up)), "-g", "daemon off;"])]
    modelwire = str(ROOT / ".venv/bin/modelwire") if (ROOT / ".venv/bin/modelwire").exists() else "modelwire"
    with (root / "gateway.log").open("w") as log:
        gateway = subprocess.Popen(
            [modelwire, "serve", "--config", str(gateway_config(root, port, up))],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    procs.append(gateway)
    try:
        wait_up(f"http://127.0.0.1:{port}/healthz")
        base = f"http://127.0.0.1:{port}"
        if args.rss:
            return run_rss(base, root, gateway.pid, args.rss)
        print("| scenario | rps | p50 ms | p99 ms | errors |\n|---|---|---|---|---|")
        for name in [s for s in args.scenarios.split(",") if s]:
            path, body, conns = SCENARIOS[name]
            r = wrk(base + path, body, conns, args.seconds, root)
            print(f"| {name} | {r['rps']:.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']:.0f} |")
        print(f"\nrss: {rss_mib(gateway.pid):.0f} MiB")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(timeout=30)
    return 0


def run_rss(base: str, root: Path, pid: int, total: int) -> int:
    """Drive ``total`` chat requests in ten slices, printing RSS after each."""
    path, body, conns = SCENARIOS["chat"]
    wrk(base + path, body, conns, 2, root)  # warm up: caches, pools, first allocations
    start = rss_mib(pid)
    samples = [start]
    done = 0
    print(f"after warm-up: {start:.1f} MiB")
    while done < total:
        r = wrk(base + path, body, conns, 3, root)
        done += int(r["requests"])
        samples.append(rss_mib(pid))
        print(
            f"{done:>8} requests  rss {samples[-1]:.1f} MiB  ({r['rps']:.0f} rps, {r['errors']:.0f} errors)"
        )
    growth = (samples[-1] - start) / start * 100
    print(f"\nRSS from {start:.1f} to {samples[-1]:.1f} MiB over {done} requests: {growth:+.1f}%")
    return 0 if abs(growth) <= 10 else 1


if __name__ == "__main__":
    sys.exit(main())
