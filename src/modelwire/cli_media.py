"""The media commands of the ``modelwire`` CLI: ``image``, ``speak``, ``transcribe``, ``video``.

Each is a thin shell over the library (``client.images``, ``client.audio``, ``client.videos``):
results go to files (or stdout for a transcript), progress and cost to stderr.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from .cli import _fail, _host, app, err
from .errors import AuthenticationError, ModelwireError, UpstreamUnavailableError
from .media_types import Video
from .providers.audio import DEFAULT_SPEECH_MODEL, DEFAULT_TRANSCRIBE_MODEL, DEFAULT_VOICE
from .providers.images import DEFAULT_IMAGE_MODEL
from .providers.openai import OpenAI
from .providers.videos import DEFAULT_VIDEO_MODEL

T = TypeVar("T")
SPEECH_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")

ApiKey = Annotated[str | None, typer.Option(help="API key (default: $OPENAI_API_KEY).")]
BaseUrl = Annotated[str | None, typer.Option(help="Base URL (default: $OPENAI_BASE_URL or OpenAI).")]
HostOption = Annotated[str | None, typer.Option(help="Host kind: openai, azure, openai-compatible.")]


def _client(api_key: str | None, base_url: str | None, host: str | None) -> OpenAI:
    key = api_key or os.environ.get("OPENAI_API_KEY") or os.environ.get("AZURE_OPENAI_API_KEY")
    if not key:
        _fail("no API key: set OPENAI_API_KEY or pass --api-key", code=2)
    return OpenAI(api_key=key, base_url=base_url, host=_host(host), max_retries=2)


def _run(client: OpenAI, work: Callable[[OpenAI], Awaitable[T]]) -> T:
    """Run one command's work, its failures as one clear line and an exit status."""

    async def run() -> T:
        try:
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except AuthenticationError as exc:
        _fail(f"the upstream refused the key: {exc.message}")
    except UpstreamUnavailableError as exc:
        _fail(f"cannot reach {client.host.base_url}: {exc.message}")
    except ModelwireError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        _fail("interrupted", code=130)


@contextmanager
def _transfer(label: str) -> Iterator[Callable[[int, int | None], None]]:
    """A progress bar on stderr for an upload or download; the callback takes (done, total)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TransferSpeedColumn,
    )  # not loaded by `serve`

    with Progress(
        TextColumn(label), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err(), transient=True
    ) as bar:
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _cost(model: str, cost: float | None) -> str:
    return f"{model} · ${cost:.6f}" if cost is not None else model


def _numbered(path: Path, index: int, count: int) -> Path:
    """``out.png`` for one image; ``out-1.png``, ``out-2.png``... for several."""
    return path if count == 1 else path.with_name(f"{path.stem}-{index + 1}{path.suffix}")


@app.command()
def image(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write (several: -1, -2... added).")],
    model: Annotated[str, typer.Option("--model", "-m", help="Image model.")] = DEFAULT_IMAGE_MODEL,
    size: Annotated[str | None, typer.Option(help="1024x1024, 1536x1024, 1024x1536 or auto.")] = None,
    quality: Annotated[str | None, typer.Option(help="low, medium, high or auto.")] = None,
    background: Annotated[str | None, typer.Option(help="transparent, opaque or auto.")] = None,
    n: Annotated[int, typer.Option("--n", "-n", min=1, max=10, help="How many images.")] = 1,
    edit: Annotated[
        list[Path] | None, typer.Option("--image", "-i", help="Edit these images instead (up to 16).")
    ] = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    host: HostOption = None,
) -> None:
    """Generate (or, with --image, edit) images and write them to files."""
    suffix = output.suffix.lstrip(".").lower()
    fmt = {"jpg": "jpeg"}.get(suffix, suffix) if suffix in ("png", "jpeg", "jpg", "webp") else None
    output_format = fmt if fmt != "png" else None

    async def work(client: OpenAI) -> None:
        with err().status("generating…"):
            if edit:
                result = await client.images.edit(
                    prompt,
                    list(edit),
                    model=model,
                    n=n,
                    size=size,
                    quality=quality,
                    background=background,
                    output_format=output_format,
                )
            else:
                result = await client.images.generate(
                    prompt,
                    model=model,
                    n=n,
                    size=size,
                    quality=quality,
                    background=background,
                    output_format=output_format,
                )
        if not result.images or any(item.data is None for item in result.images):
            _fail("the upstream sent no image data")
        for index, item in enumerate(result.images):
            path = _numbered(output, index, len(result.images))
            path.write_bytes(item.data or b"")
            typer.echo(str(path))
        err().print(f"[dim]{_cost(model, result.cost)}[/dim]")

    _run(_client(api_key, base_url, host), work)


@app.command()
def speak(
    text: Annotated[str, typer.Argument(help="What to say; '-' reads stdin.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Audio file to write.")],
    voice: Annotated[
        str, typer.Option(help="alloy, ash, ballad, coral, echo, sage, shimmer, ...")
    ] = DEFAULT_VOICE,
    model: Annotated[str, typer.Option("--model", "-m", help="Speech model.")] = DEFAULT_SPEECH_MODEL,
    instructions: Annotated[str | None, typer.Option(help="How to speak (gpt-4o-mini-tts).")] = None,
    fmt: Annotated[
        str | None, typer.Option("--format", help="mp3, opus, aac, flac, wav or pcm (default: from -o).")
    ] = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    host: HostOption = None,
) -> None:
    """Speak text into an audio file, written as it streams in."""
    words = sys.stdin.read() if text == "-" else text
    if not words.strip():
        _fail("nothing to say", code=2)
    chosen = fmt or (
        output.suffix.lstrip(".").lower() if output.suffix.lstrip(".") in SPEECH_FORMATS else "mp3"
    )
    if chosen not in SPEECH_FORMATS:
        _fail(f"--format must be one of {', '.join(SPEECH_FORMATS)}", code=2)

    async def work(client: OpenAI) -> None:
        speech = client.audio.speech(
            words, model=model, voice=voice, instructions=instructions, response_format=chosen
        )
        with _transfer("speaking") as progress:
            written = await speech.save(output, on_progress=progress)
        typer.echo(str(output))
        err().print(f"[dim]{written} bytes · {_cost(model, speech.cost)}[/dim]")

    _run(_client(api_key, base_url, host), work)


@app.command()
def transcribe(
    file: Annotated[Path, typer.Argument(help="Audio file.", exists=True, dir_okay=False, readable=True)],
    model: Annotated[
        str, typer.Option("--model", "-m", help="Transcription model.")
    ] = DEFAULT_TRANSCRIBE_MODEL,
    language: Annotated[str | None, typer.Option(help="The audio's language (ISO-639-1), if known.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, json, verbose_json, srt or vtt.")] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")
    ] = None,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    host: HostOption = None,
) -> None:
    """Transcribe an audio file; the upload streams from disk with progress on stderr."""
    if fmt not in ("text", "json", "verbose_json", "srt", "vtt"):
        _fail("--format must be text, json, verbose_json, srt or vtt", code=2)

    async def work(client: OpenAI) -> None:
        with _transfer("uploading") as progress:
            result = await client.audio.transcribe(
                file, model=model, language=language, response_format=fmt, on_progress=progress
            )
        shown = result.text if fmt in ("text", "srt", "vtt") else _json(result.raw)
        if output is None:
            typer.echo(shown.rstrip("\n"))
        else:
            output.write_text(shown)
        err().print(f"[dim]{_cost(model, result.cost)}[/dim]")

    _run(_client(api_key, base_url, host), work)


def _json(document: dict[str, object]) -> str:
    return json.dumps(document, ensure_ascii=False, indent=2) + "\n"


@app.command()
def video(
    prompt: Annotated[str, typer.Argument(help="What to film.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="MP4 file to write.")],
    model: Annotated[str, typer.Option("--model", "-m", help="Video model.")] = DEFAULT_VIDEO_MODEL,
    seconds: Annotated[str | None, typer.Option(help="4, 8 or 12.")] = None,
    size: Annotated[str | None, typer.Option(help="720x1280, 1280x720, 1024x1792 or 1792x1024.")] = None,
    reference: Annotated[
        Path | None, typer.Option("--input-reference", help="An image the video starts from.", exists=True)
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds between status polls.", min=0.0)] = 5.0,
    api_key: ApiKey = None,
    base_url: BaseUrl = None,
    host: HostOption = None,
) -> None:
    """Create a video, follow its progress, and download it."""

    from rich.progress import BarColumn, Progress, TextColumn  # not loaded by `serve`

    async def work(client: OpenAI) -> None:
        job = await client.videos.create(
            prompt, model=model, seconds=seconds, size=size, input_reference=reference
        )
        err().print(f"[dim]{job.id} {job.status}[/dim]")
        with Progress(TextColumn("{task.description}"), BarColumn(), console=err(), transient=True) as bar:
            task = bar.add_task(job.status, total=100)

            def show(state: Video) -> None:
                bar.update(task, completed=state.progress, description=state.status)
                bar.refresh()  # every poll is news: draw it now, not at the next tick

            done = await client.videos.wait(job.id, poll_interval=poll, on_progress=show)
        if done.status != "completed":
            reason = (done.error or {}).get("message") or "no reason given"
            _fail(f"video {done.id} {done.status}: {reason}")
        with _transfer("downloading") as progress:
            await client.videos.download(done.id, output, on_progress=progress)
        typer.echo(str(output))
        err().print(f"[dim]{_cost(done.model or model, done.cost)}[/dim]")

    _run(_client(api_key, base_url, host), work)
