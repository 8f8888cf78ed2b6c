"""The HTTP transport: one small interface, one aiohttp implementation.

aiohttp is the upstream client because it measured about ten times faster than httpx under
concurrency on this hardware (DESIGN.md); httpx and vendor SDKs stay off the hot path. Each event
loop gets one pooled :class:`aiohttp.ClientSession` with keep-alive, created on first use; aiohttp
itself is imported then too, since a gateway whose upstreams :mod:`.http1` serves may never need it.

Transport failures are translated here, once, into :mod:`modelwire.errors`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Protocol, TypeAlias

from ..errors import ModelwireError, ProtocolError, TimeoutError, UpstreamUnavailableError, from_response
from .retry import retry_after, should_retry_header

if TYPE_CHECKING:  # imported where used: a gateway on Http1Transport serving only HTTP never loads it
    import aiohttp

Body: TypeAlias = bytes | AsyncIterable[bytes] | None  # an iterable is streamed (media uploads)


class Reply(Protocol):
    """An upstream's answer whose body has not been read yet."""

    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...
    def chunks(self) -> AsyncIterator[bytes]: ...
    def close(self) -> None: ...


class Transport(Protocol):
    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        read_timeout: float | None = None,
    ) -> Reply: ...

    async def aclose(self) -> None: ...


async def call(
    transport: Transport,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: Body = None,
    *,
    read_timeout: float | None = None,
    on_error: Callable[[bytes, Mapping[str, str]], None] | None = None,
) -> Reply:
    """Every upstream request the package makes: a reply with a success status, or the upstream's
    error classified (once, here) into :mod:`modelwire.errors`. ``on_error`` sees an error's body."""
    reply = await transport.send(method, url, headers, body, read_timeout=read_timeout)
    if reply.status < 400:
        return reply
    payload = await reply.read()
    if on_error is not None:
        on_error(payload, reply.headers)
    err = from_response(
        reply.status,
        payload,
        request_id=reply.headers.get("x-request-id") or reply.headers.get("request-id"),
        retry_after=retry_after(reply.headers),
        content_type=reply.headers.get("content-type", ""),
    )
    verdict = should_retry_header(reply.headers)
    if verdict is not None:
        err.retryable = verdict
    raise err


class _AiohttpReply:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except BaseException as exc:
            raise translate(exc) from exc
        finally:
            self._resp.release()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except BaseException as exc:
            raise translate(exc) from exc
        finally:
            self._resp.release()

    def close(self) -> None:
        self._resp.close()


# How long closing a socket waits for the server's close frame: a socket is closed after a failure
# or with frames still in flight, where waiting aiohttp's default 10 s would only stall the caller.
_SOCKET_CLOSE_WAIT = 1.0


class AiohttpTransport:
    """Pooled keep-alive connections, one session per event loop."""

    def __init__(self, *, limit: int = 0, keepalive: float = 75.0, connect_timeout: float = 10.0) -> None:
        self._limit = limit
        self._keepalive = keepalive
        self._connect_timeout = connect_timeout
        self._timeouts: dict[float | None, aiohttp.ClientTimeout] = {}
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )

    def session(self) -> aiohttp.ClientSession:
        import aiohttp

        loop = asyncio.get_running_loop()
        session = self._sessions.get(loop)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit,
                keepalive_timeout=self._keepalive,
                ttl_dns_cache=300,
                enable_cleanup_closed=True,
            )
            session = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._connect_timeout),
                # A proxy must not carry one caller's cookies into another's request (and the jar
                # costs time on every request).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._sessions[loop] = session
        return session

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        read_timeout: float | None = None,
    ) -> _AiohttpReply:
        import aiohttp

        # ``read_timeout`` bounds the wait for the answer's head and then each read, so a long stream
        # that keeps producing never times out while a stalled one does.
        client_timeout = self._timeouts.get(read_timeout)
        if client_timeout is None:
            client_timeout = self._timeouts[read_timeout] = aiohttp.ClientTimeout(
                total=None, sock_connect=self._connect_timeout, sock_read=read_timeout
            )
        try:
            resp = await self.session().request(
                method, url, headers=headers, data=body, timeout=client_timeout, allow_redirects=False
            )
        except BaseException as exc:
            raise translate(exc) from exc
        return _AiohttpReply(resp)

    async def connect_socket(
        self, url: str, headers: Mapping[str, str], within: float
    ) -> aiohttp.ClientWebSocketResponse[bool]:
        """A WebSocket to ``url`` on this loop's pooled session (Responses over WebSocket).

        ``within`` bounds the whole handshake, in seconds, which the session's timeouts would not (they
        bound only the TCP connect). Text frames arrive as bytes (``decode_text=False``): they are
        JSON, which orjson reads from bytes, so decoding them to ``str`` first would be wasted.
        Frames have no size limit here, as HTTP bodies have none: a finished response can be big.
        """
        import aiohttp

        try:
            async with asyncio.timeout(within):
                return await self.session().ws_connect(
                    url,
                    headers=headers,
                    max_msg_size=0,
                    decode_text=False,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=_SOCKET_CLOSE_WAIT),
                )
        except aiohttp.WSServerHandshakeError as exc:
            # Refused upgrades are the socket's failure, not the request's: HTTP may still serve it.
            raise UpstreamUnavailableError(
                f"the upstream refused the WebSocket upgrade (HTTP {exc.status})", status=502
            ) from exc
        except BaseException as exc:
            raise translate(exc) from exc

    async def aclose(self) -> None:
        """Close the current event loop's session."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        session = self._sessions.pop(loop, None)
        if session is not None and not session.closed:
            await session.close()


def translate(exc: BaseException) -> BaseException:
    """An aiohttp or asyncio failure as a :class:`ModelwireError`; anything else unchanged."""
    import aiohttp  # loaded already: only aiohttp's paths (sessions, sockets) call this

    if isinstance(exc, ModelwireError | asyncio.CancelledError):
        return exc
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return TimeoutError("the upstream did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamUnavailableError(f"cannot connect to the upstream: {exc.os_error or exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamUnavailableError("the upstream closed the connection")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ProtocolError("the upstream's answer was cut off")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamUnavailableError(f"upstream connection failed: {type(exc).__name__}")
    return exc


_default: AiohttpTransport | None = None


def default_transport() -> AiohttpTransport:
    global _default
    if _default is None:
        _default = AiohttpTransport()
    return _default


def text_frame(data: object) -> bytes:
    """A text WebSocket message's payload as bytes (the transport does not decode text)."""
    return data if isinstance(data, bytes) else str(data).encode()
