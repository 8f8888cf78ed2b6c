"""The driver's media APIs (``client.images``, ``client.audio``, ``client.videos``) against the fake
upstream, which checks every request against the OpenAI spec (tests/fake_media.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import itertools
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelwire.errors import (
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
    RateLimitError,
    TimeoutError,
    UpstreamUnavailableError,
)
from modelwire.providers.hosts import Host
from modelwire.providers.media_http import stream_to_file
from modelwire.providers.openai import OpenAI
from tests.fake_media import Body, media_sha256, png
from tests.fake_upstream import FakeUpstream, Reply

PNG = png(seed="driver")
MiB = 1024 * 1024


@pytest.fixture
async def client(upstream: FakeUpstream) -> AsyncIterator[OpenAI]:
    driver = OpenAI(api_key="sk-test", base_url=upstream.url, max_retries=2)
    try:
        yield driver
    finally:
        await driver.aclose()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- images ------------------------------------------------------------------------------------


async def test_generate_decodes_the_images_and_prices_the_tokens(
    upstream: FakeUpstream, client: OpenAI
) -> None:
    result = await client.images.generate(
        "a lighthouse", model="gpt-image-1", n=2, size="1024x1024", quality="low"
    )
    assert [image.data[:8] for image in result.images if image.data] == [b"\x89PNG\r\n\x1a\n"] * 2
    assert result.usage.image_output_tokens == 2 * 272
    text = result.usage.text_input_tokens
    assert result.cost == pytest.approx((text * 5 + 544 * 40) / 1e6)
    assert upstream.last.body == {
        "prompt": "a lighthouse",
        "model": "gpt-image-1",
        "n": 2,
        "size": "1024x1024",
        "quality": "low",
    }


async def test_edit_uploads_paths_bytes_and_file_objects(
    upstream: FakeUpstream, client: OpenAI, tmp_path: Path
) -> None:
    first = tmp_path / "first.png"
    first.write_bytes(PNG)
    second, third = png(seed="2"), png(seed="3")
    result = await client.images.edit(
        "merge them", [first, ("second.png", second), io.BytesIO(third)], model="gpt-image-1.5", mask=PNG
    )
    assert result.images and result.cost is not None
    sent = upstream.last.body
    assert [f["sha256"] for f in sent["image[]"]] == [sha(PNG), sha(second), sha(third)]
    assert [f["content_type"] for f in sent["image[]"]][:2] == ["image/png", "image/png"]
    assert sent["mask"]["size"] == len(PNG)


async def test_a_refused_background_is_an_invalid_request(upstream: FakeUpstream, client: OpenAI) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        await client.images.generate("logo", model="gpt-image-2", background="transparent")
    assert caught.value.param == "background" and caught.value.status == 400
    assert len(upstream.requests) == 1  # a 400 is not retried


async def test_a_transparent_background_is_made_by_gpt_image_1_5_on_openai_hosts_only(
    upstream: FakeUpstream,
) -> None:
    """gpt-image-2 refuses transparency: where model names are OpenAI's the driver asks gpt-image-1.5
    (and says so in the result); a compatible host's names are its own and go as given."""
    async with OpenAI(api_key="sk-test", base_url=upstream.url, host="openai") as native:
        result = await native.images.generate("logo", background="transparent")
    assert result.model == "gpt-image-1.5" and upstream.last.body["model"] == "gpt-image-1.5"
    async with OpenAI(api_key="sk-test", base_url=upstream.url, host="openai") as native:
        opaque = await native.images.generate("logo", background="opaque")
    assert opaque.model == "gpt-image-2" and upstream.last.body["model"] == "gpt-image-2"


async def test_images_retry_on_429_then_succeed(upstream: FakeUpstream, client: OpenAI) -> None:
    upstream.script(Reply.error(429, headers={"retry-after-ms": "10"}), Reply.html(502))
    result = await client.images.generate("x", model="gpt-image-1")
    assert result.images and len(upstream.requests) == 3


async def test_garbage_and_exhausted_retries_become_typed_errors(upstream: FakeUpstream) -> None:
    async with OpenAI(api_key="k", base_url=upstream.url, max_retries=0) as driver:
        upstream.script(Reply.garbage())
        with pytest.raises(ProtocolError):
            await driver.images.generate("x", model="gpt-image-1")
        upstream.script(Reply.html(502))
        with pytest.raises(UpstreamUnavailableError):
            await driver.images.generate("x", model="gpt-image-1")
        upstream.script(Reply.error(429))
        with pytest.raises(RateLimitError):
            await driver.audio.transcribe(b"audio", model="whisper-1")


# -- Azure ---------------------------------------------------------------------------------------


async def test_azure_uses_deployment_paths_api_version_and_api_key(upstream: FakeUpstream) -> None:
    async with OpenAI(
        api_key="azure-key", base_url=upstream.root, host="azure", api_version="2025-04-01-preview"
    ) as azure:
        await azure.images.generate("x", model="my-images")
        await azure.audio.speech("hi", model="my-tts").save(os.devnull)
        await azure.audio.transcribe(b"audio", model="my-whisper")
        video = await azure.videos.create("waves")
    paths = [(r.path, r.query.get("api-version"), r.headers.get("api-key")) for r in upstream.requests]
    assert paths == [
        ("/openai/deployments/my-images/images/generations", "2025-04-01-preview", "azure-key"),
        ("/openai/deployments/my-tts/audio/speech", "2025-04-01-preview", "azure-key"),
        ("/openai/deployments/my-whisper/audio/transcriptions", "2025-04-01-preview", "azure-key"),
        ("/openai/v1/videos", None, "azure-key"),  # Azure serves videos on its v1 surface only
    ]
    assert video.status == "queued"


def test_azure_image_calls_wait_600_seconds_by_default() -> None:
    driver = OpenAI(api_key="k", base_url="https://res.openai.azure.com", timeout=30)
    media = driver._media
    assert media.timeout("images", driver.host, None) == 600
    assert media.timeout("audio.speech", driver.host, None) == 30
    assert media.timeout("images", driver.host, 5) == 5
    plain = Host.create(None, "https://api.openai.com/v1")
    assert media.timeout("images", plain, None) == 30
    for suffix in (".openai.azure.com", ".services.ai.azure.com", ".cognitiveservices.azure.com"):
        assert Host.create(None, f"https://x{suffix}").deployment_paths


# -- per-modality base URLs and private addresses ------------------------------------------------


async def test_a_modality_base_url_on_a_private_address_is_refused(upstream: FakeUpstream) -> None:
    async with OpenAI(
        api_key="k", base_url="https://api.openai.com/v1", base_urls={"images": upstream.url}
    ) as d:
        with pytest.raises(InvalidRequestError, match="private or loopback"):
            await d.images.generate("x", model="gpt-image-1")
    assert upstream.requests == []


async def test_an_allowed_modality_base_url_receives_that_modality(
    upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_TTS_BASE_URL", upstream.root + "/openai/v1")
    async with OpenAI(
        api_key="k",
        base_url="http://192.0.2.1/v1",
        base_urls={"images": upstream.url},
        allow_private_urls=True,
    ) as d:
        await d.images.generate("x", model="gpt-image-1")
        assert await d.audio.speech("hello", model="tts-1").save(os.devnull) > 0
    assert [r.path for r in upstream.requests] == ["/v1/images/generations", "/openai/v1/audio/speech"]


@pytest.mark.parametrize("url", ["http://169.254.169.254/v1", "http://10.0.0.8/v1", "http://[::1]:8080/v1"])
async def test_metadata_and_private_literals_are_refused_without_a_lookup(
    upstream: FakeUpstream, url: str
) -> None:
    async with OpenAI(api_key="k", base_url=upstream.url, base_urls={"videos": url}) as driver:
        with pytest.raises(InvalidRequestError, match="allow_private_urls=True"):
            await driver.videos.create("x")
        await driver.images.generate("x", model="gpt-image-1")  # the main host is the operator's own
    assert [r.path for r in upstream.requests] == ["/v1/images/generations"]


async def test_an_azure_modality_host_gets_the_key_as_api_key(upstream: FakeUpstream) -> None:
    """A modality sent to an Azure resource authenticates the Azure way, whatever the main host."""
    driver = OpenAI(api_key="k", base_url=upstream.url)
    media = driver._media
    azure = Host.create(None, "https://res.openai.azure.com")
    media.custom.add("images")
    assert await media._auth("images", azure) == {"api-key": "k"}
    assert await media._auth("audio.speech", driver.host) == {"Authorization": "Bearer k"}


def test_unknown_base_url_keys_are_refused() -> None:
    driver = OpenAI(api_key="k", base_urls={"speech": "http://example.com"})
    with pytest.raises(InvalidRequestError, match="unknown base_urls keys"):
        _ = driver.audio


# -- speech --------------------------------------------------------------------------------------


async def test_speech_streams_bytes_as_they_arrive(upstream: FakeUpstream, client: OpenAI) -> None:
    upstream.script(Body(size=40_000, chunk=10_000, chunk_delay=0.25))
    started = time.monotonic()
    arrivals, audio = [], b""
    async for chunk in client.audio.speech("hello", model="tts-1", response_format="wav"):
        arrivals.append(time.monotonic() - started)
        audio += chunk
    assert arrivals[0] < 0.5 < arrivals[-1]  # the first bytes came long before the last
    assert sha(audio) == media_sha256("wav", 40_000)


async def test_speech_saves_to_a_file_and_prices_characters(
    upstream: FakeUpstream, client: OpenAI, tmp_path: Path
) -> None:
    speech = client.audio.speech("x" * 1000, model="tts-1-hd", voice="coral", instructions=None)
    written = await speech.save(tmp_path / "out.mp3")
    assert written == (tmp_path / "out.mp3").stat().st_size and speech.content_type == "audio/mpeg"
    assert speech.cost == pytest.approx(0.03)
    assert upstream.last.body == {"model": "tts-1-hd", "input": "x" * 1000, "voice": "coral"}


async def test_a_cut_speech_stream_raises_and_leaves_no_file(
    upstream: FakeUpstream, client: OpenAI, tmp_path: Path
) -> None:
    upstream.script(Body(size=100_000, chunk=10_000, cut_at=30_000))
    with pytest.raises(ProtocolError):
        await client.audio.speech("hi", model="tts-1").save(tmp_path / "cut.mp3")
    assert os.listdir(tmp_path) == []


# -- transcription -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
async def test_text_formats_come_back_as_sent(upstream: FakeUpstream, client: OpenAI, fmt: str) -> None:
    transcript = await client.audio.transcribe(b"\x00" * 32_000, model="whisper-1", response_format=fmt)
    assert "Hello from the fake upstream." in transcript.text and transcript.format == fmt


async def test_verbose_json_with_word_timestamps_is_priced_per_minute(
    upstream: FakeUpstream, client: OpenAI, tmp_path: Path
) -> None:
    audio = tmp_path / "talk.mp3"
    audio.write_bytes(b"\x00" * 960_000)  # 60 s at the fake's 128 kbit/s
    transcript = await client.audio.transcribe(
        audio,
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["word"],
        language="en",
    )
    assert transcript.duration == 60.0 and transcript.words and transcript.language == "english"
    assert transcript.cost == pytest.approx(0.006)
    assert upstream.last.body["timestamp_granularities[]"] == ["word"]
    assert upstream.last.body["file"]["filename"] == "talk.mp3"


async def test_token_usage_of_gpt_4o_transcription_is_priced(upstream: FakeUpstream, client: OpenAI) -> None:
    transcript = await client.audio.transcribe(("a.mp3", b"\x00" * 16_000), model="gpt-4o-transcribe")
    assert transcript.usage.audio_input_tokens == 10 and transcript.usage.text_output_tokens > 0
    expected = (10 * 6 + transcript.usage.text_output_tokens * 10) / 1e6
    assert transcript.cost == pytest.approx(expected)


async def test_translation(upstream: FakeUpstream, client: OpenAI) -> None:
    upstream.script(Reply.text("good morning"))
    assert (await client.audio.translate(b"bonjour")).text == "good morning"
    assert upstream.last.path == "/v1/audio/translations" and upstream.last.body["model"] == "whisper-1"


async def test_an_upload_reports_progress_and_is_resent_whole_on_a_retry(
    upstream: FakeUpstream, client: OpenAI, tmp_path: Path
) -> None:
    data = os.urandom(3 * MiB + 17)
    path = tmp_path / "long.wav"
    path.write_bytes(data)
    seen: list[tuple[int, int | None]] = []
    upstream.script(Reply.error(429, headers={"retry-after-ms": "1"}))
    await client.audio.transcribe(
        path, model="whisper-1", on_progress=lambda sent, total: seen.append((sent, total))
    )
    assert [r.body["file"]["sha256"] for r in upstream.requests] == [sha(data), sha(data)]
    total = seen[-1][1]
    assert total is not None and seen[-1][0] == total > len(data)  # the whole form, file included
    restarts = sum(1 for before, after in itertools.pairwise(seen) if after[0] < before[0])
    assert restarts == 1  # counted again from 0 for the retry


async def test_an_upload_that_cannot_be_rewound_is_not_retried(
    upstream: FakeUpstream, client: OpenAI
) -> None:
    read, write = os.pipe()
    os.write(write, b"\x01" * 50_000)
    os.close(write)
    upstream.script(Reply.error(429, headers={"retry-after-ms": "1"}))
    with os.fdopen(read, "rb") as pipe, pytest.raises(RateLimitError):
        await client.audio.transcribe(("pipe.mp3", pipe), model="whisper-1")
    assert len(upstream.requests) == 1
    assert upstream.last.headers.get("transfer-encoding") == "chunked"  # size unknown: chunked


def test_a_200_mb_upload_streams_in_bounded_memory(upstream: FakeUpstream, tmp_path: Path) -> None:
    """The driver runs in its own process, so its peak RSS is its own (the fake lives here). The
    peak is VmHWM: ``ru_maxrss`` would carry over the forking parent's peak across exec."""
    size = 200 * MiB
    audio = tmp_path / "big.wav"
    with audio.open("wb") as file:
        file.truncate(size)  # sparse: 200 MB of zeros without writing them
    script = textwrap.dedent(
        f"""
        import asyncio
        from modelwire.providers.openai import OpenAI

        async def main():
            async with OpenAI(api_key="k", base_url={upstream.url!r}, max_retries=0) as client:
                result = await client.audio.transcribe({str(audio)!r}, model="whisper-1")
            print(result.text)
            status = open("/proc/self/status").read().split("VmHWM:")[1]
            print(status.split()[0])  # kB

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    text, peak_kib = done.stdout.strip().splitlines()
    baseline = (
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import modelwire.providers.openai; print(open('/proc/self/status').read())",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        .stdout.split("VmHWM:")[1]
        .split()[0]
    )
    assert text == "Hello from the fake upstream."
    received = upstream.last.body["file"]
    digest = hashlib.sha256()
    zeros = bytes(MiB)
    for _ in range(200):
        digest.update(zeros)
    assert received["size"] == size and received["sha256"] == digest.hexdigest()
    peak, floor = int(peak_kib) / 1024, int(baseline) / 1024
    print(f"\ndriver peak RSS for a 200 MB upload: {peak:.1f} MiB (after import alone: {floor:.1f} MiB)")
    assert int(peak_kib) - int(baseline) < 30 * 1024  # a few MiB of buffers, not the 200 MB it sent


# -- videos --------------------------------------------------------------------------------------


async def test_a_video_is_created_waited_for_and_downloaded(
    upstream: FakeUpstream, client: OpenAI, tmp_path: Path
) -> None:
    upstream.media.video_polls = 3
    video = await client.videos.create("waves", model="sora-2-pro", seconds=8, size="1792x1024")
    seen: list[tuple[str, int]] = []
    done = await client.videos.wait(
        video.id, poll_interval=0.01, on_progress=lambda v: seen.append((v.status, v.progress))
    )
    assert seen == [("in_progress", 33), ("in_progress", 66), ("completed", 100)]
    assert done.cost == pytest.approx(8 * 0.5)
    target = tmp_path / "waves.mp4"
    written = await client.videos.download(video.id, target)
    assert written == target.stat().st_size and sha(target.read_bytes()) == media_sha256("video")
    await client.videos.download(video.id, tmp_path / "thumb.webp", variant="thumbnail")
    assert upstream.last.query == {"variant": "thumbnail"}


async def test_a_video_with_an_input_reference_goes_as_multipart(
    upstream: FakeUpstream, client: OpenAI
) -> None:
    await client.videos.create("animate this", input_reference=("start.png", PNG))
    assert upstream.last.headers["content-type"].startswith("multipart/form-data")
    assert upstream.last.body["input_reference"]["sha256"] == sha(PNG)


async def test_a_cut_video_download_raises_and_leaves_no_file(
    upstream: FakeUpstream, client: OpenAI, tmp_path: Path
) -> None:
    upstream.media.video_polls = 1
    video = await client.videos.create("waves")
    await client.videos.wait(video.id, poll_interval=0.01)
    upstream.script(Body(size=20 * MiB, cut_at=5 * MiB))
    with pytest.raises(ProtocolError):
        await client.videos.download(video.id, tmp_path / "cut.mp4")
    assert os.listdir(tmp_path) == []


async def test_a_failed_job_and_a_slow_one(upstream: FakeUpstream, client: OpenAI) -> None:
    upstream.media.video_polls, upstream.media.video_failure = 1, "blocked by moderation"
    failed = await client.videos.wait((await client.videos.create("x")).id, poll_interval=0.01)
    assert failed.status == "failed" and failed.error == {
        "code": "video_generation_failed",
        "message": "blocked by moderation",
    }
    assert failed.cost is None
    upstream.media.video_polls, upstream.media.video_failure = 100, None
    slow = await client.videos.create("y")
    with pytest.raises(TimeoutError):
        await client.videos.wait(slow.id, poll_interval=0.05, wait_timeout=0.2)


async def test_list_remix_and_delete(upstream: FakeUpstream, client: OpenAI) -> None:
    upstream.media.video_polls = 1
    ids = [(await client.videos.create(f"v{i}")).id for i in range(3)]
    page = await client.videos.list(limit=2, order="asc")
    assert [v.id for v in page.videos] == ids[:2] and page.has_more
    rest = await client.videos.list(limit=2, order="asc", after=page.last_id)
    assert [v.id for v in rest.videos] == ids[2:] and not rest.has_more
    await client.videos.retrieve(ids[0])
    remix = await client.videos.remix(ids[0], "at night")
    assert remix.remixed_from_video_id == ids[0]
    assert await client.videos.delete(ids[0])
    with pytest.raises(NotFoundError):
        await client.videos.retrieve(ids[0])
    with pytest.raises(NotFoundError, match=r"Video with id '\.\./models' not found"):
        await client.videos.retrieve("../models")  # escaped: a video id, not a walk to /v1/models


async def test_a_download_into_a_pipe_writes_through_it_and_leaves_it_a_pipe(tmp_path: Path) -> None:
    """``-o /dev/null`` once renamed a ``.part`` file over the device: a target that is not a
    regular file is written in place (a FIFO stands in for the device here)."""
    fifo = tmp_path / "sink"
    os.mkfifo(fifo)
    received = asyncio.get_running_loop().run_in_executor(None, fifo.read_bytes)

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    assert await stream_to_file(chunks(), fifo, total=6) == 6
    assert await received == b"abcdef"
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert not (tmp_path / "sink.part").exists()
