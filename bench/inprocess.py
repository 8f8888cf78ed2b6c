#!/usr/bin/env python3
"""The gateway's app driven in-process (no server, no client socket) against the harness's nginx
upstream, to tell where a scenario's time goes apart from uvicorn and wrk:

    .venv/bin/python bench/inprocess.py chat,messages_to_chat                # CPU µs per request
    .venv/bin/python bench/inprocess.py chat,messages_to_chat --mode bytecodes --top 40
    .venv/bin/python bench/inprocess.py chat --shared    # with a limit counted in Redis

``cpu`` runs three rounds of ``--requests`` requests, ``--concurrency`` in flight, and prints the
process's CPU time per request. ``bytecodes`` counts the bytecodes each request executes (a trace
function, over ``TRACED_REQUESTS``), by file and by function, a dataclass's ``__init__`` named by its
class: where CPU time on a shared machine moves by 10% and more between runs, the count moves by
~1% (work on a clock, the request log's flush, falls in some runs' window), so two scenarios'
counts show where one's extra work lies. A count is not a time, though: a short loop turned into C
calls (``map``, ``str.format``, ``dict()``) counts fewer bytecodes and can cost more, so time what
the count suggests (``cpu`` mode, ``timeit``, the harness) before keeping it. Needs nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import FrameType
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compare  # noqa: E402  (the same upstream, config and bodies)

Counts = collections.Counter[str]
TRACED_REQUESTS = 200  # tracing every bytecode is slow; the count per request barely moves
WARMUP_REQUESTS = 2000


def _where(frame: FrameType) -> str:
    code = frame.f_code
    name = f"{code.co_filename.split('site-packages/')[-1].split('/src/')[-1]}:{code.co_name}"
    if code.co_filename == "<string>":  # what dataclasses (or types' copier) writes: name its class
        local = frame.f_locals
        name += f" ({type(local['self'] if 'self' in local else local.get('old')).__name__})"
    return name


async def count_bytecodes(run: Callable[[], Awaitable[None]]) -> Counts:
    """The bytecodes ``run`` executes on this thread, by function."""
    counts: Counts = collections.Counter()

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is count_bytecodes.__code__:  # resumed after each await: not the work's
            return None
        frame.f_trace_opcodes = True
        if event == "opcode":
            counts[_where(frame)] += 1
        return trace

    sys.settrace(trace)
    try:
        await run()
    finally:
        sys.settrace(None)
    return counts


def _scope(path: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"authorization", f"Bearer {compare.CLIENT_KEY}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _request(app: Any, path: str, body: bytes, statuses: list[int]) -> None:
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client stays: the gateway's watch is never told
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(_scope(path, body), receive, send)


async def _requests(app: Any, path: str, body: bytes, n: int, concurrency: int) -> None:
    statuses: list[int] = []
    left = iter(range(n))

    async def client() -> None:
        for _ in left:
            await _request(app, path, body, statuses)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    failed = collections.Counter(s for s in statuses if s != 200)
    if failed:
        raise SystemExit(f"{path}: answers other than 200: {dict(failed)}")


def _print_counts(scenario: str, counts: Counts, requests: int, top: int) -> None:
    print(f"{scenario}: {sum(counts.values()) / requests:,.0f} bytecodes per request")
    files: Counts = collections.Counter()
    for where, count in counts.items():
        files[where.rsplit(":", 1)[0]] += count
    for title, table in (("file", files), ("function", counts)):
        print(f"\n  per request  {title}")
        for where, count in table.most_common(top):
            print(f"  {count / requests:11,.0f}  {where}")
    print()


async def _main(args: argparse.Namespace, config: str, bodies: dict[str, bytes]) -> None:
    from modelwire.gateway.app import Gateway
    from modelwire.gateway.config import load_config

    app = Gateway(load_config(config))
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    lifespan = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, outbox.put))
    if (await outbox.get())["type"] != "lifespan.startup.complete":
        raise SystemExit("the gateway did not start")
    for scenario, body in bodies.items():
        path = compare.SCENARIOS[scenario][0]
        await _requests(app, path, body, WARMUP_REQUESTS, args.concurrency)
        if args.mode == "cpu":
            for _ in range(3):
                started = time.process_time()
                await _requests(app, path, body, args.requests, args.concurrency)
                cpu = time.process_time() - started
                print(f"{scenario}: {cpu / args.requests * 1e6:.1f} µs of CPU per request")
        else:
            n = TRACED_REQUESTS
            counts = await count_bytecodes(functools.partial(_requests, app, path, body, n, args.concurrency))
            _print_counts(scenario, counts, n, args.top)
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await lifespan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", help="comma list of compare.py's scenarios (not the paced ones)")
    ap.add_argument("--mode", choices=("cpu", "bytecodes"), default="cpu")
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument(
        "--shared", action="store_true", help="the scaling targets' config: an rpm limit counted in Redis"
    )
    args = ap.parse_args()
    scenarios = args.scenarios.split(",")
    bodies = {s: Path(compare.BODIES, compare.SCENARIOS[s][1]).read_bytes() for s in scenarios}

    import uvloop

    with compare.canned_upstream("modelwire-inprocess-") as (root, up):
        config = compare.modelwire_config(root, compare.free_port(), up, workers=1 if args.shared else 0)
        uvloop.run(_main(args, config, bodies))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
