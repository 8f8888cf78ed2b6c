"""The lean HTTP/1.1 upstream client against real loopback servers: what it sends, how it reads
answers (whole, streamed, chunked, compressed, until EOF), keep-alive, and every failure said as the
aiohttp transport says it."""

from __future__ import annotations

import asyncio
import gc
import gzip
import socket
import sys
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

import modelwire as mw
from modelwire.providers.http1 import Http1Transport

from .fake_upstream import FakeUpstream
from .gateway_fixtures import loaded_by_a_serving_gateway

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """A bare TCP server scripted per test, for answers no HTTP framework would give."""
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


@pytest.fixture
async def app_server() -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def echo(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        body = await request.read()
        if request.path == "/gzip":
            return web.Response(body=gzip.compress(b"x" * 5000), headers={"Content-Encoding": "gzip"})
        if request.path == "/stream":
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(3):
                await response.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(0.05)
            await response.write_eof()
            return response
        peer = request.transport.get_extra_info("peername")[1]  # type: ignore[union-attr]
        return web.json_response({"got": body.decode(), "peer": peer})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_a_body_goes_up_and_the_answer_comes_back_on_a_kept_connection(
    app_server: tuple[str, list[web.Request]],
) -> None:
    base, seen = app_server
    transport = Http1Transport()
    peers = []
    for i in range(3):
        reply = await transport.send(
            "POST", f"{base}/v1/x?q=1", {"Content-Type": "application/json", "X-Id": str(i)}, b'{"a":1}'
        )
        assert reply.status == 200 and reply.headers["CONTENT-TYPE"].startswith("application/json")
        assert reply.headers.get("Content-Type") == reply.headers.get("content-type")
        doc = await reply.read()
        assert b'"got": "{\\"a\\":1}"' in doc or b'"got":"{\\"a\\":1}"' in doc
        peers.append(int(doc.rsplit(b":", 1)[1].rstrip(b"}")))
    assert len(set(peers)) == 1, "sequential requests reuse one pooled connection"
    assert seen[0].path_qs == "/v1/x?q=1" and seen[2].headers["X-Id"] == "2"
    assert seen[0].headers["Content-Length"] == "7" and seen[0].headers["Host"] == base.split("//")[1]
    await transport.aclose()


async def test_the_head_has_the_callers_headers_once_and_this_clients_own_framing(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    requests: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head, body = await read_request(reader)
        requests.append(head + body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    base = await raw_server(answer)
    transport = Http1Transport()
    framing = {"Host": "gw", "content-length": "99", "Transfer-Encoding": "chunked", "Connection": "close"}
    headers = {**framing, "Accept-Encoding": "identity", "X-Id": "7"}
    assert await (await transport.send("POST", f"{base}/v1/x?q=1", headers, b"hello")).read() == b"ok"
    assert requests[0].split(b"\r\n") == [
        b"POST /v1/x?q=1 HTTP/1.1",
        f"Host: {base.split('//')[1]}".encode(),
        b"Accept-Encoding: identity",  # the caller's, not a second one of this client's
        b"X-Id: 7",
        b"Content-Length: 5",
        b"",
        b"hello",
    ]
    await transport.aclose()


async def test_a_stream_arrives_as_it_is_sent(app_server: tuple[str, list[web.Request]]) -> None:
    base, _ = app_server
    transport = Http1Transport()
    reply = await transport.send("POST", f"{base}/stream", {}, b"{}")
    loop = asyncio.get_running_loop()
    arrivals = []
    async for chunk in reply.chunks():
        arrivals.append((loop.time(), chunk))
    assert b"".join(c for _, c in arrivals) == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert len(arrivals) >= 3 and arrivals[-1][0] - arrivals[0][0] >= 0.08, "not buffered to the end"
    await transport.aclose()


async def test_a_gzip_answer_is_decompressed(app_server: tuple[str, list[web.Request]]) -> None:
    base, seen = app_server
    transport = Http1Transport()
    assert await (await transport.send("GET", f"{base}/gzip", {})).read() == b"x" * 5000
    assert "gzip" in seen[0].headers["Accept-Encoding"]
    await transport.aclose()


async def test_chunked_and_until_eof_answers_are_read_whole(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        await reader.read()  # stays open: the client keeps the connection

    async def until_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        writer.close()

    transport = Http1Transport()
    assert await (await transport.send("POST", await raw_server(chunked), {}, b"")).read() == b"abcde"
    assert await (await transport.send("POST", await raw_server(until_eof), {}, b"")).read() == b"all of it"
    await transport.aclose()


async def test_answer_headers_are_read_in_any_case_and_a_repeated_one_joined(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def many(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-RateLimit-Remaining: 9\r\n"
            b"Set-Cookie: a=1\r\nX-Empty:\r\nset-cookie: b=2\r\nX-Latin: caf\xe9\r\n\r\nok"
        )
        await writer.drain()

    transport = Http1Transport()
    reply = await transport.send("POST", await raw_server(many), {}, b"")
    assert dict(reply.headers) == {
        "content-length": "2",
        "x-ratelimit-remaining": "9",
        "set-cookie": "a=1, b=2",
        "x-empty": "",
        "x-latin": "caf\xe9",
    }
    assert reply.headers["X-RATELIMIT-REMAINING"] == "9"
    assert await reply.read() == b"ok"
    await transport.aclose()


async def test_a_cut_answer_is_a_protocol_error(raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.close()

    transport = Http1Transport()
    url = await raw_server(cut)
    with pytest.raises(mw.ProtocolError, match="cut off"):
        await (await transport.send("POST", url, {}, b"")).read()
    reply = await transport.send("POST", url, {}, b"")
    with pytest.raises(mw.ProtocolError, match="cut off"):
        async for _ in reply.chunks():
            pass
    await transport.aclose()


async def test_a_closed_connection_and_garbage_are_said_as_such(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.close()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    transport = Http1Transport()
    with pytest.raises(mw.UpstreamUnavailableError, match="closed the connection"):
        await transport.send("POST", await raw_server(hang_up), {}, b"")
    with pytest.raises(mw.ProtocolError, match="not HTTP"):
        await transport.send("POST", await raw_server(garbage), {}, b"")
    await transport.aclose()


async def test_a_connection_closed_while_idle_is_replaced_without_failing(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    served = 0

    async def once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await read_request(reader)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()  # keep-alive promised, then the idle connection is dropped

    transport = Http1Transport()
    url = await raw_server(once_per_connection)
    assert await (await transport.send("POST", url, {}, b"")).read() == b"ok"
    await asyncio.sleep(0.2)
    assert await (await transport.send("POST", url, {}, b"")).read() == b"ok"
    assert served == 2
    await transport.aclose()


async def test_idle_connections_beyond_the_spares_close_soon_and_the_spares_at_keepalive(
    raw_server: Callable[[Handler], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a burst the pool does not keep its connections open until a next request: those
    beyond the spares close after the short wait, the spares after the keep-alive time."""
    from modelwire.providers import http1

    monkeypatch.setattr(http1, "SURPLUS_IDLE_SECONDS", 0.2)
    opened = closed = 0
    burst = http1.SPARE_IDLE + 8
    gate = asyncio.Event()

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal opened, closed
        opened += 1
        while True:
            try:
                await read_request(reader)
            except asyncio.IncompleteReadError:
                closed += 1  # the client closed its side
                return
            await gate.wait()  # every request of the burst at once: one connection each
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    transport = Http1Transport(keepalive=1.0)
    url = await raw_server(keep_alive)
    replies = [asyncio.ensure_future(transport.send("POST", url, {}, b"")) for _ in range(burst)]
    await asyncio.sleep(0.2)
    gate.set()
    assert [await (await r).read() for r in replies] == [b"ok"] * burst
    assert (opened, closed) == (burst, 0)
    await asyncio.sleep(0.7)  # past the short wait (and one sweep period), short of the keep-alive
    assert closed == burst - http1.SPARE_IDLE
    assert await (await transport.send("POST", url, {}, b"")).read() == b"ok"
    assert opened == burst  # a spare served it
    await asyncio.sleep(1.6)
    assert closed == burst
    await transport.aclose()


class _Wire(asyncio.Transport):
    """Records the requests a pool writes to one connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing


async def test_a_request_waits_for_the_loops_turn_only_while_another_awaits_its_answer() -> None:
    """Alone, a request is written at once; while another awaits its answer, the requests of one
    turn of the loop are written together after it, except to a connection closed meanwhile (its
    caller hears of it from the connection, and a stale one is retried on another)."""
    from modelwire.providers import http1

    pool = http1._Pool(asyncio.get_running_loop(), 75.0)
    alone, second, third, closed = _Wire(), _Wire(), _Wire(), _Wire()
    pool.send(alone, b"1")
    assert alone.written == [b"1"]
    pool.awaiting = 1
    pool.send(second, b"2")
    pool.send(closed, b"x")
    pool.send(third, b"3")
    assert second.written == third.written == []
    closed.closing = True
    await asyncio.sleep(0)
    assert (second.written, third.written, closed.written) == ([b"2"], [b"3"], [])
    pool.awaiting = 0
    pool.send(second, b"4")
    assert second.written == [b"2", b"4"]


async def test_requests_sent_while_others_await_their_answers_all_arrive(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    arrived: list[bytes] = []
    release = asyncio.Event()

    async def held_until_all_arrive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, body = await read_request(reader)
        arrived.append(body)
        if len(arrived) == 8:
            release.set()
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()

    transport = Http1Transport()
    url = await raw_server(held_until_all_arrive)
    replies = await asyncio.gather(*(transport.send("POST", url, {}, b"%d" % i) for i in range(8)))
    assert [await r.read() for r in replies] == [b"%d" % i for i in range(8)]
    assert sorted(arrived) == [b"%d" % i for i in range(8)]
    await transport.aclose()


async def test_a_stalled_upstream_times_out(raw_server: Callable[[Handler], Awaitable[str]]) -> None:
    async def stall_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def stall_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await asyncio.sleep(5)

    transport = Http1Transport()
    with pytest.raises(mw.TimeoutError):
        await transport.send("POST", await raw_server(stall_head), {}, b"", read_timeout=0.2)
    reply = await transport.send("POST", await raw_server(stall_body), {}, b"", read_timeout=0.2)
    with pytest.raises(mw.TimeoutError):
        await reply.read()
    await transport.aclose()


async def test_the_read_timeout_is_per_wait_not_per_answer(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    """A stream that keeps talking outlives the read timeout many times over (each chunk moves
    the deadline); one that then goes quiet times out after about the timeout, not sooner."""

    async def trickle_then_stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):
            await asyncio.sleep(0.1)
            writer.write(b"1\r\nx\r\n")
        await asyncio.sleep(5)

    transport = Http1Transport()
    reply = await transport.send("POST", await raw_server(trickle_then_stall), {}, b"", read_timeout=0.3)
    loop = asyncio.get_running_loop()
    got, started = b"", loop.time()
    with pytest.raises(mw.TimeoutError):
        async for chunk in reply.chunks():
            got += chunk
            quiet_since = loop.time()
    assert got == b"x" * 8 and loop.time() - started > 0.8
    assert 0.25 < loop.time() - quiet_since < 1.0
    await transport.aclose()


async def test_an_answer_read_to_the_end_leaves_no_timer_holding_it(
    raw_server: Callable[[Handler], Awaitable[str]],
) -> None:
    """The read timer is cancelled with the answer: armed for ten minutes, a forgotten one would
    hold the answer (and its buffers) that long."""

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(2):  # both answers on one kept-alive connection
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"2\r\nok\r\n", b"0\r\n\r\n"):
                await asyncio.sleep(0.05)
                writer.write(part)
            await writer.drain()

    transport = Http1Transport()
    url = await raw_server(chunked)
    for read_all in (lambda r: r.read(), lambda r: _joined(r.chunks())):
        reply = await transport.send("POST", url, {}, b"", read_timeout=600)
        assert await read_all(reply) == b"ok"
        gc.collect()
        assert sys.getrefcount(reply) == 2  # this name and the call's argument: nothing else
    await transport.aclose()


async def _joined(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def test_refused_connections_and_bad_headers_fail_before_sending() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = Http1Transport()
    with pytest.raises(mw.UpstreamUnavailableError, match="cannot connect"):
        await transport.send("POST", f"http://127.0.0.1:{port}/v1", {}, b"")
    with pytest.raises(mw.ModelwireError, match="line break"):
        await transport.send("POST", f"http://127.0.0.1:{port}/v1", {"X-A": "1\r\nX-Injected: 2"}, b"")
    await transport.aclose()


async def test_closing_a_stream_early_drops_its_connection(app_server: tuple[str, list[web.Request]]) -> None:
    base, seen = app_server
    transport = Http1Transport()
    reply = await transport.send("POST", f"{base}/stream", {}, b"{}")
    async for _ in reply.chunks():
        break
    reply.close()
    doc = await (await transport.send("POST", f"{base}/after", {}, b"x")).read()
    assert b'"got": "x"' in doc or b'"got":"x"' in doc
    assert len(seen) == 2
    await transport.aclose()


async def test_a_dropped_connection_is_freed_at_once_not_by_the_garbage_collector(
    app_server: tuple[str, list[web.Request]],
) -> None:
    """A client that leaves mid-stream drops its upstream connection: with the collector off,
    reference counting alone must free it (1,024 cut streams once held ~10 MiB until a full pass)."""
    base, _ = app_server
    transport = Http1Transport()
    gc.collect()
    gc.disable()
    try:
        reply = await transport.send("POST", f"{base}/stream", {}, b"{}")
        connection = weakref.ref(reply._conn)  # type: ignore[arg-type]
        stream = reply.chunks()
        await anext(stream)
        await stream.aclose()  # the client left: the answer is not wanted
        del reply, stream
        for _ in range(50):  # the socket's close is reported on a later turn of the loop
            await asyncio.sleep(0.01)
            if connection() is None:
                break
        assert connection() is None
    finally:
        gc.enable()
    await transport.aclose()


def test_a_gateway_serving_http_does_not_load_aiohttp(upstream: FakeUpstream, tmp_path: Path) -> None:
    """aiohttp and its companions would stay resident (~9 MiB) in every gateway; its HTTP upstream
    leg is this client, so only a WebSocket upstream (or a library client) needs them."""
    packages = {"aiohttp", "yarl", "multidict", "frozenlist", "aiosignal", "propcache", "aiodns", "pycares"}
    assert loaded_by_a_serving_gateway(upstream, tmp_path, packages) == "200 []"
