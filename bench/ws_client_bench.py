#!/usr/bin/env python3
"""Which WebSocket client the driver should use for Responses over WebSocket: aiohttp or websockets.

A stand-in server (aiohttp, in a subprocess so its CPU is not the client's) answers each text
frame with ``--events`` small JSON frames, the last one ``response.completed``, as a Responses
socket does. For each client library this measures the handshake, one turn (send a frame, read
every event until the last) and the client's CPU per turn, on one connection kept open.

    .venv/bin/python bench/ws_client_bench.py                  # 300 events a turn, 200 turns
    .venv/bin/python bench/ws_client_bench.py --events 50 --turns 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

import aiohttp
import websockets
from aiohttp import web

EVENT = {"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "delta": "word "}


def serve(port: int, events: int) -> None:
    """The stand-in server (run in a subprocess)."""
    frames = [json.dumps({**EVENT, "sequence_number": i}) for i in range(events - 1)]
    frames.append(json.dumps({"type": "response.completed", "sequence_number": events - 1}))

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for _ in ws:
            for frame in frames:
                await ws.send_str(frame)
        return ws

    app = web.Application()
    app.router.add_get("/v1/responses", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


Turn = Callable[[], Awaitable[None]]


async def aiohttp_client(url: str) -> tuple[Turn, Callable[[], Awaitable[object]]]:
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url)

    async def turn() -> None:
        await ws.send_str('{"type":"response.create"}')
        async for msg in ws:
            if json.loads(msg.data)["type"] == "response.completed":
                return

    async def close() -> None:
        await ws.close()
        await session.close()

    return turn, close


async def websockets_client(url: str) -> tuple[Turn, Callable[[], Awaitable[object]]]:
    ws = await websockets.connect(url)

    async def turn() -> None:
        await ws.send('{"type":"response.create"}')
        async for data in ws:
            if json.loads(data)["type"] == "response.completed":
                return

    return turn, ws.close


CLIENTS = {"aiohttp": aiohttp_client, "websockets": websockets_client}


async def measure(name: str, url: str, turns: int) -> dict[str, float]:
    connect = CLIENTS[name]
    handshakes = []
    for _ in range(20):
        started = time.perf_counter()
        _, close = await connect(url)
        handshakes.append(time.perf_counter() - started)
        await close()
    turn, close = await connect(url)
    for _ in range(10):  # warm up
        await turn()
    latencies = []
    cpu = time.process_time()
    for _ in range(turns):
        started = time.perf_counter()
        await turn()
        latencies.append(time.perf_counter() - started)
    cpu = time.process_time() - cpu
    await close()
    return {
        "handshake_ms": statistics.median(handshakes) * 1000,
        "turn_p50_ms": statistics.median(latencies) * 1000,
        "turn_p99_ms": sorted(latencies)[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_us_per_turn": cpu / turns * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per client")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.events)
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--events", str(args.events)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"ws://127.0.0.1:{port}/v1/responses"
        for round_ in range(args.rounds):
            for name in CLIENTS:
                result = asyncio.run(measure(name, url, args.turns))
                shown = "  ".join(f"{k}={v:.2f}" for k, v in result.items())
                print(f"round {round_ + 1} {name:<10} {shown}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
