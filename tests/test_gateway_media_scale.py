"""Media at scale: a video found from a second replica on one PostgreSQL store the instant its
creator has the id, and 200 MB passing through the gateway both ways (a transcription upload, a
video download) while the gateway's peak resident memory stays flat."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.fake_media import Body, audio_head, media_sha256
from tests.fake_upstream import FakeUpstream
from tests.gateway_fixtures import CLIENT_KEY, RunningGateway, start_gateway, usage_rows
from tests.services import postgres_schema
from tests.test_gateway_media import OTHER_KEY, media_config

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

MiB = 1024 * 1024
BIG = 200 * MiB
RSS_BOUND = 60 * MiB  # the peak may rise this much over the idle gateway's resident memory


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture(scope="module")
def replicas(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[RunningGateway]]:
    tmp = tmp_path_factory.mktemp("media-replicas")
    with postgres_schema() as url:
        config = {**media_config(upstream_server, tmp), "store": url}
        started = [start_gateway(config, tmp, name=f"replica{i}") for i in range(2)]
        try:
            yield started
        finally:
            for gateway in started:
                gateway.stop()


def test_a_video_is_found_from_another_replica_at_once(
    replicas: list[RunningGateway], upstream: FakeUpstream
) -> None:
    upstream.media.video_polls = 1
    first, second = (openai.OpenAI(base_url=g.v1, api_key=CLIENT_KEY, max_retries=0) for g in replicas)
    with first, second:
        video = first.videos.create(prompt="from replica one")
        assert second.videos.retrieve(video.id).status == "completed"  # the very next request
        content = second.videos.download_content(video.id)
        assert hashlib.sha256(content.content).hexdigest() == media_sha256("video")
        assert [v.id for v in second.videos.list()] == [video.id]
    with openai.OpenAI(base_url=replicas[1].v1, api_key=OTHER_KEY, max_retries=0) as other:
        with pytest.raises(openai.NotFoundError):
            other.videos.retrieve(video.id)
        with pytest.raises(openai.NotFoundError):
            other.videos.delete(video.id)
    with openai.OpenAI(base_url=replicas[1].v1, api_key=CLIENT_KEY, max_retries=0) as owner:
        assert owner.videos.delete(video.id).deleted
    with (
        openai.OpenAI(base_url=replicas[0].v1, api_key=CLIENT_KEY, max_retries=0) as owner,
        pytest.raises(openai.NotFoundError),
    ):
        owner.videos.retrieve(video.id)


@pytest.fixture(scope="module")
def roomy(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    """Limits raised for 200 MB, and transcription at a base URL of its own on a loopback address
    (allowed here, as an operator allows a TTS or STT server on the local network)."""
    tmp = tmp_path_factory.mktemp("media-roomy")
    config: dict[str, Any] = media_config(upstream_server, tmp)
    config["server"] = {**config["server"], "max_body_bytes": 300 * MiB, "allow_private_urls": True}
    config["media"] = {"audio_max_bytes": 250 * MiB}
    config["backends"]["stt"] = {
        "type": "openai-compatible",
        "base_url": "https://stt.example.invalid/v1",
        "api_key": "sk-up-stt",
        "media_base_urls": {"transcription": upstream_server.url},
    }
    config["models"].append({"name": "local-stt", "route": "stt/whisper-1"})
    running = start_gateway(config, tmp, name="roomy")
    try:
        yield running
    finally:
        running.stop()


def test_200_mb_each_way_leave_the_gateway_memory_flat(
    roomy: RunningGateway, upstream: FakeUpstream, tmp_path: Path
) -> None:
    pid = roomy.proc.pid
    audio = tmp_path / "big.wav"
    with audio.open("wb") as out:
        out.write(audio_head("wav", BIG))
        block = bytes(range(256)) * 4096
        while out.tell() < BIG:
            out.write(block[: BIG - out.tell()])
    digest = hashlib.sha256(audio.read_bytes()).hexdigest()
    with openai.OpenAI(base_url=roomy.v1, api_key=CLIENT_KEY, max_retries=0, timeout=300) as client:
        # Warm up every path once, then take the idle figure.
        client.audio.transcriptions.create(
            file=("a.wav", b"RIFF" + bytes(4000), "audio/wav"), model="local-stt"
        )
        upstream.media.video_polls = 1
        video = client.videos.create(prompt="big")
        client.videos.retrieve(video.id)
        client.videos.download_content(video.id)
        time.sleep(0.5)
        idle = status_kib(pid, "VmRSS") * 1024

        started = time.monotonic()
        with audio.open("rb") as file:
            raw = client.audio.transcriptions.with_raw_response.create(file=file, model="local-stt")
        upload_seconds = time.monotonic() - started
        assert raw.parse().text
        assert upstream.last.path == "/v1/audio/transcriptions"  # the base URL of its own
        assert upstream.last.body["file"]["sha256"] == digest and upstream.last.body["file"]["size"] == BIG

        upstream.script(Body(size=BIG, chunk=MiB))
        started = time.monotonic()
        hashed, size = hashlib.sha256(), 0
        with client.videos.with_streaming_response.download_content(video.id) as response:
            for chunk in response.iter_bytes(MiB):
                hashed.update(chunk)
                size += len(chunk)
        download_seconds = time.monotonic() - started
        assert size == BIG and hashed.hexdigest() == media_sha256("video", BIG)
    peak = status_kib(pid, "VmHWM") * 1024
    figures = (
        f"idle RSS {idle / MiB:.1f} MiB, peak (VmHWM) {peak / MiB:.1f} MiB, "
        f"upload {upload_seconds:.1f} s, download {download_seconds:.1f} s"
    )
    print(figures)
    (Path(os.environ.get("MEDIA_FIGURES", str(tmp_path / "figures.txt")))).write_text(figures + "\n")
    assert peak - idle < RSS_BOUND, figures
    [row] = usage_rows(roomy, raw.headers["x-request-id"])
    assert (row["backend"], row["status"]) == ("stt", 200)
