#!/usr/bin/env python3
"""What tracing costs the gateway: the same gateway with tracing off, on at 100% sampling and on at
a lower ratio, side by side in one run, exporting to a local OTLP/HTTP sink.

    .venv/bin/python bench/trace_cost.py                          # chat and chat_stream, 4 rounds
    .venv/bin/python bench/trace_cost.py --scenarios chat --rounds 6 --ratio 0.1

Rounds interleave the variants, and while one is measured the others are stopped (SIGSTOP), so
machine drift and idle loops hit all alike. Each variant runs as several gateway processes
(``--processes``, 2 by default), measured in turn: one process can run ~10% faster or slower than
another of the same code (its memory layout), which one process per variant would read as the
variant's cost. CPU µs per request is a process's user + system time over its turn divided by the
requests it served; a variant's figure is the median of all its turns. Each traced variant exports
to a sink of its own, which counts the server spans it gets: the first line says whether the 100%
variant exported one for every request (dropped spans would look cheap). Needs nginx and wrk.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # its canned upstream, config, scenarios and wrk driver

AUTH = f"Authorization: Bearer {compare.CLIENT_KEY}"

SINK = """
import sys
from aiohttp import web

servers = [0]  # server spans received: each names its request once

async def traces(request):
    servers[0] += (await request.read()).count(b"modelwire.request_id")
    return web.Response(body=b"", content_type="application/x-protobuf")

async def count(request):
    return web.Response(text=str(servers[0]))

app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/traces", traces)
app.router.add_get("/count", count)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
"""


Gateway = tuple[subprocess.Popen[bytes], str]


def start_gateway(root: Path, name: str, up: int, telemetry: str | None) -> Gateway:
    port = compare.free_port()
    config = Path(compare.modelwire_config(str(root), port, up))
    text = config.read_text() + (f"telemetry: {telemetry}\n" if telemetry else "")
    path = root / f"{name}.yaml"
    path.write_text(text)
    # Tracing must come from the config alone, not from an OTEL_ variable of the caller's shell.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    modelwire = os.path.join(compare.ROOT, ".venv/bin/modelwire")
    with (root / f"{name}.log").open("w") as log:
        proc = subprocess.Popen(
            [modelwire, "serve", "--config", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    base = f"http://127.0.0.1:{port}"
    if not compare.wait_http(base + "/healthz", timeout=120):
        raise SystemExit(f"{name} did not start; see {root / f'{name}.log'}")
    return proc, base


def measure(url: str, body: str, conns: int, seconds: int) -> dict[str, Any]:
    """One wrk run; a failed run stops the benchmark rather than averaging in as zero."""
    row = compare.run_wrk(url, body, conns, seconds, AUTH)
    if "error" in row:
        raise SystemExit(f"wrk failed on {url}: {row['error']}")
    return row


def ratio_line(served: int, exported: int) -> str:
    """Whether the 100% variant exported a trace for every request (a dropped span costs nothing,
    so a lossy exporter would look cheap)."""
    share = exported / max(1, served)
    return f"on 100%: {exported} server spans exported for {served} requests served ({share:.1%})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default="chat,chat_stream")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--ratio", type=float, default=0.1, help="the sampled variant's ratio")
    ap.add_argument("--processes", type=int, default=2, help="gateway processes per variant")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mw-trace-bench-"))
    root.chmod(0o755)
    up = compare.free_port()
    nginx_conf = compare.write_upstream(str(root), up)
    procs = [subprocess.Popen(["nginx", "-c", nginx_conf, "-g", "daemon off;"])]
    sinks = {}  # each traced variant exports to its own, which counts what it got
    for name in ("on", "sampled"):
        port = compare.free_port()
        procs.append(subprocess.Popen([sys.executable, "-c", SINK, str(port)]))
        sinks[name] = f"http://127.0.0.1:{port}"
    variants: dict[str, list[Gateway]] = {}
    try:
        for url in [f"http://127.0.0.1:{up}/plain/v1/models"] + [s + "/count" for s in sinks.values()]:
            if not compare.wait_http(url):
                raise SystemExit(f"{url} did not come up")
        settings = {
            "off": ("off", None),
            "on 100%": ("on", f"{{endpoint: '{sinks['on']}'}}"),
            f"on {args.ratio:.0%}": (
                "sampled",
                f"{{endpoint: '{sinks['sampled']}', sample_ratio: {args.ratio}}}",
            ),
        }
        for label, (name, telemetry) in settings.items():
            variants[label] = [
                start_gateway(root, f"{name}-{n}", up, telemetry) for n in range(args.processes)
            ]
        gateways = [g for group in variants.values() for g in group]
        procs += [p for p, _ in gateways]
        scenarios = [s for s in args.scenarios.split(",") if s]
        results: dict[tuple[str, str], list[dict[str, float]]] = {}
        for _ in range(args.rounds):
            for scenario in scenarios:
                path, body, conns = compare.SCENARIOS[scenario]
                for n in range(args.processes):
                    for name, group in variants.items():
                        proc, base = group[n]
                        for p, _ in gateways:
                            p.send_signal(signal.SIGCONT if p is proc else signal.SIGSTOP)
                        time.sleep(0.3)
                        before = compare.cpu_seconds(proc.pid)
                        row = measure(base + path, body, conns, args.seconds)
                        time.sleep(0.2)  # the exporter's last batch of the turn
                        spent = compare.cpu_seconds(proc.pid) - before
                        row["cpu_us"] = spent * 1e6 / max(1, row["requests"])
                        results.setdefault((scenario, name), []).append(row)
        for p, _ in gateways:
            p.send_signal(signal.SIGCONT)
        time.sleep(2)  # the exporters' last batches (sent within a second)
        served = sum(
            int(r["requests"]) for (_, name), rows in results.items() if name == "on 100%" for r in rows
        )
        exported = int(urllib.request.urlopen(sinks["on"] + "/count").read())
        print(ratio_line(served, exported))
        print("| scenario | variant | rps | p50 ms | p99 ms | errors | CPU µs/req | CPU / off |")
        print("|---|---|---|---|---|---|---|---|")
        for scenario in scenarios:
            off = statistics.median(r["cpu_us"] for r in results[(scenario, "off")])
            for name in variants:
                rows = results[(scenario, name)]

                def med(key: str, rows: list[dict[str, float]] = rows) -> float:
                    return statistics.median(r[key] for r in rows)

                errors = sum(r["errors"] for r in rows)
                print(
                    f"| {scenario} | {name} | {med('rps'):.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.1f} "
                    f"| {errors:.0f} | {med('cpu_us'):.0f} | {med('cpu_us') / off:.3f} |"
                )
            ratios = [
                on["cpu_us"] / base["cpu_us"]
                for on, base in zip(results[(scenario, "on 100%")], results[(scenario, "off")], strict=True)
            ]
            listed = ", ".join(f"{r:.3f}" for r in ratios)
            print(f"{scenario}: CPU on 100% / off, turn by turn (each process in each round): {listed}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
