"""Images and audio: ``/v1/images/generations``, ``/v1/images/edits``, ``/v1/audio/speech``,
``/v1/audio/transcriptions`` and ``/v1/audio/translations``.

Each request goes as the embeddings path does: admitted (key, model, limits), its attempts run by
:class:`~.upstream.Failover` over the route, the answer relayed (:mod:`.relay`), one usage row.
JSON bodies are checked here and forwarded with the route's model; multipart uploads go through
:class:`~.uploads.Upload`, streamed and never held whole. What each endpoint checks beyond
OpenAI's schema is this gateway's own ceiling (at most :data:`MAX_IMAGES` images, :data:`MAX_EDIT_IMAGES`
reference images), always the stricter of ours and the spec's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from ..dialects.check import fail
from ..errors import ModelwireError
from ..media_types import MediaUsage
from ..providers.catalog import Catalog
from ..providers.images import image_model
from ..providers.transport import Body, Transport
from . import relay
from .accounting import Accounting
from .admission import Admission
from .call import Call
from .codex_images import CodexImages
from .config import Config
from .http import Receive, Scope, Send
from .media_usage import measure, token_usage
from .relay import Endpoints, Operation, Sent, media_url
from .routing import Route, Target
from .uploads import Upload
from .upstream import Backend, Failover, Outcome

DEFAULT_MODELS: dict[Operation, str] = {
    "image_generation": "gpt-image-2",
    "image_edit": "gpt-image-2",
    "speech": "gpt-4o-mini-tts",
    "transcription": "gpt-4o-transcribe",
    "translation": "whisper-1",
    "video": "sora-2",
}
MAX_IMAGES = 4  # n: ours (the spec allows 10)
MAX_EDIT_IMAGES = 5  # reference images: ours (the spec allows 16)
VOICES = frozenset(
    {
        "alloy",
        "ash",
        "ballad",
        "coral",
        "echo",
        "fable",
        "onyx",
        "nova",
        "sage",
        "shimmer",
        "verse",
        "marin",
        "cedar",
    }
)
CHECKS_VOICES = frozenset({"openai", "azure"})  # a compatible TTS server has voices of its own
INSTRUCTED_TTS = "gpt-4o-mini-tts"  # the speech models that take instructions
STANDARD_SIZES = frozenset({"auto", "1024x1024", "1536x1024", "1024x1536"})
FREE_SIZES = ("gpt-image-2",)  # models that take any WIDTHxHEIGHT within the limits below
MAX_EDGE, MAX_PIXELS = 3840, 3840 * 2160
_SIZE = re.compile(r"(\d{2,5})x(\d{2,5})")
TRANSCRIPT_FORMATS = frozenset({"json", "text", "srt", "vtt", "verbose_json", "diarized_json"})
ENUMS: dict[str, frozenset[str]] = {
    "output_format": frozenset({"png", "jpeg", "webp"}),
    "background": frozenset({"transparent", "opaque", "auto"}),
    "quality": frozenset({"low", "medium", "high", "auto", "standard", "hd"}),
    "moderation": frozenset({"low", "auto"}),
    "input_fidelity": frozenset({"low", "high"}),
    "stream_format": frozenset({"sse", "audio"}),
}
# Form fields read as numbers or booleans (everything else is a string, or an array for ``name[]``).
FORM_INTS = frozenset({"n", "partial_images", "output_compression"})
FORM_FLOATS = frozenset({"temperature"})
FORM_BOOLS = frozenset({"stream"})


@dataclass(eq=False)
class Media:
    config: Config
    catalog: Catalog
    failover: Failover
    transport: Transport
    admission: Admission
    accounting: Accounting
    endpoints: Endpoints
    codex: CodexImages

    # ------------------------------------------------------------------------------ images

    async def images_generate(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        await self._json_request(call, scope, receive, send, "image_generation", check_image_options)

    async def images_edit(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        await self._form_request(call, scope, receive, send, "image_edit", self.config.media.images_max_bytes)

    # ------------------------------------------------------------------------------- audio

    async def speech(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        await self._json_request(call, scope, receive, send, "speech", check_speech)

    async def transcription(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        await self._form_request(
            call, scope, receive, send, "transcription", self.config.media.audio_max_bytes
        )

    async def translation(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        await self._form_request(call, scope, receive, send, "translation", self.config.media.audio_max_bytes)

    # ------------------------------------------------------------------------------ requests

    async def _json_request(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        op: Operation,
        check: Callable[[dict[str, Any]], None],
    ) -> None:
        try:
            route = await self.admission.admit(call, scope, receive, default_model=DEFAULT_MODELS[op])
            check(call.body)
            outcome = await self.failover.run(
                route.order(), lambda t, b, i: self._post_json(call, op, t, b, i)
            )
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)
            return
        await self._answer(call, send, op, outcome, receive)

    async def _form_request(
        self, call: Call, scope: Scope, receive: Receive, send: Send, op: Operation, limit: int
    ) -> None:
        upload: Upload | None = None
        try:
            try:
                route, upload = await self.admit_form(call, scope, receive, op, limit)
                form = upload
                outcome = await self.failover.run(
                    route.order(), lambda t, b, i: self.attempt(call, op, form, t, b, i)
                )
            except ModelwireError as err:
                await self.accounting.failed(call, send, err)
                return
            await self._answer(call, send, op, outcome, receive if upload.done else None)
        finally:
            if upload is not None:
                self.done_with(call, scope, upload)

    async def admit_form(
        self, call: Call, scope: Scope, receive: Receive, op: Operation, limit: int
    ) -> tuple[Route, Upload]:
        """Admission for a multipart request: its key, then its small fields (see :mod:`.uploads`),
        then its model's route; the upload left to stream upstream."""
        call.headers = headers = await self.admission.authenticate(call, scope)
        upload = Upload(
            receive,
            headers.get(b"content-type"),
            min(limit, self.config.server.max_body_bytes),
            headers.get(b"content-length"),
        )
        try:
            await upload.read_head()
            self.accounting.bind(call)
            call.body = form_body(upload.fields)
            call.body.setdefault("model", DEFAULT_MODELS[op])
            route = await self.admission.route(call, call.body)
            check_form(op, call.body, upload)
        except BaseException:
            upload.close()
            raise
        return route, upload

    def done_with(self, call: Call, scope: Scope, upload: Upload) -> None:
        """An upload's end: captured (its fields, its files' sizes and digests, never their bytes)
        now that the digests are known, and its spool removed."""
        files = [f.summary() for f in upload.files]
        if self.accounting.capture is not None:
            payload = {**call.body, "files": files, "complete": upload.done}
            self.accounting.record("client_request", call, payload, url=scope["path"], client=call.client)
        upload.close()

    async def _post_json(
        self, call: Call, op: Operation, target: Target, backend: Backend, index: int
    ) -> Sent:
        return await self.attempt(call, op, None, target, backend, index)

    async def attempt(
        self, call: Call, op: Operation, upload: Upload | None, target: Target, backend: Backend, index: int
    ) -> Sent:
        """One attempt on one target: the client's JSON body, or its upload re-encoded, with the
        target's model."""
        model = upstream_model(op, target, backend, call.body)
        if backend.host.profile.signs_in:  # the Codex route: images through its image tool
            return await self.codex.generate(call, op, model, backend, index, upload)
        await self._reachable(backend, op)
        url = media_url(backend, op, model)
        body: Body
        if upload is None:
            check_for_backend(op, model, backend, call.body)
            body, content_type = orjson.dumps({**call.body, "model": model}), "application/json"
        else:
            body = upload.body(model)
            content_type = call.headers.get(b"content-type", b"").decode("latin-1")
        read_for = relay.read_timeout(backend, op)
        try:
            reply = await relay.send(
                self.transport, call, backend, index, "POST", url, body, content_type, read_for
            )
        except ModelwireError:
            # The client's upload failed, not the upstream: say the client's error.
            if upload is not None and upload.error is not None:
                raise upload.error from None
            raise
        return Sent(reply, model, key_index=index)

    async def _reachable(self, backend: Backend, op: Operation) -> None:
        relay.serves(backend, op)
        await self.endpoints.check(backend, op)

    # ---------------------------------------------------------------------------- answers

    async def _answer(
        self, call: Call, send: Send, op: Operation, outcome: Outcome[Sent], receive: Receive | None
    ) -> None:
        sent = outcome.value
        if sent.model != outcome.target.model:  # rewritten (a transparent background): say so
            outcome.target = dataclasses.replace(outcome.target, model=sent.model)
        call.served_by(outcome.target, outcome.backend)
        served = self.accounting.served_headers(call, outcome)
        if sent.doc is not None:
            payload = orjson.dumps(sent.doc)
            await self.accounting.respond(call, send, 200, payload, served)
            relayed = relay.Relayed(doc=sent.doc, size=len(payload))
        else:
            assert sent.reply is not None
            relayed = await relay.relay(self.accounting, call, send, sent.reply, served, receive)
        use = measure(op, call.body, relayed)
        self.account(call, use)

    def account(self, call: Call, use: MediaUsage) -> None:
        """The request's usage row, priced by the catalog's media prices."""
        status = call.status if call.error else 200
        cost = self.catalog.media_cost(call.upstream_model or call.model, use)
        self.accounting.account(call, token_usage(use), status, cost)


# ------------------------------------------------------------------------------------- checks


def upstream_model(op: Operation, target: Target, backend: Backend, body: dict[str, Any]) -> str:
    """The model to ask for: the route's, unless it refuses what the request needs (a transparent
    background) and this host names models as OpenAI does."""
    if op in ("image_generation", "image_edit"):
        return image_model(target.model, body.get("background"), backend.host)
    return target.model


def check_image_options(body: dict[str, Any]) -> None:
    _typed(body, {"prompt": str, "n": int, "size": str, "partial_images": int, "output_compression": int})
    n = body.get("n")
    if n is not None and not 1 <= n <= MAX_IMAGES:
        fail("n", f"must be between 1 and {MAX_IMAGES} on this gateway")
    partial = body.get("partial_images")
    if partial is not None and not 0 <= partial <= 3:
        fail("partial_images", "must be between 0 and 3")
    for name in ("output_format", "background", "quality", "moderation", "input_fidelity"):
        _one_of(body, name)
    if body.get("background") == "transparent" and body.get("output_format") == "jpeg":
        fail("background", "a transparent background needs output_format png or webp")
    size = body.get("size")
    if size is not None:
        check_size(str(body["model"]), size)


def check_size(model: str, size: str) -> None:
    """A standard size, or for models that take any size, WIDTHxHEIGHT within their limits
    (edges divisible by 16, at most 3840 px and 3840x2160 in all, aspect within 3:1)."""
    if size in STANDARD_SIZES or not model.startswith("gpt-image"):
        return
    m = _SIZE.fullmatch(size)
    if not model.startswith(FREE_SIZES) or m is None:
        fail("size", f"{size!r} is not a size {model} takes (auto, 1024x1024, 1536x1024 or 1024x1536)")
    width, height = int(m.group(1)), int(m.group(2))
    if width % 16 or height % 16:
        fail("size", "width and height must both be divisible by 16")
    if max(width, height) > MAX_EDGE or width * height > MAX_PIXELS:
        fail("size", f"at most {MAX_EDGE} px on an edge and 3840x2160 in all")
    if max(width, height) > 3 * min(width, height):
        fail("size", "the aspect ratio must be between 1:3 and 3:1")


def check_speech(body: dict[str, Any]) -> None:
    _typed(body, {"input": str, "instructions": str, "speed": (int, float), "response_format": str})
    if body.get("input") is None:
        fail("input", "is required")
    if len(body["input"]) > 4096:
        fail("input", "is longer than 4096 characters")
    voice = body.get("voice")
    if voice is None:
        fail("voice", "is required")
    if not isinstance(voice, str) and not (isinstance(voice, dict) and isinstance(voice.get("id"), str)):
        fail("voice", "expected a voice name or an object with an id")
    speed = body.get("speed")
    if speed is not None and not 0.25 <= speed <= 4.0:
        fail("speed", "must be between 0.25 and 4.0")
    if body.get("response_format") not in (None, "mp3", "opus", "aac", "flac", "wav", "pcm"):
        fail("response_format", "must be one of mp3, opus, aac, flac, wav, pcm")
    _one_of(body, "stream_format")


def check_for_backend(op: Operation, model: str, backend: Backend, body: dict[str, Any]) -> None:
    """What only the upstream model and host can say: which speech models take instructions or
    SSE, and OpenAI's own voice names (a compatible server has its own; an Azure deployment's name
    says nothing of its model)."""
    if op != "speech" or backend.host.deployment_paths:
        return
    instructed = model.startswith(INSTRUCTED_TTS)
    if body.get("instructions") is not None and not instructed:
        fail("instructions", f"only {INSTRUCTED_TTS} takes instructions, not {model}")
    if body.get("stream_format") == "sse" and model.startswith("tts-1"):
        fail("stream_format", f"{model} cannot stream SSE; use stream_format 'audio'")
    voice = body.get("voice")
    if backend.host.kind in CHECKS_VOICES and isinstance(voice, str) and voice not in VOICES:
        fail("voice", f"unknown voice {voice!r}; one of {', '.join(sorted(VOICES))}")


def check_form(op: Operation, body: dict[str, Any], upload: Upload) -> None:
    """A form's fields and files, each problem a 400 naming its field."""
    names = [f.name for f in upload.files]
    if op == "image_edit":
        if body.get("prompt") is None:
            fail("prompt", "is required")
        images = sum(1 for n in names if n in ("image", "image[]"))
        if images == 0 and upload.done:
            fail("image", "is required (one or more image files)")
        if images > MAX_EDIT_IMAGES:
            fail("image", f"at most {MAX_EDIT_IMAGES} reference images on this gateway")
        if names.count("mask") > 1:
            fail("mask", "give one mask at most")
        check_image_options(body)
    elif op in ("transcription", "translation"):
        if names and names[0] != "file":
            fail(names[0], "is not a file field of this endpoint (send the audio as 'file')")
        if not names and upload.done:
            fail("file", "is required (the audio file)")
        fmt = body.get("response_format")
        if fmt is not None and fmt not in TRANSCRIPT_FORMATS:
            fail("response_format", f"must be one of {', '.join(sorted(TRANSCRIPT_FORMATS))}")
        grains = body.get("timestamp_granularities[]") or body.get("timestamp_granularities")
        if grains and fmt != "verbose_json":
            fail("timestamp_granularities", "needs response_format verbose_json")


def form_body(fields: dict[str, str]) -> dict[str, Any]:
    """A form's text fields typed as JSON would carry them, a wrong one a 400 naming it."""
    body: dict[str, Any] = {}
    for name, text in fields.items():
        if name in FORM_INTS:
            if not text.strip().lstrip("-").isdigit():
                fail(name, f"expected an integer, got {text[:40]!r}")
            body[name] = int(text)
        elif name in FORM_FLOATS:
            try:
                body[name] = float(text)
            except ValueError:
                fail(name, f"expected a number, got {text[:40]!r}")
        elif name in FORM_BOOLS:
            if text not in ("true", "false"):
                fail(name, f"expected true or false, got {text[:40]!r}")
            body[name] = text == "true"
        else:
            body[name] = text
    return body


def _typed(body: dict[str, Any], kinds: dict[str, type | tuple[type, ...]]) -> None:
    for name, kind in kinds.items():
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            fail(name, f"has the wrong type ({type(value).__name__})")


def _one_of(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is not None and value not in ENUMS[name]:
        fail(name, f"must be one of {', '.join(sorted(ENUMS[name]))}")
