"""The gateway's media endpoints end to end: a real gateway process, the fake upstream's media
endpoints (tests/fake_media.py, which checks every request against OpenAI's spec), and the official
``openai`` SDK as the client. Images (the transparent-background rewrite, Azure's paths, edits,
streamed partial images), speech (unbuffered), transcriptions (streamed), videos (create, poll,
download, list, remix, delete; another key refused), and the failure doors: 413, a 400 naming the
field, a cut download, a key without the model, failover on a 500."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from modelwire.providers.codex import REFRESH_URL_ENV
from tests.fake_codex import FakeAccount
from tests.fake_media import Body, media_sha256, png
from tests.fake_upstream import FakeUpstream, Reply
from tests.gateway_fixtures import CLIENT_KEY, RunningGateway, start_gateway, usage_rows

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

OTHER_KEY = "sk-client-other-000000000"
CHAT_ONLY_KEY = "sk-client-chat-only-0000"
IMAGES_LIMIT = 200_000
PNG = png(seed="reference")


def media_config(upstream: FakeUpstream, tmp: Path) -> dict[str, Any]:
    url = upstream.url
    return {
        "store": f"sqlite:///{tmp}/state.db",
        "server": {"keepalive_seconds": 0.25},
        "failover": {"budget_seconds": 15},
        "usage": {"flush_seconds": 0.1},
        "media": {"images_max_bytes": IMAGES_LIMIT},
        "default_backend": "oai",
        "backends": {
            "oai": {"type": "openai", "base_url": url, "api_keys": ["sk-up-oai-1", "sk-up-oai-2"]},
            "flaky": {"type": "openai", "base_url": url, "api_key": "sk-up-flaky", "max_retries": 0},
            "backup": {"type": "openai", "base_url": url, "api_key": "sk-up-backup"},
            "az": {
                "type": "azure",
                "base_url": upstream.root,
                "api_key": "az-key-123",
                "api_version": "2025-04-01-preview",
            },
            "compat": {"type": "openai-compatible", "base_url": url, "api_key": "sk-up-compat"},
            "tts_private": {
                "type": "openai-compatible",
                "base_url": "https://api.example.invalid/v1",
                "api_key": "sk-up-tts",
                "media_base_urls": {"speech": url},
            },
        },
        "models": [
            {"name": "img-failover", "route": ["flaky/gpt-image-1", "backup/gpt-image-1"]},
            {"name": "az-image", "route": "az/my-image-deployment"},
            {"name": "compat-image", "route": "compat/gpt-image-2"},
            {"name": "private-tts", "route": "tts_private/gpt-4o-mini-tts"},
            {"name": "az-tts", "route": "az/my-tts"},
            {"name": "az-stt", "route": "az/my-whisper"},
        ],
        "keys": [
            {"key": CLIENT_KEY, "name": "all"},
            {"key": OTHER_KEY, "name": "other"},
            {"key": CHAT_ONLY_KEY, "name": "chat-only", "models": ["chat-model"]},
        ],
    }


@pytest.fixture(scope="module")
def gateway(
    upstream_server: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningGateway]:
    tmp = tmp_path_factory.mktemp("media")
    running = start_gateway(media_config(upstream_server, tmp), tmp, name="media")
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(gateway: RunningGateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.v1, api_key=CLIENT_KEY, max_retries=0) as sdk:
        yield sdk


def sdk(gateway: RunningGateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.v1, api_key=key, max_retries=0)


def last_json(upstream: FakeUpstream) -> dict[str, Any]:
    body = upstream.last.body
    assert isinstance(body, dict)
    return body


# ------------------------------------------------------------------------------------- images


def test_an_image_without_a_model_is_gpt_image_2_with_a_priced_usage_row(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    raw = client.images.with_raw_response.generate(prompt="a red kite", size="1024x1024", quality="low")
    images = raw.parse()
    assert images.data and images.data[0].b64_json
    assert last_json(upstream)["model"] == "gpt-image-2"
    assert upstream.last.headers["authorization"].startswith("Bearer sk-up-oai-")
    assert raw.headers["x-modelwire-model"] == "gpt-image-2"
    [row] = usage_rows(gateway, raw.headers["x-request-id"])
    assert (row["dialect"], row["upstream_model"], row["status"]) == ("images", "gpt-image-2", 200)
    assert row["output_tokens"] > 0 and row["cost"] and row["cost"] > 0


def test_gpt_image_2_with_a_transparent_background_is_sent_to_gpt_image_1_5_on_openai(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    raw = client.images.with_raw_response.generate(
        model="gpt-image-2", prompt="a logo", background="transparent", output_format="png"
    )
    assert raw.parse().data
    assert last_json(upstream)["model"] == "gpt-image-1.5"
    assert raw.headers["x-modelwire-model"] == "gpt-image-1.5"
    [row] = usage_rows(gateway, raw.headers["x-request-id"])
    assert (row["public_model"], row["upstream_model"]) == ("gpt-image-2", "gpt-image-1.5")
    # A compatible host names its own models: left alone (and this one says what it thinks of it).
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(
            model="compat-image", prompt="a logo", background="transparent", output_format="png"
        )
    assert "gpt-image-2" in caught.value.message
    assert last_json(upstream)["model"] == "gpt-image-2"


def test_azure_images_go_to_the_deployment_with_its_key_and_version(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    images = client.images.generate(
        model="az-image", prompt="a boat", background="transparent", output_format="webp"
    )
    assert images.data
    last = upstream.last
    assert last.path == "/openai/deployments/my-image-deployment/images/generations"
    assert last.query["api-version"] == "2025-04-01-preview"
    assert last.headers["api-key"] == "az-key-123" and "authorization" not in last.headers
    assert last_json(upstream)["model"] == "my-image-deployment"  # the deployment name, untouched


def test_image_edits_relay_every_reference_and_the_mask(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    images = client.images.edit(
        model="gpt-image-1.5",
        image=[("a.png", PNG, "image/png"), ("b.png", PNG, "image/png")],
        mask=("m.png", PNG, "image/png"),
        prompt="add a hat",
        n=2,
    )
    assert len(images.data or []) == 2
    form = last_json(upstream)
    assert form["model"] == "gpt-image-1.5" and form["prompt"] == "add a hat"
    sha = hashlib.sha256(PNG).hexdigest()
    assert [f["sha256"] for f in form["image[]"]] == [sha, sha]
    assert form["mask"]["sha256"] == sha


def test_image_edit_limits_are_400s_naming_the_field_and_a_413(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    six = [(f"{i}.png", PNG, "image/png") for i in range(6)]
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.edit(image=six, prompt="x")
    assert caught.value.param == "image" and "at most 5" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="x", n=5)
    assert caught.value.param == "n"
    big = ("big.png", PNG + bytes(IMAGES_LIMIT), "image/png")
    with pytest.raises(openai.APIStatusError) as too_large:
        client.images.edit(image=big, prompt="x")
    assert too_large.value.status_code == 413 and "larger than" in too_large.value.message
    assert upstream.requests == []  # nothing reached the upstream


def test_streamed_partial_images_pass_through(gateway: RunningGateway, client: openai.OpenAI) -> None:
    with client.images.with_streaming_response.generate(
        prompt="a kite", stream=True, partial_images=2, model="gpt-image-1"
    ) as response:
        request_id = response.headers["x-request-id"]
        text = response.read().decode()
    kinds = [json.loads(line[6:])["type"] for line in text.splitlines() if line.startswith("data: ")]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"]
    [row] = usage_rows(gateway, request_id)
    assert row["output_tokens"] > 0 and row["cost"]


def test_failover_to_the_second_backend_on_a_500(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.script(Reply.error(500, "boom"))
    raw = client.images.with_raw_response.generate(model="img-failover", prompt="x")
    assert raw.parse().data
    assert raw.headers["x-modelwire-backend"] == "backup"
    assert [r.headers["authorization"] for r in upstream.requests] == [
        "Bearer sk-up-flaky",
        "Bearer sk-up-backup",
    ]


def test_a_key_without_the_model_is_refused(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    with sdk(gateway, CHAT_ONLY_KEY) as other, pytest.raises(openai.PermissionDeniedError) as caught:
        other.images.generate(prompt="x")
    assert caught.value.code == "model_not_allowed"
    with sdk(gateway, CHAT_ONLY_KEY) as other, pytest.raises(openai.PermissionDeniedError):
        other.audio.transcriptions.create(file=("a.wav", b"RIFF", "audio/wav"), model="whisper-1")
    assert upstream.requests == []


# -------------------------------------------------------------------------------------- audio


def test_speech_reaches_the_client_as_the_upstream_sends_it(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.script(Body(size=40_000, chunk=10_000, chunk_delay=0.5))
    started = time.monotonic()
    with client.audio.speech.with_streaming_response.create(
        model="tts-1", input="hello there", voice="alloy", response_format="wav"
    ) as response:
        chunks = response.iter_bytes()
        first = next(chunks)
        first_at = time.monotonic() - started
        audio = first + b"".join(chunks)
        request_id = response.headers["x-request-id"]
    total = time.monotonic() - started
    assert first_at < 1.0 and total > 1.4  # the first bytes came while the fake was still sending
    assert hashlib.sha256(audio).hexdigest() == media_sha256("wav", 40_000)
    [row] = usage_rows(gateway, request_id)
    assert row["dialect"] == "audio" and row["cost"] == pytest.approx(11 * 15 / 1_000_000)


def test_speech_checks_instructions_and_passes_sse_through(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="tts-1", input="hi", voice="alloy", instructions="whisper")
    assert caught.value.param == "instructions"
    with client.audio.speech.with_streaming_response.create(
        model="gpt-4o-mini-tts", input="hi there", voice="coral", stream_format="sse"
    ) as response:
        text = response.read().decode()
    names = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
    assert names[-1] == "speech.audio.done"


def test_each_endpoint_has_its_default_model(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    status, _ = post(
        gateway, "/v1/audio/speech", b'{"input": "hi", "voice": "alloy"}', "application/json", raw=True
    )
    assert status == 200 and last_json(upstream)["model"] == "gpt-4o-mini-tts"
    boundary = "b0undary"
    form = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        f"Content-Type: audio/wav\r\n\r\nRIFF0000\r\n--{boundary}--\r\n"
    )
    status, doc = post(
        gateway, "/audio/transcriptions", form.encode(), f"multipart/form-data; boundary={boundary}"
    )
    assert status == 200 and doc["text"] and last_json(upstream)["model"] == "gpt-4o-transcribe"


def test_a_private_speech_endpoint_is_refused_without_allow_private_urls(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.speech.create(model="private-tts", input="hi", voice="alloy")
    assert caught.value.status_code == 502 and "allow_private_urls" in caught.value.message
    assert upstream.requests == []


def test_transcriptions_whole_as_text_and_streamed(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    wav = b"RIFF" + bytes(32_000)
    result = client.audio.transcriptions.create(
        file=("a.wav", wav, "audio/wav"), model="gpt-4o-transcribe", language="en", prompt="names"
    )
    assert result.text
    form = last_json(upstream)
    assert form["model"] == "gpt-4o-transcribe" and form["file"]["sha256"] == hashlib.sha256(wav).hexdigest()
    text = client.audio.transcriptions.create(
        file=("a.wav", wav, "audio/wav"), model="whisper-1", response_format="srt"
    )
    assert "-->" in text
    events = list(
        client.audio.transcriptions.create(
            file=("a.wav", wav, "audio/wav"), model="gpt-4o-transcribe", stream=True
        )
    )
    assert events[-1].type == "transcript.text.done" and events[0].type == "transcript.text.delta"
    verbose = client.audio.transcriptions.create(
        file=("a.wav", wav, "audio/wav"),
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["word"],
    )
    assert verbose.words


def test_a_form_without_its_file_is_a_400_naming_it(gateway: RunningGateway, upstream: FakeUpstream) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n--{boundary}--\r\n'
    )
    status, doc = post(
        gateway, "/v1/audio/transcriptions", body.encode(), f"multipart/form-data; boundary={boundary}"
    )
    assert status == 400 and doc["error"]["param"] == "file"
    status, doc = post(
        gateway,
        "/v1/audio/transcriptions",
        b"--b0undary\r\nbroken",
        f"multipart/form-data; boundary={boundary}",
    )
    assert status == 400 and "malformed multipart" in doc["error"]["message"]
    assert upstream.requests == []


def post(
    gateway: RunningGateway, path: str, body: bytes, content_type: str, *, raw: bool = False
) -> tuple[int, Any]:
    request = urllib.request.Request(
        gateway.url + path,
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            payload = reply.read()
            return reply.status, payload if raw else json.loads(payload)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


# ------------------------------------------------------------------------------------- videos


def test_a_video_is_created_polled_downloaded_listed_remixed_and_deleted(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.media.video_polls = 2
    raw = client.videos.with_raw_response.create(prompt="waves", seconds="8")
    video = raw.parse()
    assert last_json(upstream)["model"] == "sora-2"
    statuses = [client.videos.retrieve(video.id).status for _ in range(2)]
    assert statuses[-1] == "completed"
    content = client.videos.download_content(video.id)
    assert hashlib.sha256(content.content).hexdigest() == media_sha256("video")
    assert [v.id for v in client.videos.list()][:1] == [video.id]
    remix = client.videos.remix(video.id, prompt="calmer waves")
    assert remix.remixed_from_video_id == video.id
    assert {v.id for v in client.videos.list()} >= {video.id, remix.id}
    [row] = usage_rows(gateway, raw.headers["x-request-id"])
    assert row["dialect"] == "videos" and row["cost"] == pytest.approx(8 * 0.10)
    assert client.videos.delete(video.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(video.id)


def test_another_key_cannot_see_or_delete_a_video(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    video = client.videos.create(prompt="mine", input_reference=("ref.png", PNG, "image/png"))
    assert last_json(upstream)["input_reference"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    seen = len(upstream.requests)
    with sdk(gateway, OTHER_KEY) as other:
        for attempt in (other.videos.retrieve, other.videos.download_content, other.videos.delete):
            with pytest.raises(openai.NotFoundError):
                attempt(video.id)
        assert [v.id for v in other.videos.list()] == []
    assert len(upstream.requests) == seen  # nothing went upstream for the other key
    assert client.videos.retrieve(video.id).id == video.id


def test_a_cut_download_fails_at_the_client(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    """Never a complete-looking truncated file: the response ends without its final chunk."""
    upstream.media.video_polls = 1
    video = client.videos.create(prompt="waves")
    client.videos.retrieve(video.id)
    upstream.script(Body(size=4 * 1024 * 1024, cut_at=1024 * 1024))
    connection = http.client.HTTPConnection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]), timeout=30)
    connection.request(
        "GET", f"/v1/videos/{video.id}/content", headers={"Authorization": f"Bearer {CLIENT_KEY}"}
    )
    response = connection.getresponse()
    try:
        # The upstream's own length, passed on: the client knows the file is short.
        assert response.status == 200 and response.getheader("content-length") == str(4 * 1024 * 1024)
        with pytest.raises(http.client.IncompleteRead) as caught:
            response.read()
        assert len(caught.value.partial) <= 1024 * 1024
    finally:
        connection.close()
    [row] = usage_rows(gateway, response.getheader("x-request-id") or "")
    assert (row["status"], row["error"]) == (502, "upstream_cut")
    assert "Traceback" not in gateway.log()


def test_a_cut_chunked_speech_stream_fails_at_the_client(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.script(Body(size=400_000, chunk=50_000, cut_at=120_000, chunk_delay=0.05))
    connection = http.client.HTTPConnection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]), timeout=30)
    try:
        body = json.dumps({"model": "tts-1", "input": "hello", "voice": "alloy", "response_format": "pcm"})
        headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
        connection.request("POST", "/v1/audio/speech", body=body, headers=headers)
        response = connection.getresponse()
        assert response.status == 200 and response.getheader("transfer-encoding") == "chunked"
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        connection.close()


def test_capture_records_media_by_size_and_digest_never_the_bytes(
    upstream_server: FakeUpstream, upstream: FakeUpstream, tmp_path: Path
) -> None:
    config = {**media_config(upstream_server, tmp_path), "capture": {"path": str(tmp_path / "capture.jsonl")}}
    running = start_gateway(config, tmp_path, name="captured")
    try:
        with sdk(running, CLIENT_KEY) as client:
            image = client.images.generate(prompt="a kite", model="gpt-image-1").data or []
            wav = b"RIFF" + bytes(range(256)) * 64
            client.audio.transcriptions.create(file=("a.wav", wav, "audio/wav"), model="whisper-1")
            upstream.script(Body(size=30_000))
            speech = client.audio.speech.create(model="tts-1", input="hi", voice="alloy").content
    finally:
        running.stop()
    text = (tmp_path / "capture.jsonl").read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert image[0].b64_json and image[0].b64_json[:200] not in text
    assert hashlib.sha256(wav).hexdigest() in text and hashlib.sha256(speech).hexdigest() in text
    uploads = [
        line["payload"] for line in lines if line["direction"] == "client_request" and "files" in str(line)
    ]
    assert uploads and uploads[0]["files"][0]["bytes"] == len(wav)
    assert "sk-up-oai" not in text and CLIENT_KEY not in text


# -------------------------------------------------------------------------------- Codex route


def test_the_codex_route_makes_images_with_the_plans_token_through_the_tool(
    account: FakeAccount, upstream: FakeUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "codex"
    home.mkdir()
    (home / "auth.json").write_text(json.dumps(account.auth_json()))
    config = {
        "store": f"sqlite:///{tmp_path}/state.db",
        "backends": {
            "sub": {"type": "codex", "base_url": account.codex_url},
            "oai": {"type": "openai", "base_url": upstream.url, "api_key": "sk-up-oai-1"},
        },
        "models": [{"name": "plan-image", "route": "sub/gpt-image-2"}],
        "keys": [{"key": CLIENT_KEY, "name": "all"}],
        "usage": {"flush_seconds": 0.1},
    }
    env = {"CODEX_HOME": str(home), REFRESH_URL_ENV: f"{account.issuer}/oauth/token"}
    running = start_gateway(config, tmp_path, env=env, name="codex-media")
    try:
        with sdk(running, CLIENT_KEY) as client:
            raw = client.images.with_raw_response.generate(
                model="plan-image", prompt="a fox", background="transparent", output_format="png", n=2
            )
            images = raw.parse()
            edited = client.images.edit(model="plan-image", image=("a.png", PNG, "image/png"), prompt="hat")
            with pytest.raises(openai.BadRequestError) as caught:
                client.audio.speech.create(model="sub/gpt-4o-mini-tts", input="hi", voice="alloy")
    finally:
        running.stop()
    # gpt-image-2 refuses transparency: the tool was asked for gpt-image-1.5, and the answer says so.
    assert [base64.b64decode(d.b64_json or "") for d in images.data or []] == [b"image by gpt-image-1.5"] * 2
    assert raw.headers["x-modelwire-model"] == "gpt-image-1.5"
    calls = account.responses()
    token = json.loads((home / "auth.json").read_text())["tokens"]["access_token"]
    assert [c.bearer for c in calls] == [token] * 3  # the plan's token, never an API key
    tool = calls[0].body["tools"][0]
    assert (tool["type"], tool["model"], tool["background"]) == (
        "image_generation",
        "gpt-image-1.5",
        "transparent",
    )
    assert calls[2].body["input"][0]["content"][1]["image_url"].startswith("data:image/png;base64,")
    assert edited.data
    assert caught.value.code == "unsupported_operation"
    assert upstream.requests == []  # nothing fell back to the API backend


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK's translations
def test_azure_audio_uses_deployment_paths_and_metrics_name_each_modality(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    assert client.images.generate(prompt="x").data
    speech = client.audio.speech.create(model="az-tts", input="hello", voice="alloy")
    assert speech.content and upstream.last.path == "/openai/deployments/my-tts/audio/speech"
    assert upstream.last.headers["api-key"] == "az-key-123"
    translated = client.audio.translations.create(
        file=("a.wav", b"RIFF" + bytes(8000), "audio/wav"), model="az-stt"
    )
    assert translated.text and upstream.last.path == "/openai/deployments/my-whisper/audio/translations"
    assert upstream.last.query["api-version"] == "2025-04-01-preview"
    status, payload = post(
        gateway, "/v1/videos", b'{"prompt": "json body", "seconds": "4"}', "application/json"
    )
    assert status == 200 and payload["model"] == "sora-2"
    with urllib.request.urlopen(gateway.url + "/metrics", timeout=10) as reply:
        metrics = reply.read().decode()
    counted = [line for line in metrics.splitlines() if line.startswith("modelwire_requests_total{")]
    for label in ("images", "audio", "videos"):
        assert any(f'surface="{label}"' in line for line in counted), label


def test_a_client_gone_mid_upload_leaves_no_traceback(
    gateway: RunningGateway, client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + bytes(200_000)
    port = int(gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {CLIENT_KEY}\r\n".encode()
            + f"Content-Type: multipart/form-data; boundary={boundary}\r\n".encode()
            + f"Content-Length: {len(head) + 5_000_000}\r\n\r\n".encode()
            + head
        )
        time.sleep(0.5)
    time.sleep(0.5)
    assert client.audio.transcriptions.create(
        file=("a.wav", b"RIFF" + bytes(100), "audio/wav"), model="whisper-1"
    ).text
    assert "Traceback" not in gateway.log()


def test_a_client_that_leaves_a_download_stops_it_upstream(
    gateway: RunningGateway, upstream: FakeUpstream
) -> None:
    upstream.script(Body(size=2_000_000, chunk=20_000, chunk_delay=0.05))  # 5 s in all
    connection = http.client.HTTPConnection("127.0.0.1", int(gateway.url.rsplit(":", 1)[1]), timeout=30)
    body = json.dumps({"model": "tts-1", "input": "hello", "voice": "alloy", "response_format": "pcm"})
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    started = time.monotonic()
    try:
        connection.request("POST", "/v1/audio/speech", body=body, headers=headers)
        response = connection.getresponse()
        assert response.read(1000)
        request_id = response.getheader("x-request-id") or ""
    finally:
        connection.close()
    [row] = usage_rows(gateway, request_id)
    assert (row["status"], row["error"]) == (499, "client_closed")
    assert time.monotonic() - started < 4  # recorded long before the upstream would have finished
