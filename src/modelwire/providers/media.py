"""The media APIs a driver offers: ``client.images``, ``client.audio``, ``client.videos``."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .audio import Audio
from .images import Images
from .media_http import MediaHTTP
from .videos import Videos

if TYPE_CHECKING:
    from .openai import OpenAI


class MediaAPIs:
    """Mixed into :class:`~.openai.OpenAI`; built on first use from ``base_urls`` and
    ``allow_private_urls`` (see :mod:`.media_http`)."""

    base_urls: Mapping[str, str] | None = None
    allow_private_urls: bool = False

    @functools.cached_property
    def _media(self) -> MediaHTTP:
        driver: OpenAI = self  # type: ignore[assignment]
        return MediaHTTP(driver, self.base_urls, allow_private_urls=self.allow_private_urls)

    @functools.cached_property
    def images(self) -> Images:
        return Images(self._media)

    @functools.cached_property
    def audio(self) -> Audio:
        return Audio(self._media)

    @functools.cached_property
    def videos(self) -> Videos:
        return Videos(self._media)
