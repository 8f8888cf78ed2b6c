"""The routes beside generation: embeddings, model listings in each dialect's shape, and token
counts (by the upstream's own counter when the client speaks its wire, else offline). Media
endpoints belong here too. Each handler raises :class:`ModelwireError` for what goes wrong; the
gateway says it in the call's dialect."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..dialects import gemini, openai_embeddings
from ..errors import InvalidRequestError, ModelwireError, NotFoundError, ProtocolError
from ..providers.catalog import Catalog
from ..providers.hosts import Endpoint
from ..providers.transport import Transport
from ..providers.transport import call as upstream_call
from ..tokens import count_request_tokens, count_text
from ..types import EmbeddingRequest, Embeddings, Usage
from ..wires import GEMINI_EMBEDDINGS, OPENAI_EMBEDDINGS, EmbeddingWire
from . import passthrough
from .accounting import Accounting
from .admission import Admission
from .auth import ClientKey
from .call import Call
from .config import Config
from .forwarding import Forwarder
from .http import Receive, Scope, Send
from .listing import anthropic_model, gemini_model, google_client, openai_model, served_models
from .routing import Router, Target
from .surfaces import ANTHROPIC, GEMINI
from .upstream import Backend, Failover

log = logging.getLogger("modelwire.gateway")
MODELS_TTL = 300.0  # seconds the upstream's model list is remembered


@dataclass(eq=False)
class SideRoutes:
    config: Config
    router: Router
    catalog: Catalog
    backends: dict[str, Backend]
    failover: Failover
    transport: Transport
    admission: Admission
    accounting: Accounting
    forwarder: Forwarder
    _models_cache: tuple[float, list[str]] = field(default_factory=lambda: (0.0, []), init=False)

    # -------------------------------------------------------------------------------- embeddings

    async def embeddings(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/embeddings``."""
        await self._embeddings(call, scope, receive, send, OPENAI_CLIENT, None)

    async def gemini_embeddings(
        self, call: Call, scope: Scope, receive: Receive, send: Send, model: str, batch: bool
    ) -> None:
        """``:embedContent`` and ``:batchEmbedContents``."""
        client = GEMINI_BATCH_CLIENT if batch else GEMINI_CLIENT
        await self._embeddings(call, scope, receive, send, client, (model, False))

    async def _embeddings(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        client: EmbeddingClient,
        from_path: tuple[str, bool] | None,
    ) -> None:
        try:
            route = await self.admission.admit(call, scope, receive, from_path)
            outcome = await self.failover.run(
                route.order(), lambda t, b, i: self._embed(call, client, t, b, i)
            )
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)
            return
        payload, tokens = outcome.value
        await self.accounting.served(call, send, outcome, payload, Usage(input_tokens=tokens))

    async def _embed(
        self, call: Call, client: EmbeddingClient, target: Target, backend: Backend, index: int
    ) -> tuple[bytes, int]:
        """One upstream's vectors: the client's own body where the upstream speaks its dialect,
        else translated both ways. The answer's bytes and its input tokens."""
        wire = backend.wire.embeddings
        if wire is None or not backend.profile.embeddings:
            raise InvalidRequestError(f"backend {backend.name!r} serves no embeddings")
        body = client.own_body(call.body)
        if wire is client.wire:
            payload = await self._post(
                backend, index, client.endpoint, target.model, client.fit(body, target.model)
            )
            tokens = _prompt_tokens(passthrough.json_object(payload))
            if tokens is None:
                tokens = await self._count_inputs(client, body, call.model)
            return payload, tokens
        req = await asyncio.to_thread(client.decode, body, call.model)  # token arrays load a tokenizer
        req.model = target.model
        payload = await self._post(backend, index, wire.endpoint, target.model, wire.encode(req))
        answer = wire.decode(passthrough.json_object(payload))
        if len(answer.vectors) != len(req.inputs):
            raise ProtocolError(
                f"the upstream answered {len(answer.vectors)} embeddings for {len(req.inputs)} inputs"
            )
        if answer.input_tokens is None:
            answer.input_tokens = await asyncio.to_thread(_count_texts, req.inputs, call.model)
        return orjson.dumps(client.render(answer, body, call.model)), answer.input_tokens

    async def _post(
        self, backend: Backend, index: int, endpoint: Endpoint, model: str, body: dict[str, Any]
    ) -> bytes:
        reply = await upstream_call(
            self.transport,
            "POST",
            backend.host.url(endpoint, model),
            backend.headers(index),
            orjson.dumps(body),
            read_timeout=backend.config.timeout,
        )
        return await reply.read()

    @staticmethod
    async def _count_inputs(client: EmbeddingClient, body: dict[str, Any], model: str) -> int:
        """Input tokens an upstream did not count (Gemini's API), estimated offline; parts that
        are not text (a multimodal embedding) count nothing."""

        def count() -> int:
            try:
                inputs = client.decode(body, model).inputs
            except ModelwireError:
                return 0
            return _count_texts(inputs, model)

        return await asyncio.to_thread(count)

    # ---------------------------------------------------------------------------------- listings

    async def list_models(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        if google_client(scope):  # google-genai lists models here too
            call.surface = GEMINI
            return await self.gemini_models(call, scope, receive, send)
        headers = await self.admission.authenticate(call, scope)
        anthropic = b"anthropic-version" in headers
        if anthropic:
            call.surface = ANTHROPIC
        ids = await self._allowed_models(call.key)
        if anthropic:
            doc: dict[str, Any] = {
                "data": [anthropic_model(m) for m in ids],
                "has_more": False,
                "first_id": ids[0] if ids else None,
                "last_id": ids[-1] if ids else None,
            }
        else:
            doc = {"object": "list", "data": [openai_model(m) for m in ids]}
        await self.accounting.answer(call, send, doc)

    async def get_model(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        if google_client(scope):
            call.surface = GEMINI
            return await self.gemini_models(call, scope, receive, send)
        model = scope["path"].removeprefix("/v1").removeprefix("/models/")
        await self.admission.authenticate(call, scope)
        if model not in await self._allowed_models(call.key):
            raise NotFoundError(
                f"The model {model!r} does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        await self.accounting.answer(call, send, openai_model(model))

    async def gemini_models(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1beta/models`` and ``GET /v1beta/models/{model}`` in Gemini's shape."""
        wanted = scope["path"].removeprefix("/v1beta").removeprefix("/v1").removeprefix("/models").strip("/")
        await self.admission.authenticate(call, scope)
        ids = await self._allowed_models(call.key)
        if not wanted:
            doc: dict[str, Any] = {"models": [self._gemini_model(m) for m in ids]}
        elif wanted.removeprefix("models/") in ids:
            doc = self._gemini_model(wanted.removeprefix("models/"))
        else:
            raise NotFoundError(f"models/{wanted} is not found", code="model_not_found")
        await self.accounting.answer(call, send, doc)

    def _gemini_model(self, model: str) -> dict[str, Any]:
        return gemini_model(model, self.catalog.profile(self.router.resolve(model).targets[0].model))

    async def _allowed_models(self, key: ClientKey | None) -> list[str]:
        return [m for m in await self._model_ids() if key is None or key.allows(m)]

    async def _model_ids(self) -> list[str]:
        """The served models, the upstream's half remembered for five minutes."""
        fetched_at, ids = self._models_cache
        if time.monotonic() - fetched_at > MODELS_TTL:
            default = self.backends.get(self.config.default_backend or "")
            served = await served_models(self.router, default)
            if served.error is not None and default is not None:
                log.warning("could not list the models of backend %s: %s", default.name, served.error)
            ids = served.ids
            self._models_cache = (time.monotonic(), ids)
        return ids

    # ------------------------------------------------------------------------------------ counts

    async def responses_tokens(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """The Responses API's token counter."""
        await self._count(
            call, scope, receive, send, lambda sent: sent, "input_tokens", "response.input_tokens"
        )

    async def anthropic_tokens(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """Anthropic's token counter (its bodies carry no ``max_tokens``, which decoding wants)."""
        await self._count(call, scope, receive, send, lambda sent: {"max_tokens": 1, **sent}, "input_tokens")

    async def gemini_tokens(self, call: Call, scope: Scope, receive: Receive, send: Send, model: str) -> None:
        """Gemini's token counter: ``{contents}`` or ``{generateContentRequest}``."""

        def body(sent: dict[str, Any]) -> dict[str, Any]:
            inner = sent.get("generateContentRequest")
            return {**inner, "model": model} if isinstance(inner, dict) else sent

        await self._count(call, scope, receive, send, body, "totalTokens", from_path=(model, False))

    async def _count(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: Callable[[dict[str, Any]], dict[str, Any]],
        answer: str,
        answer_object: str | None = None,
        from_path: tuple[str, bool] | None = None,
    ) -> None:
        """Count a request's input tokens: by the upstream when the client speaks its wire and it
        has a counter, else offline with the upstream model's own tokenizer."""
        route = await self.admission.admit(call, scope, receive, from_path)
        target = route.targets[0]
        backend = self.backends[target.backend]
        if backend.wire.count_endpoint and self._forwards(call, backend):
            outcome = await self.failover.run([target], lambda t, b, i: self.forwarder.count(call, t, b, i))
            call.served_by(outcome.target, outcome.backend, outcome.hops)
            headers = self.accounting.served_headers(call, outcome)
            await self.accounting.respond(call, send, 200, outcome.value, headers)
            return
        req = call.surface.decode_request(body(call.body))
        req.model = target.model
        count = await asyncio.to_thread(count_request_tokens, req)
        doc: dict[str, Any] = (
            {answer: count} if answer_object is None else {"object": answer_object, answer: count}
        )
        await self.accounting.answer(call, send, doc)

    def _forwards(self, call: Call, backend: Backend) -> bool:
        return (
            backend.passthrough and backend.wire.name == call.surface.dialect and backend.missing_key is None
        )


# ----------------------------------------------------------------------------- embedding clients


@dataclass(frozen=True, slots=True)
class EmbeddingClient:
    """An embeddings surface: the upstream embeddings that speak its dialect (its body then goes
    as it came, to ``endpoint``, with the route's model), and how it reads and writes otherwise."""

    wire: EmbeddingWire
    endpoint: Endpoint
    own_body: Callable[[dict[str, Any]], dict[str, Any]]  # its body, without what the gateway added
    fit: Callable[[dict[str, Any], str], dict[str, Any]]  # its body for the route's model
    decode: Callable[[dict[str, Any], str], EmbeddingRequest]
    render: Callable[[Embeddings, dict[str, Any], str], dict[str, Any]]


def _without_path_fields(body: dict[str, Any]) -> dict[str, Any]:
    """A Gemini body as the client sent it: the gateway put the URL's model and stream flag in."""
    return {k: v for k, v in body.items() if k not in ("model", "stream")}


OPENAI_CLIENT = EmbeddingClient(
    wire=OPENAI_EMBEDDINGS,
    endpoint="embeddings",
    own_body=lambda body: body,
    fit=lambda body, model: {**body, "model": model},
    decode=lambda body, model: openai_embeddings.decode_request(body),
    render=lambda answer, body, model: openai_embeddings.render_response(
        answer, model, as_base64=body.get("encoding_format") == "base64"
    ),
)
GEMINI_CLIENT = EmbeddingClient(
    wire=GEMINI_EMBEDDINGS,
    endpoint="embed_content",
    own_body=_without_path_fields,
    fit=lambda body, model: body,  # the model is in the URL
    decode=lambda body, model: gemini.decode_embed_request(body, model, batch=False),
    render=lambda answer, body, model: gemini.render_embed_response(answer, batch=False),
)
GEMINI_BATCH_CLIENT = EmbeddingClient(
    wire=GEMINI_EMBEDDINGS,
    endpoint="batch_embed",
    own_body=_without_path_fields,
    fit=gemini.fit_embed_request,
    decode=lambda body, model: gemini.decode_embed_request(body, model, batch=True),
    render=lambda answer, body, model: gemini.render_embed_response(answer, batch=True),
)


def _prompt_tokens(doc: dict[str, Any]) -> int | None:
    usage = doc.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if isinstance(tokens, int) else None


def _count_texts(texts: list[str], model: str) -> int:
    return sum(count_text(text, model) for text in texts)
