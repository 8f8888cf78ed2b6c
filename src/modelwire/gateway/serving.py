"""uvicorn's HTTP/1.1 protocol, sending a response's head with the start of its body.

uvicorn writes a response's head as soon as the app starts it, and its body with the next message:
two system calls and two segments on the wire for an answer the gateway had whole before it began,
and two wake-ups for the client reading it. On loopback each write costs several microseconds of
CPU, on a request whose whole cost is a couple of hundred. Here the head is held until the first
body write, provided that comes before the app's task waits on anything: a whole answer is sent
right after its start, and so is a stream's first event when the upstream's arrived with its
headers. A head that would have to wait goes out on its own as soon as the task yields, so a
stream's client still sees its head at once.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _HeadWithBody:
    """The connection as one request's cycle sees it until its head is sent: the cycle's first
    write (the head) is held and goes out with its second (the body's first bytes), or alone once
    the loop turns. Then the cycle writes to the connection itself again (nothing per chunk here)."""

    __slots__ = ("cycle", "head", "loop", "transport")

    def __init__(
        self, cycle: RequestResponseCycle, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.cycle = cycle
        self.transport = transport
        self.loop = loop
        self.head: bytes | None = None

    def write(self, data: bytes) -> None:
        if self.head is None:
            self.head = data
            self.loop.call_soon(self.release)
        else:
            self.transport.writelines((self.head, data))
            self._done()

    def release(self) -> None:
        if self.head is not None:
            if not self.transport.is_closing():
                self.transport.write(self.head)
            self._done()

    def _done(self) -> None:
        self.head = None
        self.cycle.transport = self.transport

    def close(self) -> None:
        self.release()
        self.transport.close()

    def is_closing(self) -> bool:
        return self.transport.is_closing()


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol whose responses send their head with their body, and whose
    connections, once lost, are let go at once."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # uvicorn stops the keep-alive timer only when the peer closed cleanly. After a reset the
        # timer held the connection (protocol, transport, parser: ~4 KiB) for its 75 s: a thousand
        # clients gone at once kept ~4 MiB alive, and the memory around it, long after they left.
        self._unset_keepalive_if_required()

    def on_headers_complete(self) -> None:
        cycle = self.cycle
        super().on_headers_complete()
        if self.cycle is not cycle:  # a new request (an upgrade to a socket makes none)
            self.cycle.transport = _HeadWithBody(self.cycle, self.transport, self.loop)  # type: ignore[assignment]
