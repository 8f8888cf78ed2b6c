"""uvicorn's HTTP/1.1 protocol, sending a response's head with the start of its body.

uvicorn writes a response's head as soon as the app starts it, and its body with the next message:
two system calls and two segments on the wire for an answer the gateway had whole before it began,
and two wake-ups for the client reading it. On loopback each write costs several microseconds of
CPU, on a request whose whole cost is a couple of hundred. Here the head is held until the first
body write, provided that comes before the app's task waits on anything: a whole answer is sent
right after its start, and so is a stream's first event when the upstream's arrived with its
headers. A head that would have to wait goes out on its own as soon as the task yields, so a
stream's client still sees its head at once.

While other requests are in flight, even a whole answer waits for the loop's turn, and the answers
of one turn go out together: a client process on the same host (a load balancer, a benchmark)
then wakes once for several. With wrk on the same host, waking it cost the gateway ~6 µs per
request in the kernel (a chat request at 32 connections went from 103 to 94 µs with this).
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _HeadWithBody:
    """The connection as one request's cycle sees it until its head is sent: the cycle's first
    write (the head) is held and goes out with the body's first bytes, or alone once the loop turns.
    While other requests are in flight, the body's bytes wait for the loop's turn too, and the
    answer goes out after the callbacks the loop has ready: a busy gateway's answers then reach a
    client process in bursts, read in one of its wake-ups rather than one each. Then the cycle
    writes to the connection itself again (nothing per chunk here)."""

    __slots__ = ("cycle", "held", "in_flight", "loop", "transport")

    def __init__(
        self,
        cycle: RequestResponseCycle,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        in_flight: set[asyncio.Task[None]],
    ) -> None:
        self.cycle = cycle
        self.transport = transport
        self.loop = loop
        self.in_flight = in_flight  # the server's request tasks, this one's among them
        self.held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self.held is None:
            self.held = [data]
            self.loop.call_soon(self.release)
        else:
            self.held.append(data)
            if len(self.in_flight) <= 1:
                self.release()

    def release(self) -> None:
        if self.held is not None:
            if not self.transport.is_closing():
                self.transport.writelines(self.held)
            self.held = None
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
            held = _HeadWithBody(self.cycle, self.transport, self.loop, self.tasks)
            self.cycle.transport = held  # type: ignore[assignment]
