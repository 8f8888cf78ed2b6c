"""The Realtime API over WebSocket (docs/realtime.md): ``client.realtime.connect(model=...)``.

A realtime session is a conversation of JSON events on one socket: the client sends events
(``session.update``, ``conversation.item.create``, ``input_audio_buffer.append``,
``response.create``, ...) and reads server events as they come. This module opens the socket at
the host's realtime URL (``/realtime?model=``; classic Azure ``/openai/realtime?api-version=&
deployment=`` with ``api-key``), bounds the handshake, and gives events as plain dicts: the event
set is large and still growing, and a dict loses nothing a newer server adds.

The wire helpers the gateway shares live here too: the browser's key subprotocol and the usage of
a ``response.done``, priced with audio and text tokens apart.

Errors: a refused handshake raises the :mod:`modelwire.errors` class of its HTTP status; a server
``error`` event is an event like any other (the session stays open), for the caller to read.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import orjson

from ..errors import (
    InvalidRequestError,
    ModelwireError,
    ProtocolError,
    UpstreamUnavailableError,
    from_response,
)
from ..types import Usage
from .catalog import Price
from .hosts import Host

if TYPE_CHECKING:  # imported where a socket is used: a gateway serving only HTTP never loads it
    import aiohttp

SUBPROTOCOL = "realtime"  # what a browser offers beside its key, and the server answers
KEY_SUBPROTOCOL = "openai-insecure-api-key."  # a browser's key, as a subprotocol (it has no headers)
CONNECT_SECONDS = 10.0
Socket: TypeAlias = "aiohttp.ClientWebSocketResponse[bool]"
Connect = Callable[[str, Mapping[str, str], float], Awaitable[Socket]]
Headers = Callable[[], Awaitable[dict[str, str]]]


def key_from_subprotocols(offered: Iterable[str]) -> str | None:
    """The API key a browser put among its subprotocols, if any."""
    for name in offered:
        if name.startswith(KEY_SUBPROTOCOL) and len(name) > len(KEY_SUBPROTOCOL):
            return name[len(KEY_SUBPROTOCOL) :]
    return None


def realtime_usage(doc: Any, price: Price | None) -> tuple[Usage, float | None]:
    """A ``response.done`` usage block as neutral usage, and its cost in dollars: text and audio
    tokens at their own rates, cached ones (a part of the input) at the cached rates."""
    if not isinstance(doc, dict):
        return Usage(), None
    inputs, outputs = _dict(doc.get("input_token_details")), _dict(doc.get("output_token_details"))
    cached = _dict(inputs.get("cached_tokens_details"))
    usage = Usage(
        input_tokens=_int(doc.get("input_tokens")),
        cached_input_tokens=_int(inputs.get("cached_tokens")),
        output_tokens=_int(doc.get("output_tokens")),
    )
    if price is None or not usage.total_tokens:
        return usage, None
    audio = price.audio
    text_in, audio_in = _int(inputs.get("text_tokens")), _int(inputs.get("audio_tokens"))
    text_cached, audio_cached = _int(cached.get("text_tokens")), _int(cached.get("audio_tokens"))
    text_out, audio_out = _int(outputs.get("text_tokens")), _int(outputs.get("audio_tokens"))
    if text_in + audio_in == 0:  # no breakdown: all input is text
        text_in, text_cached = usage.input_tokens, usage.cached_input_tokens
    if text_out + audio_out == 0:
        text_out = usage.output_tokens
    text_cached, audio_cached = min(text_cached, text_in), min(audio_cached, audio_in)
    text_cached_rate = price.cached_input if price.cached_input is not None else price.input
    dollars = (text_in - text_cached) * price.input + text_cached * text_cached_rate + text_out * price.output
    if audio is None:  # a model without audio prices: its audio tokens as text ones
        dollars += (audio_in - audio_cached) * price.input + audio_cached * text_cached_rate
        dollars += audio_out * price.output
    else:
        audio_cached_rate = audio.cached_input if audio.cached_input is not None else audio.input
        dollars += (audio_in - audio_cached) * audio.input + audio_cached * audio_cached_rate
        dollars += audio_out * audio.output
    usage.cost = dollars / 1_000_000
    return usage, usage.cost


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(eq=False)
class Realtime:
    """``client.realtime``: opens realtime sessions on the client's host with its key."""

    host: Host
    headers: Headers  # the handshake's headers (auth included), fresh per connection
    connect_socket: Connect
    connect_timeout: float = CONNECT_SECONDS

    def connect(self, *, model: str, transcription: bool = False) -> RealtimeConnection:
        """A session with ``model`` (an Azure deployment on classic Azure), to use with
        ``async with``; ``transcription=True`` opens a transcription session."""
        if not self.host.profile.realtime:
            raise InvalidRequestError(f"the {self.host.kind} host does not serve the Realtime API")
        url = self.host.realtime_url(model)
        if transcription:
            url += "&intent=transcription"
        return RealtimeConnection(self, url)


class RealtimeConnection:
    """One realtime session: ``send`` events, ``async for`` over server events, ``close``."""

    def __init__(self, owner: Realtime, url: str) -> None:
        self._owner = owner
        self.url = url
        self._socket: Socket | None = None

    async def __aenter__(self) -> RealtimeConnection:
        import aiohttp

        headers = await self._owner.headers()
        try:
            self._socket = await self._owner.connect_socket(self.url, headers, self._owner.connect_timeout)
        except UpstreamUnavailableError as err:
            cause = err.__cause__
            if isinstance(cause, aiohttp.WSServerHandshakeError) and cause.status >= 400:
                raise from_response(cause.status, b"", content_type="") from None
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def socket(self) -> Socket:
        if self._socket is None:
            raise ModelwireError("the realtime connection is not open: use it with `async with`")
        return self._socket

    async def send(self, event: Mapping[str, Any]) -> None:
        """One client event, as a JSON text frame."""
        import aiohttp

        try:
            await self.socket.send_frame(orjson.dumps(event), aiohttp.WSMsgType.TEXT)
        except (aiohttp.ClientError, ConnectionError) as exc:
            raise UpstreamUnavailableError(
                f"the realtime connection is closed: {type(exc).__name__}"
            ) from exc

    async def update_session(self, **session: Any) -> None:
        """``session.update`` with these session fields (``type`` defaults to ``realtime``)."""
        await self.send({"type": "session.update", "session": {"type": "realtime", **session}})

    async def recv(self) -> dict[str, Any]:
        """The next server event; :class:`ProtocolError` if the connection ends first."""
        event = await self._next()
        if event is None:
            raise ProtocolError("the realtime connection closed")
        return event

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        """Server events until the connection closes."""
        while (event := await self._next()) is not None:
            yield event

    async def _next(self) -> dict[str, Any] | None:
        import aiohttp

        message = await self.socket.receive()
        if message.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return None  # closed, closing or broken
        try:
            event = orjson.loads(message.data)
        except orjson.JSONDecodeError:
            raise ProtocolError("the realtime server sent a frame that is not JSON") from None
        if not isinstance(event, dict):
            raise ProtocolError("the realtime server sent a frame that is not a JSON object")
        return event

    async def close(self) -> None:
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close()
