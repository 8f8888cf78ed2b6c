"""Image URLs fetched for upstreams that need inline data, and the SSRF guard around it."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from aiohttp import web

from modelwire.errors import InvalidRequestError
from modelwire.gateway.fetch import check_public

from .fake_upstream import FakeUpstream
from .gateway_fixtures import CLIENT_KEY, base_config, free_port, start_gateway

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


@pytest.fixture(scope="module")
def image_server() -> Iterator[str]:
    """A local web server with one image, on loopback (so: a private address)."""
    import asyncio
    import threading

    port = free_port()
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/cat.png", image)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield f"http://127.0.0.1:{port}/cat.png"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def config(upstream: FakeUpstream, tmp: Path, *, allow: bool) -> dict[str, object]:
    cfg = base_config(upstream, tmp)
    cfg["backends"]["inliner"] = {
        "type": "openai-compatible",
        "api": "chat",
        "base_url": upstream.url,
        "inline_media": True,
    }
    cfg["models"] = [
        {"name": "inline-model", "route": "inliner/llava"},
        {"name": "plain", "route": "compat/x"},
    ]
    cfg["server"] = {**cfg["server"], "allow_private_urls": allow}
    return cfg


def ask(gateway_url: str, image_url: str, model: str = "inline-model") -> str:
    with openai.OpenAI(base_url=gateway_url + "/v1", api_key=CLIENT_KEY, max_retries=0) as sdk:
        return sdk.responses.create(
            model=model,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "what is it?"},
                        {"type": "input_image", "image_url": image_url, "detail": "auto"},
                    ],
                }
            ],
        ).output_text


def test_private_addresses_are_refused_by_default(
    upstream: FakeUpstream, tmp_path: Path, image_server: str
) -> None:
    gateway = start_gateway(config(upstream, tmp_path, allow=False), tmp_path)
    try:
        with pytest.raises(openai.BadRequestError, match="private or loopback"):
            ask(gateway.url, image_server)
        assert not upstream.requests  # nothing went upstream
        ask(gateway.url, image_server, model="plain")  # an upstream that takes URLs gets the URL as is
        assert upstream.last.body["messages"][0]["content"][1]["image_url"]["url"] == image_server
    finally:
        gateway.stop()


def test_allowed_urls_are_fetched_and_sent_inline(
    upstream: FakeUpstream, tmp_path: Path, image_server: str
) -> None:
    gateway = start_gateway(config(upstream, tmp_path, allow=True), tmp_path)
    try:
        ask(gateway.url, image_server)
        part = upstream.last.body["messages"][0]["content"][1]
        assert part["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(PNG).decode()
    finally:
        gateway.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://localhost/x.png",
        "http://10.1.2.3/x.png",
        "http://169.254.169.254/latest",
        "http://[::1]/x.png",
        "http://192.168.0.10/x.png",
    ],
)
async def test_non_public_addresses(url: str) -> None:
    with pytest.raises(InvalidRequestError, match="private or loopback"):
        await check_public(url, allow_private=False)
    await check_public(url, allow_private=True)
