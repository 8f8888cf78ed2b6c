"""``client.videos``: Sora video jobs (``/videos``): create, follow, download, list, remix, delete.

A job is created ``queued``, goes ``in_progress`` with a ``progress`` percentage, and ends
``completed`` or ``failed``. :meth:`Videos.wait` polls until then; :meth:`Videos.download`
streams the MP4 (or a ``thumbnail``/``spritesheet`` variant) to a file without holding it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from ..errors import ProtocolError, TimeoutError
from ..media_types import MediaUsage, Video, VideoPage
from .media_http import (
    FileInput,
    FilePart,
    MediaHTTP,
    Multipart,
    Progress,
    content_length,
    form_fields,
    stream_to_file,
)

DEFAULT_VIDEO_MODEL = "sora-2"


class Videos:
    def __init__(self, http: MediaHTTP) -> None:
        self.http = http

    async def create(
        self,
        prompt: str,
        *,
        model: str = DEFAULT_VIDEO_MODEL,
        seconds: str | int | None = None,
        size: str | None = None,
        input_reference: FileInput | None = None,
    ) -> Video:
        """Start a job; with ``input_reference`` (an image to start from) it goes as multipart."""
        params = {
            "prompt": prompt,
            "model": model,
            "seconds": None if seconds is None else str(seconds),
            "size": size,
        }
        params = {k: v for k, v in params.items() if v is not None}
        if input_reference is None:
            reply = await self.http.send("videos", "videos", model, json=params)
        else:
            form = Multipart(form_fields(params), [FilePart.of("input_reference", input_reference)])
            reply = await self.http.send("videos", "videos", model, form=form)
        return self._video(await self.http.json(reply))

    async def retrieve(self, video_id: str) -> Video:
        reply = await self.http.send("videos", "videos", "", method="GET", suffix=_id(video_id))
        return self._video(await self.http.json(reply))

    async def list(
        self, *, limit: int | None = None, after: str | None = None, order: str | None = None
    ) -> VideoPage:
        query = urlencode(
            {k: v for k, v in {"limit": limit, "after": after, "order": order}.items() if v is not None}
        )
        reply = await self.http.send(
            "videos", "videos", "", method="GET", suffix=f"?{query}" if query else ""
        )
        document = await self.http.json(reply)
        return VideoPage(
            videos=[self._video(item) for item in document.get("data") or []],
            has_more=bool(document.get("has_more")),
            first_id=document.get("first_id"),
            last_id=document.get("last_id"),
        )

    async def delete(self, video_id: str) -> bool:
        reply = await self.http.send("videos", "videos", "", method="DELETE", suffix=_id(video_id))
        return bool((await self.http.json(reply)).get("deleted"))

    async def remix(self, video_id: str, prompt: str) -> Video:
        reply = await self.http.send(
            "videos", "videos", "", json={"prompt": prompt}, suffix=f"{_id(video_id)}/remix"
        )
        return self._video(await self.http.json(reply))

    async def download(
        self,
        video_id: str,
        path: str | os.PathLike[str],
        *,
        variant: str | None = None,
        on_progress: Progress | None = None,
    ) -> int:
        """Stream the video (or ``variant``) to ``path``; returns the bytes written. A cut download
        raises :class:`~modelwire.errors.ProtocolError` and leaves no file behind."""
        suffix = f"{_id(video_id)}/content" + (f"?{urlencode({'variant': variant})}" if variant else "")
        reply = await self.http.send("videos", "videos", "", method="GET", suffix=suffix)
        total = content_length(reply)
        return await stream_to_file(reply.chunks(), path, total=total, on_progress=on_progress)

    async def wait(
        self,
        video_id: str,
        *,
        poll_interval: float = 5.0,
        wait_timeout: float | None = None,
        on_progress: Callable[[Video], None] | None = None,
    ) -> Video:
        """Poll until the job is ``completed`` or ``failed`` (check ``status``); ``on_progress``
        sees every poll. Past ``wait_timeout`` seconds, :class:`~modelwire.errors.TimeoutError`."""
        started = time.monotonic()
        while True:
            video = await self.retrieve(video_id)
            if on_progress is not None:
                on_progress(video)
            if video.done:
                return video
            if wait_timeout is not None and time.monotonic() - started + poll_interval > wait_timeout:
                raise TimeoutError(f"video {video_id} is still {video.status} after {wait_timeout:g} s")
            await asyncio.sleep(poll_interval)

    def _video(self, document: Any) -> Video:
        if not isinstance(document, dict) or not isinstance(document.get("id"), str):
            raise ProtocolError("the upstream's video is not an object with an id")
        seconds, size = document.get("seconds"), document.get("size")
        usage = MediaUsage()
        if document.get("status") == "completed" and str(seconds or "").isdigit():
            usage = MediaUsage(video_seconds=float(str(seconds)), size=size)
        model = str(document.get("model") or "")
        return Video(
            id=document["id"],
            status=str(document.get("status") or ""),
            model=model,
            progress=int(document.get("progress") or 0),
            prompt=document.get("prompt"),
            size=size,
            seconds=None if seconds is None else str(seconds),
            created_at=int(document.get("created_at") or 0),
            completed_at=document.get("completed_at"),
            expires_at=document.get("expires_at"),
            remixed_from_video_id=document.get("remixed_from_video_id"),
            error=document.get("error"),
            usage=usage,
            cost=self.http.driver.catalog.media_cost(model, usage) if usage.video_seconds else None,
            raw=document,
        )


def _id(video_id: str) -> str:
    """``/{id}``, escaped so an id cannot walk to another path."""
    return "/" + quote(video_id, safe="")
