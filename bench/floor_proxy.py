#!/usr/bin/env python3
"""The leanest Python passthrough on modelwire's stack: raw ASGI on uvicorn, reading the body,
forwarding it, returning the answer (streams chunk by chunk). No auth, routing, accounting or
parsing. compare.py runs it as the `floor` targets: what any Python gateway on this stack pays per
request before doing anything useful.

    python floor_proxy.py UPSTREAM_BASE PORT [aiohttp|http1]

``aiohttp`` (the default) forwards through one pooled aiohttp session; ``http1`` through
modelwire's own HTTP/1.1 client (:class:`modelwire.providers.http1.Http1Transport`), the floor moved
by the client the gateway now uses.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

from modelwire.providers.http1 import Http1Transport

UPSTREAM, PORT = sys.argv[1].rstrip("/"), int(sys.argv[2])
CLIENT = sys.argv[3] if len(sys.argv) > 3 else "aiohttp"
HEADERS = {"Authorization": "Bearer sk-upstream-bench", "Content-Type": "application/json"}
session: aiohttp.ClientSession | None = None
http1 = Http1Transport()


async def lifespan(receive: Any, send: Any) -> None:
    global session
    while True:
        msg = await receive()
        if msg["type"] == "lifespan.startup":
            session = aiohttp.ClientSession(
                cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(limit=0)
            )
            await send({"type": "lifespan.startup.complete"})
        elif msg["type"] == "lifespan.shutdown":
            assert session is not None
            await session.close()
            await http1.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            break
    url = f"{UPSTREAM}/{scope['path'].split('/v1/', 1)[-1]}"
    if CLIENT == "http1":
        reply = await http1.send("POST", url, HEADERS, body)
        ctype = reply.headers.get("content-type", "application/json").encode()
        await send(
            {"type": "http.response.start", "status": reply.status, "headers": [(b"content-type", ctype)]}
        )
        async for chunk in reply.chunks():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    else:
        assert session is not None
        async with session.post(url, data=body, headers=HEADERS) as r:
            ctype = r.headers.get("Content-Type", "application/json").encode()
            await send(
                {"type": "http.response.start", "status": r.status, "headers": [(b"content-type", ctype)]}
            )
            async for chunk in r.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=PORT,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
