"""The fake upstream's media endpoints (tests/fake_media.py), driven by the official ``openai`` SDK
and by plain HTTP: what the SDK sends is accepted and parses back into the SDK's own types, what
departs from the spec is flagged, and the scripted failures and sizes behave as documented."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator

import openai
import pytest

from tests.fake_media import Body, form_instance, media_sha256, png, read_form
from tests.fake_upstream import FakeUpstream, Reply

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

PNG = png(seed="input")


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def take_violations(upstream: FakeUpstream) -> str:
    found = "\n".join(upstream.violations)
    upstream.violations.clear()
    return found


def multipart(fields: list[tuple[str, str | tuple[str, bytes]]]) -> tuple[bytes, str]:
    """A multipart body by hand, to send what no SDK would."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields:
        if isinstance(value, tuple):
            disposition = f'form-data; name="{name}"; filename="{value[0]}"'
            head = f"Content-Disposition: {disposition}\r\nContent-Type: application/octet-stream"
            data = value[1]
        else:
            head, data = f'Content-Disposition: form-data; name="{name}"', value.encode()
        parts.append(f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(
    url: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", content_type)
    request.add_header("Authorization", "Bearer sk-test")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# -- images ------------------------------------------------------------------------------------


def test_image_generation_returns_real_pngs_and_gpt_image_usage(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    result = client.images.generate(
        model="gpt-image-1", prompt="a lighthouse", n=2, size="1024x1536", quality="low"
    )
    assert len(result.data) == 2
    for image in result.data:
        assert base64.b64decode(image.b64_json or "").startswith(b"\x89PNG\r\n\x1a\n")
    assert result.usage is not None and result.usage.output_tokens == 2 * 408  # low, 1024x1536
    assert (result.size, result.quality, result.output_format) == ("1024x1536", "low", "png")
    assert upstream.last.body == {
        "model": "gpt-image-1",
        "prompt": "a lighthouse",
        "n": 2,
        "size": "1024x1536",
        "quality": "low",
    }


def test_gpt_image_2_refuses_a_transparent_background(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(model="gpt-image-2", prompt="a logo", background="transparent")
    assert caught.value.status_code == 400
    assert caught.value.param == "background"
    assert (
        client.images.generate(model="gpt-image-1", prompt="a logo", background="transparent").background
        == "transparent"
    )


def test_image_generation_streams_partial_then_completed_events(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    events = list(client.images.generate(model="gpt-image-1", prompt="a fox", stream=True, partial_images=2))
    assert [e.type for e in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert events[-1].usage.output_tokens == 1056  # auto quality and size read as medium, 1024x1024


def test_image_edit_records_each_upload_by_size_and_digest(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    images = [("a.png", PNG, "image/png"), ("b.png", png(seed="b"), "image/png")]
    result = client.images.edit(
        model="gpt-image-1.5", prompt="merge", image=images, mask=("m.png", PNG, "image/png")
    )
    assert result.usage is not None and result.usage.input_tokens_details.image_tokens > 0
    body = upstream.last.body
    assert [f["sha256"] for f in body["image[]"]] == [hashlib.sha256(d).hexdigest() for _, d, _ in images]
    assert body["mask"]["size"] == len(PNG)
    assert upstream.last.raw == b""  # uploads are summarised, never kept


def test_image_edit_streams_image_edit_events(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    stream = client.images.edit(
        model="gpt-image-1", prompt="x", image=("a.png", PNG, "image/png"), stream=True, partial_images=1
    )
    assert [e.type for e in stream] == ["image_edit.partial_image", "image_edit.completed"]


def test_an_image_edit_form_is_checked_field_by_field(upstream: FakeUpstream) -> None:
    fields: list[tuple[str, str | tuple[str, bytes]]] = [
        ("prompt", ("p.txt", b"a file")),
        ("n", "two"),
        ("surprise", "1"),
    ]
    fields += [("image[]", ("a.png", PNG))] * 17 + [("mask", "not a file")]
    body, content_type = multipart(fields)
    post(upstream.url + "/images/edits", body, content_type)
    found = take_violations(upstream)
    assert "form field 'prompt': a file where CreateImageEditRequest expects a value" in found
    assert "form field 'mask': text where CreateImageEditRequest expects a file" in found
    assert "$.n: 'two' is not of type 'integer', 'null'" in found
    assert "request field 'surprise' is not in CreateImageEditRequest" in found
    assert "is too long" in found  # 17 images, the spec allows 16


def test_a_malformed_multipart_body_is_flagged_not_a_crash(upstream: FakeUpstream) -> None:
    body = b'--abc\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--abc'  # no end
    status, _ = post(upstream.url + "/audio/transcriptions", body, "multipart/form-data; boundary=zzz")
    found = take_violations(upstream)
    assert "malformed multipart body" in found and "fake crashed" not in found
    assert status == 400


def test_a_json_body_on_a_multipart_endpoint_is_refused(upstream: FakeUpstream) -> None:
    status, _ = post(upstream.url + "/audio/transcriptions", b'{"model": "whisper-1"}', "application/json")
    assert status == 400
    assert "not a multipart/form-data body" in take_violations(upstream)


def test_form_values_are_read_as_the_types_their_properties_declare() -> None:
    class Fake:
        fields = {"n": ["3"], "stream": ["true"], "prompt": ["42"], "partial_images": ["2"]}
        problems: list[str] = []

    instance, problems = form_instance("CreateImageEditRequest", Fake())  # type: ignore[arg-type]
    assert instance == {"n": 3, "stream": True, "prompt": "42", "partial_images": 2}
    assert problems == []
    assert callable(read_form)


def test_images_on_azure_deployment_paths_need_api_version_and_key(upstream: FakeUpstream) -> None:
    url = f"{upstream.root}/openai/deployments/my-image/images/generations"
    status, data = post(
        url + "?api-version=2025-04-01-preview", b'{"prompt": "x"}', "application/json", {"api-key": "k"}
    )
    assert status == 200 and json.loads(data)["data"]
    assert upstream.last.path.endswith("/my-image/images/generations")
    post(url, b'{"prompt": "x"}', "application/json")
    assert "Azure request without the api-version query parameter" in take_violations(upstream)


# -- audio -------------------------------------------------------------------------------------


def test_speech_streams_audio_over_time_with_chunked_encoding(upstream: FakeUpstream) -> None:
    upstream.script(Body(size=40_000, chunk=10_000, chunk_delay=0.3))
    request = urllib.request.Request(
        upstream.url + "/audio/speech",
        data=json.dumps(
            {"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "wav"}
        ).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
    )
    started = time.monotonic()
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Transfer-Encoding"] == "chunked"
        first = response.read1()
        first_at = time.monotonic() - started
        rest = response.read()
    assert first_at < 0.5 < time.monotonic() - started  # the first chunk came long before the last
    audio = first + rest
    assert len(audio) == 40_000 and audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    assert hashlib.sha256(audio).hexdigest() == media_sha256("wav", 40_000)


def test_speech_formats_and_sse_events(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    mp3 = client.audio.speech.create(model="gpt-4o-mini-tts", input="Hello there", voice="coral")
    assert mp3.content[:2] == b"\xff\xfb" and mp3.response.headers["content-type"] == "audio/mpeg"
    flac = client.audio.speech.create(model="tts-1-hd", input="Hello", voice="alloy", response_format="flac")
    assert flac.content[:4] == b"fLaC"
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", input="Hello there", voice="coral", stream_format="sse"
    ) as response:
        text = response.read().decode()
    names = [line.removeprefix("event: ") for line in text.splitlines() if line.startswith("event: ")]
    assert names[-1] == "speech.audio.done" and set(names[:-1]) == {"speech.audio.delta"}
    with pytest.raises(openai.BadRequestError):
        client.audio.speech.create(model="tts-1", input="Hello", voice="alloy", stream_format="sse")


def test_speech_rejects_unknown_fields(upstream: FakeUpstream) -> None:
    post(
        upstream.url + "/audio/speech",
        b'{"model": "tts-1", "input": "x", "voice": "alloy", "pitch": 2}',
        "application/json",
    )
    assert "pitch" in take_violations(upstream)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("text", "Hello from the fake upstream.\n"),
        ("srt", "1\n00:00:00,000 --> 00:00:02,000\nHello from the fake upstream.\n\n"),
        ("vtt", "WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nHello from the fake upstream.\n\n"),
    ],
)
def test_transcription_text_formats(
    upstream: FakeUpstream, client: openai.OpenAI, fmt: str, expected: str
) -> None:
    text = client.audio.transcriptions.create(
        model="whisper-1", file=("a.mp3", bytes(32_000)), response_format=fmt
    )  # type: ignore[call-overload]
    assert text == expected


def test_transcription_json_and_verbose_json(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    wav = png()  # not audio: the duration falls back to 128 kbit/s
    plain = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=("a.bin", wav))
    assert (
        plain.text == "Hello from the fake upstream."
        and plain.usage is not None
        and plain.usage.type == "tokens"
    )
    verbose = client.audio.transcriptions.create(
        model="whisper-1",
        file=("a.mp3", bytes(48_000)),
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert verbose.duration == 3.0 and verbose.words and not verbose.segments
    assert upstream.last.body["timestamp_granularities[]"] == ["word"]
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.mp3", b"x"), response_format="srt"
        )


def test_transcription_streams_delta_and_done_events(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.text("one two three"))
    events = list(
        client.audio.transcriptions.create(model="gpt-4o-mini-transcribe", file=("a.mp3", b"x"), stream=True)
    )
    assert [e.type for e in events] == ["transcript.text.delta"] * 3 + ["transcript.text.done"]
    assert events[-1].text == "one two three"  # type: ignore[union-attr]


def test_a_large_upload_is_hashed_while_it_streams(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    data = bytes(range(256)) * (80 * 1024)  # 20 MiB, read part by part
    raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=("big.mp3", data))
    assert raw.headers["x-fake-upload-bytes"] == str(len(data))
    assert upstream.last.body["file"]["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations so
def test_translation_formats(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    result = client.audio.translations.create(model="whisper-1", file=("a.mp3", b"x" * 16_000))
    assert result.text == "Hello from the fake upstream."
    verbose = client.audio.translations.create(
        model="whisper-1", file=("a.mp3", b"x" * 16_000), response_format="verbose_json"
    )
    assert verbose.duration == 1.0 and verbose.segments


def test_scripted_failures_apply_to_media_endpoints(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script(Reply.error(429, headers={"retry-after": "0"}), Reply.html(502))
    with pytest.raises(openai.RateLimitError):
        client.audio.speech.create(model="tts-1", input="x", voice="alloy")
    with pytest.raises(openai.InternalServerError):
        client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"x"))


# -- videos ------------------------------------------------------------------------------------


def test_a_video_job_advances_per_poll_and_downloads(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.media.video_polls = 3
    video = client.videos.create(model="sora-2-pro", prompt="waves", seconds="8", size="1280x720")
    assert (video.status, video.progress) == ("queued", 0)
    seen = [(v.status, v.progress) for v in (client.videos.retrieve(video.id) for _ in range(3))]
    assert seen == [("in_progress", 33), ("in_progress", 66), ("completed", 100)]
    content = client.videos.download_content(video.id)
    assert content.response.headers["content-type"] == "video/mp4"
    assert hashlib.sha256(content.content).hexdigest() == media_sha256("video")
    thumbnail = client.videos.download_content(video.id, variant="thumbnail")
    assert thumbnail.content[8:12] == b"WEBP"


def test_video_content_before_completion_is_refused(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    video = client.videos.create(prompt="waves")
    with pytest.raises(openai.BadRequestError):
        client.videos.download_content(video.id)


def test_a_failed_video_job_reports_its_error(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.media.video_polls, upstream.media.video_failure = 1, "moderation blocked"
    video = client.videos.create(prompt="x")
    done = client.videos.retrieve(video.id)
    assert done.status == "failed" and done.error is not None and done.error.message == "moderation blocked"


def test_video_create_with_an_input_reference_upload(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    video = client.videos.create(prompt="animate", input_reference=("ref.png", PNG, "image/png"))
    assert video.status == "queued"
    assert upstream.last.body["input_reference"]["sha256"] == hashlib.sha256(PNG).hexdigest()


def test_video_list_pages_with_after_limit_and_order(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    ids = [client.videos.create(prompt=f"v{i}").id for i in range(3)]
    first = client.videos.list(limit=2, order="asc")
    assert [v.id for v in first.data] == ids[:2] and first.has_more
    second = client.videos.list(limit=2, order="asc", after=ids[1])
    assert [v.id for v in second.data] == ids[2:] and not second.has_more
    assert [v.id for v in client.videos.list().data] == ids[::-1]


def test_video_remix_and_delete(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.media.video_polls = 1
    video = client.videos.create(prompt="waves")
    client.videos.retrieve(video.id)
    remix = client.videos.remix(video.id, prompt="at night")
    assert remix.remixed_from_video_id == video.id
    assert client.videos.delete(video.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_a_large_download_is_generated_on_the_fly_and_can_be_cut(upstream: FakeUpstream) -> None:
    upstream.media.video_polls = 1
    with openai.OpenAI(base_url=upstream.url, api_key="k", max_retries=0) as client:
        video = client.videos.create(prompt="long")
        client.videos.retrieve(video.id)
        size = 50 * 1024 * 1024
        upstream.script(Body(size=size, chunk=1024 * 1024))
        digest, total = hashlib.sha256(), 0
        with client.videos.with_streaming_response.download_content(video.id) as response:
            assert response.headers["content-length"] == str(size)
            for piece in response.iter_bytes(1024 * 1024):
                digest.update(piece)
                total += len(piece)
        assert total == size and digest.hexdigest() == media_sha256("video", size)
        upstream.script(Body(size=size, cut_at=3 * 1024 * 1024))
        with pytest.raises(openai.APIConnectionError):
            client.videos.download_content(video.id)


def test_a_json_video_body_is_checked(upstream: FakeUpstream) -> None:
    post(upstream.url + "/videos", b'{"prompt": "", "seconds": 5}', "application/json")
    found = take_violations(upstream)
    assert "$.seconds: 5 is not one of ['4', '8', '12']" in found
    assert "$.prompt" in found
