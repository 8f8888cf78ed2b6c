#!/usr/bin/env python3
"""The gateway's memory over a long run: drives N chat requests through modelwire in slices of a few
seconds, against compare.py's canned upstream, and prints the gateway's RSS after each slice.

    .venv/bin/python bench/rss.py 1000000     # RSS after warm-up, every slice, and the change

Exits 1 when RSS moved by more than 10% between warm-up and the end (a leak, or a cache without a
bound). Needs nginx and wrk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # its canned upstream, config, scenarios and wrk driver

SLICE_SECONDS = 3
ALLOWED_GROWTH_PERCENT = 10.0


Procs = list[subprocess.Popen[bytes]]


def start(cmd: list[str], log: Path, procs: Procs) -> subprocess.Popen[bytes]:
    """Start ``cmd`` and list it in ``procs`` at once, so a failure after this still stops it."""
    with log.open("w") as out:
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT))
    return procs[-1]


def start_upstream(root: str, procs: Procs) -> int:
    port = compare.free_port()
    nginx = ["nginx", "-c", compare.write_upstream(root, port), "-g", "daemon off;"]
    start(nginx, Path(root, "nginx.log"), procs)
    if not compare.wait_http(f"http://127.0.0.1:{port}/plain/v1/models"):
        raise SystemExit("the canned upstream did not start")
    return port


def start_gateway(root: str, up: int, procs: Procs) -> tuple[int, str]:
    port = compare.free_port()
    modelwire = os.path.join(compare.ROOT, ".venv/bin/modelwire")
    config = compare.modelwire_config(root, port, up)
    proc = start([modelwire, "serve", "--config", config], Path(root, "modelwire.log"), procs)
    base = f"http://127.0.0.1:{port}"
    if not compare.wait_http(base + "/healthz", timeout=120):
        raise SystemExit(f"modelwire did not start; see {root}/modelwire.log")
    return proc.pid, base


def chat(base: str, seconds: int) -> dict[str, Any]:
    path, body, conns = compare.SCENARIOS["chat"]
    row = compare.run_wrk(base + path, body, conns, seconds, f"Authorization: Bearer {compare.CLIENT_KEY}")
    if "error" in row:
        raise SystemExit(f"wrk failed: {row['error']}")
    return row


def rss_mib(pid: int) -> float:
    return compare.rss_kb(pid) / 1024


def run(base: str, pid: int, total: int) -> float:
    """Drive ``total`` chat requests, printing RSS after each slice; returns the change in percent."""
    chat(base, 2)  # warm up: caches, pools, first allocations
    at_start = rss_mib(pid)
    print(f"after warm-up: {at_start:.1f} MiB")
    done = 0
    at_end = at_start
    while done < total:
        row = chat(base, SLICE_SECONDS)
        done += int(row["requests"])
        at_end = rss_mib(pid)
        print(f"{done:>8} requests  rss {at_end:.1f} MiB  ({row['rps']:.0f} rps, {row['errors']:.0f} errors)")
    growth = (at_end - at_start) / at_start * 100
    print(f"\nRSS from {at_start:.1f} to {at_end:.1f} MiB over {done} requests: {growth:+.1f}%")
    return growth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("requests", type=int, help="how many chat requests to drive")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="mw-rss-bench-")
    os.chmod(root, 0o755)  # nginx workers run as an unprivileged user
    procs: Procs = []
    try:
        up = start_upstream(root, procs)
        pid, base = start_gateway(root, up, procs)
        growth = run(base, pid, args.requests)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    return 0 if abs(growth) <= ALLOWED_GROWTH_PERCENT else 1


if __name__ == "__main__":
    sys.exit(main())
