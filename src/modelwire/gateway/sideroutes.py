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

from ..errors import InvalidRequestError, ModelwireError, NotFoundError
from ..providers.catalog import Catalog
from ..providers.transport import Transport
from ..providers.transport import call as upstream_call
from ..tokens import count_request_tokens
from ..types import Usage
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
        try:
            route = await self.admission.admit(call, scope, receive)
            outcome = await self.failover.run(route.order(), lambda t, b, i: self._embed(call, t, b, i))
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)
            return
        payload, doc = outcome.value
        tokens = (doc.get("usage") or {}).get("prompt_tokens") or 0
        await self.accounting.served(call, send, outcome, payload, Usage(input_tokens=int(tokens)))

    async def _embed(
        self, call: Call, target: Target, backend: Backend, index: int
    ) -> tuple[bytes, dict[str, Any]]:
        if not backend.profile.embeddings:
            raise InvalidRequestError(f"backend {backend.name!r} serves no embeddings")
        body = orjson.dumps({**call.body, "model": target.model})
        url = backend.host.url("embeddings", target.model)
        reply = await upstream_call(
            self.transport, "POST", url, backend.headers(index), body, read_timeout=backend.config.timeout
        )
        payload = await reply.read()
        return payload, passthrough.json_object(payload)

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
