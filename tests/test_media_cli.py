"""The media commands (``modelwire image``, ``speak``, ``transcribe``, ``video``) run as the
installed CLI against the fake upstream, which checks every request against the OpenAI spec."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_media import Body, media_sha256, png
from tests.fake_upstream import FakeUpstream, Reply

MODELWIRE = str(Path(sys.executable).parent / "modelwire")


def run(
    upstream: FakeUpstream, *args: str, terminal: bool = False, key: bool = True
) -> subprocess.CompletedProcess[str]:
    """``modelwire <args>`` pointed at the fake; ``terminal`` makes rich draw its progress bars."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "AZURE_OPENAI_"))}
    env |= {"OPENAI_BASE_URL": upstream.url, "COLUMNS": "120"}
    if key:
        env["OPENAI_API_KEY"] = "sk-cli"
    if terminal:
        env["TTY_COMPATIBLE"] = "1"
    return subprocess.run([MODELWIRE, *args], capture_output=True, text=True, timeout=120, env=env)


def test_image_writes_one_file_per_image(upstream: FakeUpstream, tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    done = run(
        upstream, "image", "a cat", "-o", str(out), "--n", "2", "--model", "gpt-image-1", "--quality", "low"
    )
    assert done.returncode == 0, done.stderr
    paths = [tmp_path / "cat-1.png", tmp_path / "cat-2.png"]
    assert done.stdout.split() == [str(p) for p in paths]
    assert all(p.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") for p in paths)
    assert upstream.last.body == {"prompt": "a cat", "model": "gpt-image-1", "n": 2, "quality": "low"}
    assert "gpt-image-1 · $0.0" in done.stderr


def test_image_format_from_the_suffix_and_edits(upstream: FakeUpstream, tmp_path: Path) -> None:
    source = tmp_path / "in.png"
    source.write_bytes(png(seed="cli"))
    out = tmp_path / "edited.webp"
    done = run(
        upstream, "image", "make it blue", "-o", str(out), "--image", str(source), "--size", "1024x1024"
    )
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[8:12] == b"WEBP"
    sent = upstream.last.body
    assert upstream.last.path == "/v1/images/edits" and sent["output_format"] == "webp"
    assert [f["sha256"] for f in sent["image[]"]] == [hashlib.sha256(source.read_bytes()).hexdigest()]


def test_an_image_the_upstream_refuses_is_one_clear_line(upstream: FakeUpstream, tmp_path: Path) -> None:
    done = run(
        upstream,
        "image",
        "a logo",
        "-o",
        str(tmp_path / "x.png"),
        "--model",
        "gpt-image-2",
        "--background",
        "transparent",
    )
    assert done.returncode == 1
    assert (
        done.stderr.startswith("error: Transparent background is not supported")
        and "Traceback" not in done.stderr
    )
    assert not (tmp_path / "x.png").exists()


def test_speak_streams_into_the_file(upstream: FakeUpstream, tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    done = run(
        upstream, "speak", "hello there", "-o", str(out), "--voice", "coral", "--instructions", "cheerful"
    )
    assert done.returncode == 0, done.stderr
    audio = out.read_bytes()
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert upstream.last.body == {
        "model": "gpt-4o-mini-tts",
        "input": "hello there",
        "voice": "coral",
        "instructions": "cheerful",
        "response_format": "wav",
    }
    mp3 = run(
        upstream, "speak", "hi", "-o", str(tmp_path / "hi.audio"), "--format", "mp3", "--model", "tts-1"
    )
    assert mp3.returncode == 0 and (tmp_path / "hi.audio").read_bytes()[:2] == b"\xff\xfb"
    assert "tts-1 · $0.000030" in mp3.stderr  # 2 characters at $15 per million


def test_transcribe_prints_the_transcript_and_shows_the_upload(
    upstream: FakeUpstream, tmp_path: Path
) -> None:
    audio = tmp_path / "talk.mp3"
    audio.write_bytes(os.urandom(2 * 1024 * 1024))
    upstream.script(Reply.text("the quick brown fox"))
    done = run(
        upstream,
        "transcribe",
        str(audio),
        "--model",
        "whisper-1",
        "--format",
        "srt",
        "--language",
        "en",
        terminal=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1\n00:00:00,000 --> 00:02:11,072\nthe quick brown fox")
    assert "uploading" in done.stderr and "MB" in done.stderr  # the progress bar on stderr
    sent = upstream.last.body
    assert (
        sent["language"] == "en" and sent["file"]["sha256"] == hashlib.sha256(audio.read_bytes()).hexdigest()
    )


def test_transcribe_json_to_a_file(upstream: FakeUpstream, tmp_path: Path) -> None:
    audio, out = tmp_path / "a.wav", tmp_path / "a.json"
    audio.write_bytes(b"\x00" * 1000)
    done = run(upstream, "transcribe", str(audio), "--format", "json", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert '"text": "Hello from the fake upstream."' in out.read_text()
    assert upstream.last.body["model"] == "gpt-4o-mini-transcribe"


def test_video_creates_polls_with_progress_and_downloads(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.media.video_polls = 3
    out = tmp_path / "waves.mp4"
    done = run(upstream, "video", "waves", "-o", str(out), "--seconds", "8", "--poll", "0.01", terminal=True)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(out.read_bytes()).hexdigest() == media_sha256("video")
    assert "in_progress" in done.stderr and "completed" in done.stderr and "downloading" in done.stderr
    assert "sora-2 · $0.800000" in done.stderr
    gets = [r for r in upstream.requests if r.method == "GET"]
    assert len(gets) == 4  # three polls and the download


def test_a_failed_video_exits_with_its_reason(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.media.video_polls, upstream.media.video_failure = 1, "blocked by moderation"
    done = run(upstream, "video", "x", "-o", str(tmp_path / "x.mp4"), "--poll", "0.01")
    assert done.returncode == 1
    assert "failed: blocked by moderation" in done.stderr and not (tmp_path / "x.mp4").exists()


def test_a_cut_download_fails_and_leaves_no_file(upstream: FakeUpstream, tmp_path: Path) -> None:
    upstream.media.video_polls = 1
    upstream.script(Reply.text("create"), Reply.text("poll"), Body(size=4 * 1024 * 1024, cut_at=1024 * 1024))
    done = run(upstream, "video", "x", "-o", str(tmp_path / "x.mp4"), "--poll", "0.01")
    assert done.returncode == 1 and "cut off" in done.stderr and "Traceback" not in done.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "args",
    [
        ("image", "x", "-o", "out.png"),
        ("speak", "x", "-o", "out.mp3"),
        ("video", "x", "-o", "out.mp4"),
    ],
)
def test_no_key_is_a_usage_error(upstream: FakeUpstream, args: tuple[str, ...], tmp_path: Path) -> None:
    done = run(upstream, *(str(tmp_path / a) if a.startswith("out.") else a for a in args), key=False)
    assert done.returncode == 2 and "no API key" in done.stderr
    assert upstream.requests == []
