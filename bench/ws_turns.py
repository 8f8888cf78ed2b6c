#!/usr/bin/env python3
"""A 20-turn tool loop through the gateway: Responses over WebSocket against HTTP + SSE.

Each turn the model calls a tool and the client answers with its output (about 2 KB, a file read);
``store: false`` throughout, as Codex CLI runs. Over HTTP the client sends the whole conversation
every turn, as it must; over WebSocket it sends only the new items plus ``previous_response_id``,
and the gateway carries the turn on over the upstream's own socket, again with only the new items.

The upstream is the test suite's fake (a real aiohttp server on loopback, checking every request
against OpenAI's spec, which costs it time in proportion to what it is sent). Printed per mode:
bytes client → gateway and gateway → upstream, per turn (first, last, mean) and in all, and the
wall time of the whole loop (median of ``--rounds``).

    .venv/bin/python bench/ws_turns.py [--turns 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets.sync.client as ws_client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import FakeUpstream, Reply  # noqa: E402
from tests.gateway_fixtures import CLIENT_KEY, start_gateway  # noqa: E402

TOOL = {
    "type": "function",
    "name": "read_file",
    "strict": False,
    "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}
FILE = "def handler(event):\n    return event\n" * 55  # about 2 KB of tool output per turn
PROMPT = [{"type": "message", "role": "user", "content": "Read the files and sum up what they do."}]
HEADERS = {"Authorization": f"Bearer {CLIENT_KEY}"}


def script(upstream: FakeUpstream, turns: int) -> None:
    calls = [
        Reply.tool_calls([("read_file", json.dumps({"path": f"src/m{n}.py"}))]) for n in range(turns - 1)
    ]
    upstream.script(*calls, Reply.text("They are all handlers."))


def sse_events(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.decode().splitlines() if line.startswith("data: {")]


def over_http(url: str, turns: int) -> tuple[list[int], float]:
    """The whole conversation each turn, streamed back as SSE."""
    conversation: list[dict[str, Any]] = list(PROMPT)
    sent: list[int] = []
    started = time.perf_counter()
    for _ in range(turns):
        request = {"model": "resp-model", "input": conversation, "tools": [TOOL], "store": False}
        body = json.dumps({**request, "stream": True}).encode()
        sent.append(len(body))
        post = urllib.request.Request(
            url + "/v1/responses", body, {**HEADERS, "content-type": "application/json"}
        )
        with urllib.request.urlopen(post, timeout=60) as reply:
            done = sse_events(reply.read())[-1]["response"]
        conversation += [*done["output"], *outputs(done)]
    return sent, time.perf_counter() - started


def over_socket(url: str, turns: int) -> tuple[list[int], float]:
    """Only the new items each turn, chained by ``previous_response_id``."""
    sent: list[int] = []
    started = time.perf_counter()
    new: list[dict[str, Any]] = list(PROMPT)
    previous = None
    with ws_client.connect(url.replace("http", "ws", 1) + "/v1/responses", additional_headers=HEADERS) as ws:
        for _ in range(turns):
            frame: dict[str, Any] = {"type": "response.create", "model": "resp-model", "input": new}
            frame.update(tools=[TOOL], store=False)
            if previous:
                frame["previous_response_id"] = previous
            text = json.dumps(frame)
            sent.append(len(text))
            ws.send(text)
            while (event := json.loads(ws.recv(timeout=60)))["type"] != "response.completed":
                assert event["type"] != "error", event
            previous, new = event["response"]["id"], outputs(event["response"])
    return sent, time.perf_counter() - started


def outputs(response: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"type": "function_call_output", "call_id": item["call_id"], "output": FILE}
        for item in response["output"]
        if item["type"] == "function_call"
    ]


def describe(label: str, sizes: list[int]) -> str:
    return (
        f"{label:>20}: first {sizes[0]:>7,} B, last {sizes[-1]:>7,} B, "
        f"mean {statistics.mean(sizes):>9,.0f} B, total {sum(sizes):>9,} B"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    upstream = FakeUpstream().start()
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "store": f"sqlite:///{tmp}/state.db",
            "backends": {"oai": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up-bench"}},
            "models": [{"name": "resp-model", "route": "oai/gpt-4.1"}],
            "keys": [{"key": CLIENT_KEY, "name": "bench"}],
        }
        gateway = start_gateway(config, Path(tmp), name="bench")
        try:
            results: dict[str, list[tuple[list[int], list[int], float]]] = {"http": [], "websocket": []}
            for _ in range(args.rounds):
                for mode, run in (("http", over_http), ("websocket", over_socket)):
                    upstream.reset()
                    script(upstream, args.turns)
                    sent, seconds = run(gateway.url, args.turns)
                    upward = [len(r.raw) for r in upstream.requests if r.body is not None]
                    assert not upstream.violations, upstream.violations[:3]
                    results[mode].append((sent, upward, seconds))
        finally:
            gateway.stop()
            upstream.stop()
    print(f"{args.turns}-turn tool loop, store: false, ~{len(FILE):,} B of tool output per turn")
    for mode, rounds in results.items():
        sent, upward, _ = rounds[-1]
        wall = statistics.median(seconds for _, _, seconds in rounds)
        print(f"{mode}: wall {wall:.3f} s (median of {len(rounds)}), upstream calls {len(upward)}")
        print(describe("client -> gateway", sent))
        print(describe("gateway -> upstream", upward))


if __name__ == "__main__":
    main()
