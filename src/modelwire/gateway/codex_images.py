"""Images on the Codex route: the Images API answered through the Codex Responses backend's
``image_generation`` tool, with the signed-in plan's token (never an API key in its place).

The request becomes one streamed Responses call per image asked for (the tool makes one image a
call), each with the prompt (and, for an edit, the reference images and mask as data URLs) and a
forced ``image_generation`` tool carrying the Images API's options; each finished
``image_generation_call`` item's base64 result becomes one ``data`` entry of the Images API's
answer. Streaming is not offered here (the partial images would need re-framing): ``stream: true``
is refused with a 400 that says so.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import AuthenticationError, InvalidRequestError, ProtocolError
from ..providers.transport import Transport
from .call import Call
from .relay import Operation, Sent, send
from .uploads import Upload
from .upstream import Backend

HOST_MODEL = "gpt-5.5"  # the Codex model that calls the tool
INSTRUCTIONS = "Make the image the user describes with the image_generation tool, exactly as asked."
TOOL_OPTIONS = (
    "size",
    "quality",
    "output_format",
    "output_compression",
    "background",
    "moderation",
    "input_fidelity",
)


@dataclass(eq=False)
class CodexImages:
    transport: Transport

    async def generate(
        self, call: Call, op: Operation, model: str, backend: Backend, index: int, upload: Upload | None
    ) -> Sent:
        if op not in ("image_generation", "image_edit"):
            raise InvalidRequestError(
                f"the Codex route serves images only, not {op.replace('_', ' ')}",
                code="unsupported_operation",
            )
        if backend.credentials is None:
            raise AuthenticationError(
                f"backend {backend.name!r} is the Codex route without a sign-in; run `modelwire login`",
                code="codex_login_required",
            )
        if call.body.get("stream"):
            raise InvalidRequestError(
                "stream: the Codex route answers images whole; send stream false", param="stream"
            )
        images, mask = await _references(upload) if upload is not None else ([], None)
        body = request_body(call.body, model, images, mask)
        results: list[dict[str, Any]] = []
        for _ in range(int(call.body.get("n") or 1)):
            results.append(await self._one(call, backend, index, body))
        doc: dict[str, Any] = {
            "created": int(time.time()),
            "data": [{"b64_json": r["result"]} for r in results],
            **{k: call.body[k] for k in ("output_format", "size", "quality", "background") if k in call.body},
        }
        return Sent(None, model, _shaped(doc))

    async def _one(self, call: Call, backend: Backend, index: int, body: bytes) -> dict[str, Any]:
        url = backend.host.url("responses")
        try:
            reply = await send(self.transport, call, backend, index, "POST", url, body)
        except AuthenticationError:
            assert backend.credentials is not None
            token = (await backend.credentials.headers())["Authorization"].removeprefix("Bearer ")
            await backend.credentials.renew(token)
            reply = await send(self.transport, call, backend, index, "POST", url, body)
        return image_call(await reply.read())


def request_body(body: dict[str, Any], model: str, images: list[str], mask: str | None) -> bytes:
    tool: dict[str, Any] = {"type": "image_generation", "model": model}
    tool.update({k: body[k] for k in TOOL_OPTIONS if body.get(k) is not None})
    if mask is not None:
        tool["input_image_mask"] = {"image_url": mask}
    content: list[dict[str, Any]] = [{"type": "input_text", "text": str(body.get("prompt") or "")}]
    content += [{"type": "input_image", "image_url": url} for url in images]
    return orjson.dumps(
        {
            "model": HOST_MODEL,
            "instructions": INSTRUCTIONS,
            "input": [{"type": "message", "role": "user", "content": content}],
            "tools": [tool],
            "tool_choice": {"type": "image_generation"},
            "stream": True,
            "store": False,
        }
    )


def image_call(stream: bytes) -> dict[str, Any]:
    """The finished ``image_generation_call`` item of a Responses event stream."""
    for line in stream.split(b"\n"):
        if not line.startswith(b"data:") or b"image_generation_call" not in line:
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        item = event.get("item") if isinstance(event, dict) else None
        if (
            event.get("type") == "response.output_item.done"
            and isinstance(item, dict)
            and item.get("type") == "image_generation_call"
            and isinstance(item.get("result"), str)
        ):
            return item
    raise ProtocolError("the Codex backend answered without an image")


async def _references(upload: Upload) -> tuple[list[str], str | None]:
    images, mask = [], None
    for part in upload.files:
        data = await upload.file_bytes(part)
        url = f"data:{part.content_type or 'image/png'};base64,{base64.b64encode(data).decode()}"
        if part.name == "mask":
            mask = url
        else:
            images.append(url)
    return images, mask


def _shaped(doc: dict[str, Any]) -> dict[str, Any]:
    """Only the enum values the Images API's answer allows for its echoed settings."""
    allowed = {
        "background": {"transparent", "opaque"},
        "output_format": {"png", "webp", "jpeg"},
        "size": {"1024x1024", "1024x1536", "1536x1024"},
        "quality": {"low", "medium", "high"},
    }
    return {k: v for k, v in doc.items() if k not in allowed or v in allowed[k]}
