"""``client.images``: generate and edit images (``POST /images/generations``, ``/images/edits``).

Answers carry the images as base64 (gpt-image models always; DALL·E on request) and, for gpt-image
models, token usage, which is priced through the catalog; without usage the images are priced
per image by size and quality.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

from ..errors import ProtocolError
from ..media_types import GeneratedImage, ImageResult, MediaUsage
from .hosts import Host
from .media_http import FileInput, FilePart, MediaHTTP, Multipart, form_fields

DEFAULT_IMAGE_MODEL = "gpt-image-2"
# Models that refuse a transparent background, and the model asked instead on hosts where model
# names are OpenAI's own (on Azure and compatible hosts they are the operator's deployment names).
NO_TRANSPARENCY = {"gpt-image-2": "gpt-image-1.5"}


def image_model(model: str, background: Any, host: Host) -> str:
    """The model to ask for: ``model``, unless it refuses a transparent background and the host
    names models as OpenAI does."""
    if background == "transparent" and host.profile.openai_model_names:
        for refuses, instead in NO_TRANSPARENCY.items():
            if model.startswith(refuses):
                return instead
    return model


class Images:
    def __init__(self, http: MediaHTTP) -> None:
        self.http = http

    async def generate(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_IMAGE_MODEL,
        n: int | None = None,
        size: str | None = None,
        quality: str | None = None,
        background: str | None = None,
        output_format: str | None = None,
        read_timeout: float | None = None,
        **extra: Any,
    ) -> ImageResult:
        """Images from a prompt. ``extra`` holds other API fields (``moderation``, ...). A transparent
        background asked of ``gpt-image-2`` is made by ``gpt-image-1.5`` (the result's ``model``)."""
        model = image_model(model, background, self.http.hosts["images"])
        body = {"prompt": prompt, "model": model, "n": n, "size": size, "quality": quality}
        body |= {"background": background, "output_format": output_format, **extra}
        body = {k: v for k, v in body.items() if v is not None}
        reply = await self.http.send(
            "images", "images.generations", model, json=body, read_timeout=read_timeout
        )
        return self._result(await self.http.json(reply), model, body)

    async def edit(
        self,
        prompt: str,
        image: FileInput | list[FileInput],
        *,
        model: str = DEFAULT_IMAGE_MODEL,
        mask: FileInput | None = None,
        n: int | None = None,
        size: str | None = None,
        quality: str | None = None,
        background: str | None = None,
        output_format: str | None = None,
        read_timeout: float | None = None,
        **extra: Any,
    ) -> ImageResult:
        """Edit (or combine) images: one ``image``, or a list of up to 16 sent as ``image[]``."""
        model = image_model(model, background, self.http.hosts["images"])
        images = image if isinstance(image, list) else [image]
        field = "image[]" if isinstance(image, list) else "image"
        files = [FilePart.of(field, item) for item in images]
        if mask is not None:
            files.append(FilePart.of("mask", mask))
        params = {"prompt": prompt, "model": model, "n": n, "size": size, "quality": quality}
        params |= {"background": background, "output_format": output_format, **extra}
        form = Multipart(form_fields(params), files)
        reply = await self.http.send("images", "images.edits", model, form=form, read_timeout=read_timeout)
        return self._result(await self.http.json(reply), model, params)

    def _result(self, document: dict[str, Any], model: str, asked: dict[str, Any]) -> ImageResult:
        images = [_image(item) for item in document.get("data") or []]
        usage = image_usage(document.get("usage"), len(images), document, asked)
        return ImageResult(
            images=images,
            model=model,
            created=int(document.get("created") or time.time()),
            size=document.get("size"),
            quality=document.get("quality"),
            background=document.get("background"),
            output_format=document.get("output_format"),
            usage=usage,
            cost=self.http.driver.catalog.media_cost(model, usage),
            raw=document,
        )


def _image(item: Any) -> GeneratedImage:
    if not isinstance(item, dict):
        raise ProtocolError("an image in the answer is not an object")
    data = None
    if isinstance(item.get("b64_json"), str):
        try:
            data = base64.b64decode(item["b64_json"], validate=True)
        except (binascii.Error, ValueError):
            raise ProtocolError("an image in the answer is not valid base64") from None
    return GeneratedImage(data=data, url=item.get("url"), revised_prompt=item.get("revised_prompt"))


def image_usage(usage: Any, count: int, document: dict[str, Any], asked: dict[str, Any]) -> MediaUsage:
    """Tokens by kind when the answer has ``usage``; else the images by size and quality."""
    if not isinstance(usage, dict):
        size = document.get("size") or asked.get("size")
        quality = document.get("quality") or asked.get("quality")
        return MediaUsage(images=count, size=size, quality=quality)
    given = usage.get("input_tokens_details") or {}
    made = usage.get("output_tokens_details") or {}
    output = int(usage.get("output_tokens") or 0)
    return MediaUsage(
        text_input_tokens=int(given.get("text_tokens") or 0),
        image_input_tokens=int(given.get("image_tokens") or 0),
        image_output_tokens=int(made.get("image_tokens", output) or 0),
        text_output_tokens=int(made.get("text_tokens") or 0),
    )
