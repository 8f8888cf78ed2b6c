"""A lean HTTP/1.1 client for the upstream leg: asyncio protocols, a keep-alive pool, httptools.

The gateway spends most of a forwarded request's CPU in the two HTTP stacks it sits between; the
aiohttp client alone measured about a third of it (request objects, header multidicts, stream
readers, payload writers: general machinery a proxy sending one JSON body does not need). This
client does only what the gateway's upstream calls need: one request head written with its body
in one write, the answer parsed by httptools (llhttp, already a dependency through uvicorn), the
body handed over as the bytes arrived, the connection kept for the next request. It sits behind
the same :class:`~.transport.Transport` interface, so no caller changes.

What it leaves to aiohttp (the class extends :class:`~.transport.AiohttpTransport`): WebSockets
(``connect_socket``), ``HEAD`` (whose answer has a length but no body, which the response parser
cannot know) and bodies that are not bytes.

Behaviour matched with the aiohttp transport, and tested in ``tests/test_http1.py``: the same
errors for the same failures (refused connection, upstream closing, an answer cut off, a read that
stalls past ``read_timeout``); gzip and deflate answers decompressed; no cookies kept; no proxy
from the environment. A pooled connection the upstream closed while it was idle is retried once on
a new connection, since the upstream never saw the request.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import ssl
import time
import weakref
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httptools

from ..errors import ModelwireError, ProtocolError, TimeoutError, UpstreamUnavailableError
from .transport import AiohttpTransport, Body, Reply

Origin = tuple[str, str, int]  # scheme, host, port

_HIGH_WATER = 256 * 1024  # unread body bytes at which the socket stops reading (a slow consumer)
_LOW_WATER = 64 * 1024
_SKIPPED = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class Headers(dict[str, str]):
    """An answer's headers, names lower-cased, looked up in any case (as aiohttp's are)."""

    def get(self, key: str, default: Any = None) -> Any:
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class _Stale(Exception):
    """A pooled connection was closed by the upstream before it answered a byte."""


class _Target:
    """What a URL means to the pool: where to connect, and the request line's path and Host."""

    __slots__ = ("host", "origin", "path", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UpstreamUnavailableError(f"cannot connect to the upstream: unsupported URL {url!r}")
        self.tls = parts.scheme == "https"
        port = parts.port or (443 if self.tls else 80)
        self.origin: Origin = (parts.scheme, parts.hostname, port)
        self.host = parts.netloc.rpartition("@")[2]
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _headers(raw: list[bytes]) -> Headers:
    """An answer's header names and values (alternating, as parsed) as :class:`Headers`. Decoded
    and lower-cased all at once, joined on NUL, which the parser refuses in a header: a header
    at a time cost ~40 bytecodes each, and an upstream's answer has ten or twenty."""
    names = b"\0".join(raw[0::2]).decode("latin-1").lower().split("\0")
    values = b"\0".join(raw[1::2]).decode("latin-1").split("\0")
    headers = Headers(zip(names, values, strict=True))
    if len(headers) == len(names):
        return headers
    joined: dict[str, str] = {}  # a repeated header: its values joined, in order
    for name, value in zip(names, values, strict=True):
        prior = joined.get(name)
        joined[name] = value if prior is None else f"{prior}, {value}"
    return Headers(joined)


_DETACHED = httptools.HttpResponseParser(object())  # a closed connection's parser: calls nothing back


class _Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: Http1Reply | None = None
        self.head: asyncio.Future[None] | None = None
        self.closed = False
        self.idle_since = 0.0
        self._raw: list[bytes] = []  # the answer's header names and values, alternating

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.reply is None:  # nothing was asked: an idle connection talking is broken
            self.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            self._fail(ProtocolError(f"the upstream answered something that is not HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reply, head = self.reply, self.head
        if head is not None and not head.done():
            head.set_exception(_Stale())
        elif reply is not None and not reply.complete:
            if reply.until_eof and exc is None:
                reply.finish(reusable=False)
            else:
                reply.fail(ProtocolError("the upstream's answer was cut off"))
        # The parser holds this connection's callbacks: a cycle that would keep a dropped
        # connection (its reply, buffers and futures) until the next full garbage collection.
        # After 1,024 cut streams that was ~10 MiB held for minutes; cut here, it is freed now.
        self.parser = _DETACHED

    def eof_received(self) -> bool:
        return False  # close our side too

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.extend((name, value))

    def on_headers_complete(self) -> None:
        raw = self._raw
        headers = _headers(raw) if raw else Headers()
        raw.clear()
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            return
        assert self.reply is not None and self.head is not None
        self.reply.begin(status, headers)
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self.reply is not None:
            self.reply.feed(body)

    def on_message_complete(self) -> None:
        if self.reply is not None and self.reply.status >= 200:
            self.reply.finish(reusable=self.parser.should_keep_alive())

    # the exchange

    def _fail(self, err: ModelwireError) -> None:
        head, reply = self.head, self.reply
        if head is not None and not head.done():
            head.set_exception(err)
        elif reply is not None:
            reply.fail(err)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Http1Reply:
    """An answer being read: its body arrives as the socket delivers it, handed over as bytes."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_deadline",
        "_decoder",
        "_error",
        "_pool",
        "_read_timeout",
        "_reusable",
        "_timer",
        "_waiter",
        "complete",
        "headers",
        "status",
        "until_eof",
    )

    def __init__(self, conn: _Connection, pool: _Pool, read_timeout: float | None) -> None:
        self._conn: _Connection | None = conn
        self._pool = pool
        self._read_timeout = read_timeout
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._chunks: list[bytes] = []  # what arrived since the last take: mostly one chunk
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._reusable = False
        self._decoder: Any = None
        self.complete = False
        self.until_eof = False
        self.status = 0
        self.headers: Mapping[str, str] = Headers()

    # fed by the connection

    def begin(self, status: int, headers: Headers) -> None:
        self.status = status
        self.headers = headers
        self.until_eof = "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(47 if encoding != "deflate" else 15)

    def feed(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        conn = self._conn
        if self._buffered > _HIGH_WATER and conn is not None and conn.transport is not None:
            conn.transport.pause_reading()
        self._wake()

    def finish(self, *, reusable: bool) -> None:
        self.complete = True
        self._reusable = reusable
        self._wake()

    def fail(self, err: BaseException) -> None:
        if not self.complete:
            self._error = err
            self.complete = True
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # read by the caller

    async def read(self) -> bytes:
        try:
            while not self.complete:
                await self._wait()
        except BaseException:
            self.close()
            raise
        self._release()
        if self._error is not None:
            raise self._error
        body = b"".join(self._chunks)
        self._chunks.clear()
        return self._decode(body, final=True)

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                if self._chunks:
                    yield self._take()
                elif self.complete:
                    if self._error is not None:
                        raise self._error
                    tail = self._decode(b"", final=True)
                    if tail:
                        yield tail
                    return
                else:
                    await self._wait()
        finally:
            if self.complete and not self._chunks and self._error is None:
                self._release()
            else:
                self.close()

    def close(self) -> None:
        """Stop reading: the connection is dropped (what is left of the answer is not wanted)."""
        self._stop_timer()
        if self._conn is not None:
            self._conn.abort()
            self._pool.forget(self._conn)
            self._conn = None

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        was = self._buffered
        self._buffered = 0
        conn = self._conn
        if was > _HIGH_WATER and conn is not None and conn.transport is not None and not self.complete:
            conn.transport.resume_reading()
        return self._decode(data, final=False)

    def _decode(self, data: bytes, *, final: bool) -> bytes:
        decoder = self._decoder
        if decoder is None:
            return data
        try:
            out: bytes = decoder.decompress(data)
            return out + decoder.flush() if final else out
        except zlib.error:
            raise ProtocolError("the upstream's compressed answer could not be decompressed") from None

    async def _wait(self) -> None:
        loop = self._pool.loop
        self._waiter = waiter = loop.create_future()
        if self._read_timeout is not None:
            self._deadline = loop.time() + self._read_timeout
            if self._timer is None:
                self._timer = loop.call_at(self._deadline, self._check_stall)
        try:
            await waiter
        finally:
            self._waiter = None

    def _check_stall(self) -> None:
        """The read timer. It is armed once per answer, not once per wait (a timer set and
        cancelled around every chunk cost 3.5 µs of each), so when it fires it may find a later
        deadline, or no wait at all, and arm itself again."""
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # between waits: the next one arms it
        loop = self._pool.loop
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._check_stall)
        else:
            _expire(waiter)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self) -> None:
        self._stop_timer()
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        conn.reply = None
        conn.head = None
        if self._reusable and not conn.closed:
            self._pool.put(conn)
        else:
            conn.abort()
            self._pool.forget(conn)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("the upstream did not answer in time"))


SPARE_IDLE = 16  # idle connections per origin kept for the whole keep-alive time
SURPLUS_IDLE_SECONDS = 10.0  # how long those beyond them wait for a request


class _Pool:
    """Idle keep-alive connections of one event loop, per origin; the most recently used first.
    A sweep closes what has waited too long rather than leaving it for a next request that may
    never come: after a burst of a thousand streams, a thousand connections (and the memory they
    pin) would stay open. The most recent :data:`SPARE_IDLE` wait ``keepalive`` seconds (a request
    every minute keeps its TLS connection); those beyond, :data:`SURPLUS_IDLE_SECONDS`. The sweep
    runs every :data:`SURPLUS_IDLE_SECONDS` while any connection is idle.

    It also sends the requests. One goes out at once when no other is waiting for its answer;
    while some are, it waits for the callbacks the loop has ready and goes out with the others
    sent meanwhile. A busy gateway's requests then reach an upstream in bursts, read in one of its
    wake-ups rather than one each: with nginx on the same host, waking it cost the gateway ~7 µs
    per request in the kernel (a chat request at 32 connections went from 118 to 103 µs)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, keepalive: float) -> None:
        # The loop is kept, not looked up: on Python 3.11 each get_running_loop() is a getpid()
        # system call, and an answer being read waits once per chunk.
        self.loop = loop
        self.keepalive = keepalive
        self.idle: dict[Origin, collections.deque[_Connection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._period = min(keepalive, SURPLUS_IDLE_SECONDS)
        self.awaiting = 0  # requests sent whose answer's head has not arrived
        self._outgoing: list[tuple[asyncio.Transport, bytes]] = []

    def take(self, origin: Origin) -> _Connection | None:
        idle = self.idle.get(origin)
        if not idle:
            return None
        self._expire(idle, time.monotonic())
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    def send(self, transport: asyncio.Transport, request: bytes) -> None:
        if not (self.awaiting or self._outgoing):
            transport.write(request)
            return
        if not self._outgoing:
            self.loop.call_soon(self._send_outgoing)
        self._outgoing.append((transport, request))

    def _send_outgoing(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        for transport, request in outgoing:
            if not transport.is_closing():  # closed meanwhile: connection_lost tells its caller
                transport.write(request)

    def put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        idle = self.idle.get(conn.origin)
        if idle is None:
            idle = self.idle[conn.origin] = collections.deque()
        idle.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(self._period, self._swept)

    def forget(self, conn: _Connection) -> None:
        idle = self.idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for idle in self.idle.values():
            for conn in idle:
                conn.abort()
        self.idle.clear()

    def _patience(self, idle: collections.deque[_Connection]) -> float:
        """How long the oldest of ``idle`` may wait."""
        return SURPLUS_IDLE_SECONDS if len(idle) > SPARE_IDLE else self.keepalive

    def _expire(self, idle: collections.deque[_Connection], now: float) -> None:
        """Closes the expired, the oldest first (each deque is in the order connections came back)."""
        while idle and now - idle[0].idle_since > self._patience(idle):
            idle.popleft().abort()

    def _swept(self) -> None:
        now = time.monotonic()
        for origin, idle in list(self.idle.items()):
            self._expire(idle, now)
            if not idle:
                del self.idle[origin]
        self._sweep = self.loop.call_later(self._period, self._swept) if self.idle else None


class Http1Transport(AiohttpTransport):
    """Pooled keep-alive HTTP/1.1 connections, one pool per event loop; WebSockets through aiohttp."""

    def __init__(self, *, keepalive: float = 75.0, connect_timeout: float = 10.0) -> None:
        super().__init__(keepalive=keepalive, connect_timeout=connect_timeout)
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None

    async def send(  # type: ignore[override]  # its own Reply, not aiohttp's
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        read_timeout: float | None = None,
    ) -> Reply:
        if method == "HEAD" or not (body is None or isinstance(body, bytes)):
            return await super().send(method, url, headers, body, read_timeout=read_timeout)
        target = self._targets.get(url)
        if target is None:
            target = _Target(url)
            if len(self._targets) >= 4096:
                self._targets.clear()
            self._targets[url] = target
        request = _request_head(method, target, headers, body)
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = _Pool(loop, self._keepalive)
        conn = pool.take(target.origin)
        if conn is not None:
            try:
                return await self._exchange(conn, pool, request, read_timeout)
            except _Stale:
                pass  # closed by the upstream while idle: it never saw this request
        conn = await self._connect(loop, target)
        try:
            return await self._exchange(conn, pool, request, read_timeout)
        except _Stale:
            raise UpstreamUnavailableError("the upstream closed the connection") from None

    async def _exchange(
        self, conn: _Connection, pool: _Pool, request: bytes, read_timeout: float | None
    ) -> Http1Reply:
        loop = pool.loop
        reply = conn.reply = Http1Reply(conn, pool, read_timeout)
        head = conn.head = loop.create_future()
        assert conn.transport is not None
        pool.send(conn.transport, request)
        timer = loop.call_later(read_timeout, _expire, head) if read_timeout is not None else None
        pool.awaiting += 1
        try:
            await head
        except BaseException:
            conn.abort()
            raise
        finally:
            pool.awaiting -= 1
            if timer is not None:
                timer.cancel()
        return reply

    async def _connect(self, loop: asyncio.AbstractEventLoop, target: _Target) -> _Connection:
        _, host, port = target.origin
        tls = self._tls_context() if target.tls else None
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: _Connection(target.origin), host, port, ssl=tls
                )
        except ModelwireError:
            raise
        except OSError as exc:  # refused, unreachable, TLS, and the timeout (builtins.TimeoutError)
            reason = "timed out" if isinstance(exc, builtins.TimeoutError) else str(exc) or type(exc).__name__
            raise UpstreamUnavailableError(f"cannot connect to the upstream: {reason}") from exc
        return conn

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def aclose(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        pool = self._pools.pop(loop, None)
        if pool is not None:
            pool.close()
        await super().aclose()


def _request_head(method: str, target: _Target, headers: Mapping[str, str], body: bytes | None) -> bytes:
    """The request line, headers and body as one buffer (one write, one segment on the wire)."""
    lines = [f"{method} {target.path} HTTP/1.1", f"Host: {target.host}"]
    encoding = False
    for name, value in headers.items():
        low = name.lower()
        if low in _SKIPPED:
            continue
        encoding = encoding or low == "accept-encoding"
        lines.append(f"{name}: {value}")
    if not encoding:
        lines.append("Accept-Encoding: gzip, deflate")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body) if body else 0}")
    head = "\r\n".join(lines)
    if head.count("\n") != len(lines) - 1 or head.count("\r") != len(lines) - 1:
        # A line break inside a name or value would split the request (header injection).
        raise UpstreamUnavailableError("refusing to send a header with a line break in it", status=500)
    data = (head + "\r\n\r\n").encode()
    return data + body if body else data
