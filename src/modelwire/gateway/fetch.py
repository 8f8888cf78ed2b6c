"""Fetching media by URL for upstreams that only take inline data, without becoming an SSRF hole.

A client-supplied URL is fetched by the gateway, from inside its network, so an address that
resolves to loopback, a private range, link-local (cloud metadata lives at 169.254.169.254) or
any other non-public range is refused unless the operator allows it. Redirects are not followed
(a public URL could redirect inward), sizes are capped, and only media types are accepted.
"""

from __future__ import annotations

import asyncio

from ..errors import InvalidRequestError, ModelwireError
from ..providers.addresses import refuse_private
from ..providers.transport import Transport
from ..types import File, Image, Request, ToolResult

MAX_MEDIA_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT = 20.0


async def inline_media(req: Request, transport: Transport, *, allow_private: bool) -> None:
    """Replace every image and file given by http(s) URL in ``req`` with its bytes, in place."""
    parts: list[Image | File] = []
    for message in req.messages:
        for part in message.content:
            if isinstance(part, ToolResult):
                parts += [p for p in part.content if isinstance(p, Image | File)]
            elif isinstance(part, Image | File):
                parts.append(part)
    wanted = [p for p in parts if p.url and p.url.startswith(("http://", "https://")) and p.data is None]
    if wanted:
        await asyncio.gather(*(_inline(p, transport, allow_private) for p in wanted))


async def _inline(part: Image | File, transport: Transport, allow_private: bool) -> None:
    assert part.url is not None
    await check_public(part.url, allow_private)
    try:
        reply = await transport.send(
            "GET", part.url, {"Accept": "image/*, application/pdf, */*"}, None, read_timeout=FETCH_TIMEOUT
        )
        if reply.status != 200:
            await reply.read()
            raise InvalidRequestError(
                f"could not fetch {part.url}: HTTP {reply.status}", code="invalid_image_url"
            )
        declared = reply.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_MEDIA_BYTES:
            reply.close()
            raise InvalidRequestError(f"{part.url} is larger than {MAX_MEDIA_BYTES // 2**20} MiB")
        data = await reply.read()
    except InvalidRequestError:
        raise
    except ModelwireError as err:
        raise InvalidRequestError(
            f"could not fetch {part.url}: {err.message}", code="invalid_image_url"
        ) from None
    if len(data) > MAX_MEDIA_BYTES:
        raise InvalidRequestError(f"{part.url} is larger than {MAX_MEDIA_BYTES // 2**20} MiB")
    media_type = reply.headers.get("content-type", "").split(";")[0].strip() or part.media_type
    if isinstance(part, Image) and not (media_type or "").startswith("image/"):
        raise InvalidRequestError(
            f"{part.url} is not an image ({media_type or 'no content type'})", code="invalid_image_url"
        )
    part.data, part.media_type, part.url = data, media_type, None


async def check_public(url: str, allow_private: bool) -> None:
    """Refuse URLs whose host resolves to any non-public address (unless allowed)."""
    hint = "set server.allow_private_urls to allow it"
    await refuse_private(url, allow=allow_private, hint=hint, code="invalid_image_url")
