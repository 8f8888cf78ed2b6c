"""Whether a URL points inside the network: one check for every place that sends to a URL someone
else chose (media URLs a gateway fetches, per-modality base URLs a driver sends to).

An address that resolves to loopback, a private range, link-local (cloud metadata lives at
169.254.169.254) or any other non-public range is refused unless the caller allowed it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from ..errors import InvalidRequestError


async def refuse_private(url: str, *, allow: bool, hint: str, code: str | None = None) -> None:
    """Raise :class:`InvalidRequestError` when ``url``'s host resolves to any non-public address
    (unless ``allow``); ``hint`` says how to allow it."""
    host = urlsplit(url).hostname
    if not host:
        raise InvalidRequestError(f"{url!r} has no host", code=code)
    if allow:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequestError(f"cannot resolve the host of {url}", code=code) from None
    for *_, sockaddr in infos:
        if not ipaddress.ip_address(sockaddr[0]).is_global:
            raise InvalidRequestError(
                f"refusing {url}: {host} is a private or loopback address ({hint})", code=code
            )
