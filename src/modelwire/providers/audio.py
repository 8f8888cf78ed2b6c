"""``client.audio``: speech (``POST /audio/speech``, streamed bytes), transcription and
translation (``POST /audio/transcriptions`` and ``/audio/translations``, uploads streamed from the
file as they are sent, never read whole).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from ..media_types import MediaUsage, Transcript
from .hosts import MediaEndpoint
from .media_http import FileInput, FilePart, MediaHTTP, Multipart, Progress, form_fields, stream_to_file

DEFAULT_SPEECH_MODEL = "gpt-4o-mini-tts"
DEFAULT_VOICE = "alloy"
DEFAULT_TRANSCRIBE_MODEL = "gpt-4o-mini-transcribe"
DEFAULT_TRANSLATE_MODEL = "whisper-1"
TEXT_FORMATS = ("text", "srt", "vtt")  # answered as plain text, not JSON


class Speech:
    """Audio being spoken: iterate it for the bytes as they arrive (``async for chunk in speech``),
    or ``await speech.save(path)``. The request is sent on first use; a failure before the first
    byte is retried, a cut afterwards raises :class:`~modelwire.errors.ProtocolError`."""

    def __init__(self, http: MediaHTTP, body: dict[str, Any], read_timeout: float | None) -> None:
        self.http = http
        self.body = body
        self.read_timeout = read_timeout
        self.content_type: str | None = None
        self.usage = MediaUsage(characters=len(str(body.get("input", ""))))
        self.cost = http.driver.catalog.media_cost(str(body["model"]), self.usage)

    async def chunks(self) -> AsyncIterator[bytes]:
        reply = await self.http.send(
            "audio.speech",
            "audio.speech",
            str(self.body["model"]),
            json=self.body,
            read_timeout=self.read_timeout,
        )
        self.content_type = reply.headers.get("content-type")
        async for chunk in reply.chunks():
            yield chunk

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self.chunks()

    async def save(self, path: str | os.PathLike[str], on_progress: Progress | None = None) -> int:
        """Write the audio to ``path`` as it arrives; returns the bytes written."""
        return await stream_to_file(self.chunks(), path, on_progress=on_progress)


class Audio:
    def __init__(self, http: MediaHTTP) -> None:
        self.http = http

    def speech(
        self,
        input: str,
        *,
        model: str = DEFAULT_SPEECH_MODEL,
        voice: str = DEFAULT_VOICE,
        instructions: str | None = None,
        response_format: str | None = None,
        speed: float | None = None,
        read_timeout: float | None = None,
    ) -> Speech:
        """Text to speech; nothing is sent until the result is iterated or saved."""
        body: dict[str, Any] = {"model": model, "input": input, "voice": voice, "instructions": instructions}
        body |= {"response_format": response_format, "speed": speed}
        return Speech(self.http, {k: v for k, v in body.items() if v is not None}, read_timeout)

    async def transcribe(
        self,
        file: FileInput,
        *,
        model: str = DEFAULT_TRANSCRIBE_MODEL,
        language: str | None = None,
        prompt: str | None = None,
        response_format: str | None = None,
        timestamp_granularities: list[str] | None = None,
        temperature: float | None = None,
        on_progress: Progress | None = None,
        read_timeout: float | None = None,
    ) -> Transcript:
        """Speech to text. ``file`` is a path, bytes, a binary file object or ``(name, data)``;
        it is streamed as it uploads (``on_progress(sent, total)`` sees it go)."""
        params: dict[str, Any] = {
            "model": model,
            "language": language,
            "prompt": prompt,
            "response_format": response_format,
        }
        params |= {"timestamp_granularities": timestamp_granularities, "temperature": temperature}
        return await self._send("audio.transcriptions", file, params, on_progress, read_timeout)

    async def translate(
        self,
        file: FileInput,
        *,
        model: str = DEFAULT_TRANSLATE_MODEL,
        prompt: str | None = None,
        response_format: str | None = None,
        temperature: float | None = None,
        on_progress: Progress | None = None,
        read_timeout: float | None = None,
    ) -> Transcript:
        """Speech in any language to English text (whisper-1)."""
        params = {
            "model": model,
            "prompt": prompt,
            "response_format": response_format,
            "temperature": temperature,
        }
        return await self._send("audio.translations", file, params, on_progress, read_timeout)

    async def _send(
        self,
        endpoint: MediaEndpoint,
        file: FileInput,
        params: dict[str, Any],
        on_progress: Progress | None,
        read_timeout: float | None,
    ) -> Transcript:
        form = Multipart(form_fields(params), [FilePart.of("file", file)])
        model, fmt = str(params["model"]), str(params.get("response_format") or "json")
        reply = await self.http.send(
            "audio.transcriptions",
            endpoint,
            model,
            form=form,
            on_progress=on_progress,
            read_timeout=read_timeout,
        )
        if fmt in TEXT_FORMATS:
            text = (await reply.read()).decode("utf-8", "replace")
            return Transcript(text=text, model=model, format=fmt)
        document = await self.http.json(reply)
        usage = transcript_usage(document)
        return Transcript(
            text=str(document.get("text", "")),
            model=model,
            format=fmt,
            language=document.get("language"),
            duration=document.get("duration"),
            segments=list(document.get("segments") or []),
            words=list(document.get("words") or []),
            usage=usage,
            cost=self.http.driver.catalog.media_cost(model, usage),
            raw=document,
        )


def transcript_usage(document: dict[str, Any]) -> MediaUsage:
    """``usage`` of a transcript: tokens (gpt-4o models) or seconds (whisper-1, ``duration``)."""
    usage = document.get("usage")
    if isinstance(usage, dict) and usage.get("type") == "tokens":
        details = usage.get("input_token_details") or {}
        audio = int(details.get("audio_tokens", usage.get("input_tokens", 0)) or 0)
        return MediaUsage(
            audio_input_tokens=audio,
            text_input_tokens=int(details.get("text_tokens") or 0),
            text_output_tokens=int(usage.get("output_tokens") or 0),
        )
    seconds = usage.get("seconds") if isinstance(usage, dict) else document.get("duration")
    return MediaUsage(audio_seconds=float(seconds or 0.0))
