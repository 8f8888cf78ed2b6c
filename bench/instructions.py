#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: the gateway with tracing off and on, answering
sequential chat requests from the canned upstream. Counts swing far less with the machine's load
than CPU time does, so this resolves changes that wrk-based runs on a busy machine cannot.

    .venv/bin/python bench/instructions.py                 # 500 and 5,500 requests each way
    .venv/bin/python bench/instructions.py --requests 300,3300
    .venv/bin/python bench/instructions.py --floor --scenarios chat,chat_stream,responses
                                           # modelwire beside the two floors, per scenario

Each gateway runs under valgrind twice, with two request counts; the difference between the two
totals, divided by the difference in requests, leaves start-up and shutdown out. What runs on a
clock (the usage writer's flush each second) still counts by the run's length, so two runs can
differ by a few percent (the store's key poll, every 0.25 s, is slowed to once an hour here for
that reason). Needs nginx and valgrind (Debian packages, installed when missing); a run
takes a few minutes.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare  # its canned upstream, config and bodies
import trace_cost  # its OTLP sink

HERE = Path(__file__).resolve().parent
MODELWIRE = os.path.join(compare.ROOT, ".venv/bin/modelwire")


@dataclass(frozen=True)
class Target:
    """What runs under callgrind: modelwire (tracing off, or exporting to ``sink``) or a floor."""

    label: str
    floor: str | None = None  # floor_proxy.py's upstream client: aiohttp or http1
    sink: str | None = None

    def command(self, root: Path, port: int, up: int, run: str) -> list[str]:
        if self.floor is not None:
            return [
                sys.executable,
                str(HERE / "floor_proxy.py"),
                f"http://127.0.0.1:{up}",
                str(port),
                self.floor,
            ]
        config = Path(compare.modelwire_config(str(root), port, up)).read_text()
        if self.sink:
            config += f"telemetry: {{endpoint: '{self.sink}'}}\n"
        (root / f"{run}.yaml").write_text(config)
        return [sys.executable, MODELWIRE, "serve", "--config", str(root / f"{run}.yaml")]

    def path(self, scenario: str) -> str:
        return compare.FLOOR_PATHS[scenario] if self.floor is not None else compare.SCENARIOS[scenario][0]


def total_instructions(root: Path, up: int, scenario: str, target: Target, requests: int, port: int) -> int:
    """One process under callgrind: ``requests`` of ``scenario`` on one connection, then a clean stop."""
    run = f"{scenario}-{target.label.replace(' ', '-').replace('%', '')}-{requests}"
    root = root / run  # a directory per run: the config and state of two runs side by side apart
    root.mkdir()
    out = root / f"{run}.callgrind"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    # Spans leave in whole batches only, as under load: valgrind's slow clock would otherwise make
    # the once-a-second export of a few spans look like a cost of each request.
    env["OTEL_BSP_SCHEDULE_DELAY"] = "600000"
    env["PYTHONHASHSEED"] = "0"  # the same dict layouts in every run: start-up counts alike
    # The key table's poll (every 0.25 s) slowed to once an hour: a run under valgrind lasts minutes,
    # and its polls, not the requests, made most of the difference between two request counts.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_quiet_clocks(root)), env.get("PYTHONPATH")) if p)
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        *target.command(root, port, up, run),
    ]
    with (root / f"{run}.log").open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=log)
    try:
        if not compare.wait_http(
            f"http://127.0.0.1:{port}/healthz"
            if target.floor is None
            else f"http://127.0.0.1:{port}/v1/models",
            timeout=600,
        ):
            raise SystemExit(f"{target.label} did not start under valgrind; see {root / f'{run}.log'}")
        body = Path(compare.BODIES, compare.SCENARIOS[scenario][1]).read_bytes()
        headers = {"Authorization": f"Bearer {compare.CLIENT_KEY}", "Content-Type": "application/json"}
        client = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(requests):
            client.request("POST", target.path(scenario), body, headers)
            reply = client.getresponse()
            reply.read()
            if reply.status != 200:
                raise SystemExit(f"{target.label} answered {reply.status}; see {root / f'{run}.log'}")
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=600)
    for line in out.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {out}")


def _quiet_clocks(root: Path) -> Path:
    """A directory whose ``sitecustomize`` slows the gateway's clock-driven store poll."""
    where = root / "quiet"
    where.mkdir(exist_ok=True)
    (where / "sitecustomize.py").write_text("import modelwire.gateway.sync as s\ns.SYNC_SECONDS = 3600.0\n")
    return where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", default="500,5500", help="the two request counts, fewer first")
    ap.add_argument("--scenarios", default="chat", help="comma list: chat, chat_stream, responses")
    ap.add_argument("--floor", action="store_true", help="also count the two floors, not tracing")
    args = ap.parse_args()
    compare.ensure_debian("nginx", "nginx")
    compare.ensure_debian("valgrind", "valgrind")
    with compare.canned_upstream("mw-instructions-") as (root, up):
        _count(args, Path(root), up)
    return 0


def _count(args: argparse.Namespace, root: Path, up: int) -> None:
    few, many = (int(n) for n in args.requests.split(","))
    scenarios = args.scenarios.split(",")
    sink_port = compare.free_port()
    sink_proc = subprocess.Popen([sys.executable, "-c", trace_cost.SINK, str(sink_port)])
    sink = f"http://127.0.0.1:{sink_port}"
    if args.floor:
        targets = [
            Target("modelwire"),
            Target("floor", floor="aiohttp"),
            Target("floor-http1", floor="http1"),
        ]
    else:
        targets = [Target("off"), Target("on 100%", sink=sink)]
    try:
        if not compare.wait_http(sink + "/count"):
            raise SystemExit(f"{sink}/count did not come up")
        kind = "target" if args.floor else "tracing"
        print(f"| scenario | {kind} | instructions per request | ÷ {targets[0].label} |")
        print("|---|---|---|---|")
        for scenario in scenarios:
            per_request = {}
            for target in targets:
                with ThreadPoolExecutor(2) as pool:  # the two counts side by side: one per core
                    ports = (
                        compare.free_port(),
                        compare.free_port(),
                    )  # taken here: two threads could get one
                    count = partial(total_instructions, root, up, scenario, target)
                    low, high = pool.map(count, (few, many), ports)
                per_request[target.label] = (high - low) / (many - few)
            first = per_request[targets[0].label]
            for label, value in per_request.items():
                print(f"| {scenario} | {label} | {value:,.0f} | {value / first:.3f} |", flush=True)
    finally:
        sink_proc.terminate()
        sink_proc.wait(timeout=30)


if __name__ == "__main__":
    raise SystemExit(main())
