#!/usr/bin/env python3
"""Realtime round trips on one socket, straight to the upstream and through the gateway.

Each turn is a ``response.create`` answered by the fake's default text reply (about 15 events up
to ``response.done``); the gateway's share is the difference: the limit check on the way in, the
byte search for lifecycle events, one usage row per ``response.done``. The upstream is the test
suite's fake (it validates every event against the spec, which costs it time too). Printed per
path: p50 and p90 of the round trip, in milliseconds.

    .venv/bin/python bench/realtime_turns.py [--turns 100]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets.sync.client as ws_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import FakeUpstream  # noqa: E402
from tests.gateway_fixtures import CLIENT_KEY, base_config, start_gateway  # noqa: E402


def turns(url: str, key: str, count: int) -> list[float]:
    """Milliseconds from each ``response.create`` sent to its ``response.done`` read."""
    took = []
    with ws_client.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as socket:
        socket.recv()  # session.created
        for _ in range(count):
            started = time.perf_counter()
            socket.send('{"type":"response.create"}')
            while '"response.done"' not in str(socket.recv()):
                pass
            took.append((time.perf_counter() - started) * 1000)
    return sorted(took)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=100)
    count = parser.parse_args().turns
    upstream = FakeUpstream().start()
    tmp = Path(tempfile.mkdtemp())
    config = base_config(upstream, tmp)
    config["backends"]["rt"] = {"type": "openai", "base_url": upstream.url, "api_key": "sk-up"}
    config["models"] = [{"name": "realtime", "route": "rt/gpt-realtime"}]
    gateway = start_gateway(config, tmp)
    paths = (
        ("direct", upstream.url.replace("http", "ws") + "/realtime?model=gpt-realtime", "sk-up"),
        ("gateway", gateway.url.replace("http", "ws") + "/v1/realtime?model=realtime", CLIENT_KEY),
    )
    try:
        for name, url, key in paths:
            turns(url, key, 10)  # warm-up
            took = turns(url, key, count)
            p90 = took[min(len(took) - 1, int(len(took) * 0.9))]
            print(f"{name:8s} turns={count} p50={statistics.median(took):.2f} ms p90={p90:.2f} ms")
    finally:
        gateway.stop()
        upstream.stop()


if __name__ == "__main__":
    main()
