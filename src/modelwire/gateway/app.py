"""The gateway as a raw ASGI application.

No framework sits on the proxy path (one cost 36% of throughput when measured): requests are
dispatched by a dict lookup on ``(method, path)``. Each generation request is authenticated,
parsed once, routed, and then either forwarded (client dialect equals upstream dialect: the body
changes only where the route says, stream bytes pass straight through a usage tap) or translated
through the neutral model. Errors always reach the client in its own dialect's shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import itertools
import logging
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..dialects.stream import events_from_response
from ..errors import (
    AuthenticationError,
    ContextLengthError,
    InvalidRequestError,
    ModelwireError,
    NotFoundError,
    PermissionDeniedError,
    PreviousResponseNotFound,
    ProtocolError,
    RateLimitError,
    ServiceUnavailableError,
)
from ..observe import Tap, redact
from ..providers.catalog import Catalog, unsupported_settings
from ..providers.transport import AiohttpTransport, Reply
from ..providers.transport import call as upstream_call
from ..tokens import count_request_tokens
from ..types import Finish, Response, Start, StreamError, StreamEvent, Usage
from . import http, passthrough
from .auth import SYNC_SECONDS, ClientKey, KeyBook, extract_key
from .call import Call, InFlight
from .capture import Capture
from .chains import Chains, input_items, stored
from .clients import ClientAddress, is_loopback
from .config import Config
from .fetch import inline_media
from .health import Dependencies
from .http import Headers, Receive, Scope, Send
from .limits import Limiter, MemoryCounters
from .listing import anthropic_model, gemini_model, google_client, openai_model, served_models
from .lockout import Lockout
from .metrics import Metrics, forget_dead_workers
from .requestlog import RequestLog
from .routing import Route, Router, Target
from .store import (
    KEYS_COUNTER,
    RESPONSES_COUNTER,
    Store,
    StoredResponse,
    UsageRecord,
    UsageWriter,
    describe_error,
)
from .surfaces import ANTHROPIC, CHAT, EMBEDDINGS, GEMINI, GEMINI_ARRAY, RESPONSES, Surface
from .upstream import Backend, Failover, Outcome

log = logging.getLogger("modelwire.gateway")
# (request id, client key name) of the request being served, for the wire capture of drivers.
_CURRENT: contextvars.ContextVar[tuple[str, str | None]] = contextvars.ContextVar(
    "modelwire_call", default=("", None)
)

MISS_CHECK_SECONDS = 0.05
"""An unknown key makes the gateway read the store's key counter at once, at most this often: a
key just created works on its first request, and a flood of bad keys costs at most 20 reads a second."""
Handler = Callable[[Call, Scope, Receive, Send], Awaitable[None]]
Endpoint = tuple[Handler, Surface]


@dataclass(slots=True)
class Passthrough:
    """A forwarded upstream answer: a finished body, or an open stream."""

    reply: Reply
    payload: bytes = b""
    doc: dict[str, Any] | None = None


@dataclass(slots=True)
class Translated:
    dropped: list[str]
    response: Response | None = None
    opening: list[StreamEvent] = field(default_factory=list)  # events read before committing
    events: AsyncIterator[StreamEvent] | None = None


class Gateway:
    def __init__(self, config: Config, *, hook_signals: bool = False) -> None:
        self.config = config
        self.router = Router(config)
        self.catalog = Catalog()
        self.transport = AiohttpTransport()
        self.capture = (
            Capture(config.capture.path, max_bytes=config.capture.max_bytes, backups=config.capture.backups)
            if config.capture
            else None
        )
        self.backends = {
            n: Backend(n, b, self.catalog, self.transport, tap=self._tap(n) if self.capture else None)
            for n, b in config.backends.items()
        }
        self.metrics = Metrics()
        self.failover = Failover(
            self.backends,
            config.failover,
            on_retry=self.metrics.retry,
            on_failover=self.metrics.failover,
            on_cooldown=self.metrics.cooldown,
        )
        self.lockout = Lockout.from_config(config.lockout)
        self.client_address = ClientAddress(config.server.trusted_proxies)
        self.request_log = RequestLog(config.server.log_format)
        self.dependencies = Dependencies(self._dependency_changed)
        self.inflight = InFlight()
        self.store: Store | None = None
        self.usage: UsageWriter | None = None
        self.keys = KeyBook(config.keys, None, loopback=is_loopback(config.server.host))
        self.limiter = Limiter(MemoryCounters())
        self.chains = Chains(None)
        self._hook_signals = hook_signals
        self._checking: asyncio.Future[None] | None = None  # a read of the store's counters
        self._checked_at = 0.0
        self._background: set[asyncio.Task[Any]] = set()
        self._budget_seeded: set[str] = set()
        self._models_cache: tuple[float, list[str]] = (0.0, [])
        self._plain: dict[tuple[str, str], Callable[[Scope, Receive, Send], Awaitable[None]]] = {
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/"): self._healthz,
            ("HEAD", "/"): self._healthz,
        }
        self._routes: dict[tuple[str, str], Endpoint] = {}
        for prefix in ("/v1", ""):
            self._routes[("POST", prefix + "/chat/completions")] = (self._generate, CHAT)
            self._routes[("POST", prefix + "/responses")] = (self._generate, RESPONSES)
            self._routes[("POST", prefix + "/embeddings")] = (self._embeddings, EMBEDDINGS)
            self._routes[("GET", prefix + "/models")] = (self._list_models, CHAT)
        self._routes[("POST", "/v1/messages")] = (self._generate, ANTHROPIC)
        self._routes[("POST", "/v1/responses/input_tokens")] = (self._responses_tokens, RESPONSES)
        self._routes[("POST", "/v1/messages/count_tokens")] = (self._count_tokens, ANTHROPIC)

    def _tap(self, backend: str) -> Tap:
        """Wire capture of what a translating driver sends and receives for ``backend``."""
        directions = {
            "request": "upstream_request",
            "response": "upstream_response",
            "error": "upstream_response",
            "stream": "upstream_chunk",
        }

        def tap(direction: str, url: str, headers: Mapping[str, str], body: bytes | str) -> None:
            request_id, key_name = _CURRENT.get()
            assert self.capture is not None
            self.capture.record(
                directions.get(direction, direction),
                request_id=request_id,
                payload=body,
                backend=backend,
                key_name=key_name,
                headers=headers,
                url=url or None,
            )

        return tap

    def _record(self, direction: str, call: Call, payload: bytes | dict[str, Any], **kw: Any) -> None:
        if self.capture is not None:
            kw.setdefault("backend", call.backend)
            key_name = call.key.name if call.key else None
            self.capture.record(
                direction, request_id=call.request_id, payload=payload, key_name=key_name, **kw
            )

    # --------------------------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        self.store = await asyncio.to_thread(Store, self.config.store)
        self.keys = KeyBook(self.config.keys, self.store, loopback=self.keys.loopback)
        await asyncio.to_thread(self.keys.sync)
        self.dependencies.watch("store")
        self.usage = UsageWriter(
            self.store, interval=self.config.usage.flush_seconds, max_batch=self.config.usage.batch
        )
        await self.usage.start()
        # A follow-up may reach another process when the store is shared: then a stored response is
        # committed before its client has it. One process on a SQLite file answers from memory.
        shared = self.store.dialect != "sqlite" or self.config.server.workers > 1
        self.chains = Chains(self.store, shared=shared)
        if self.config.redis:
            self.dependencies.watch("redis")
        self.limiter = Limiter.create(
            self.config.redis,
            on_shared_error=self.config.limits.on_shared_error,
            on_change=lambda up: self._shared_state("redis", up),
        )
        await self.limiter.start()
        self._spawn(self._watch_store())
        forget_dead_workers()
        if self._hook_signals:
            self._hook_stop_signals()
        # Everything alive now lives as long as the process; keep the cyclic collector from walking
        # it again and again (full collections over it showed up as 50 ms stalls at p99).
        gc.collect()
        gc.freeze()

    async def shutdown(self) -> None:
        if self._background:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
        await self.chains.drain()
        if self.usage is not None:
            await self.usage.stop()
        await self.limiter.aclose()
        await self.transport.aclose()
        if self.capture is not None:
            self.capture.close()
        if self.store is not None:
            self.store.close()
        self.request_log.flush()

    def begin_shutdown(self) -> None:
        """A stop signal arrived: in-flight requests get the grace period, then are cut cleanly."""
        self.inflight.cut_after(self.config.server.grace_seconds)

    def _hook_stop_signals(self) -> None:
        """Learn of SIGTERM/SIGINT alongside the server (which stops accepting and waits): the server
        only waits, and cancelling what is left would end requests without an answer or a record."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(sig)

            def handler(number: int, frame: Any, previous: Any = previous) -> None:
                loop.call_soon_threadsafe(self.begin_shutdown)
                if callable(previous):
                    previous(number, frame)

            signal.signal(sig, handler)

    async def _watch_store(self) -> None:
        """Keep the key table and the remembered responses in step with the store, and notice when
        the store goes or comes back."""
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            await self._check_store()

    async def _check_store(self) -> None:
        """Read the store's change counters: reload the key table, or forget remembered responses,
        when one moved. Concurrent callers share one read."""
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._read_counters())
        await asyncio.shield(self._checking)

    async def _read_counters(self) -> None:
        assert self.store is not None
        try:
            versions = await asyncio.to_thread(self.store.versions)
            keys = versions[KEYS_COUNTER]
            if self.keys.outdated(keys) and await asyncio.to_thread(self.keys.sync, keys):
                log.info("client keys reloaded (%d in force)", len(self.keys.in_force()))
        except Exception as exc:  # whatever the database driver raises
            self.dependencies.mark("store", False, describe_error(exc))
        else:
            self.chains.note_deletions(versions[RESPONSES_COUNTER])
            self.dependencies.mark("store", True)
        finally:
            self._checked_at, self._checking = time.monotonic(), None

    def _shared_state(self, name: str, up: bool) -> None:
        """The limit counters' dependency changed; they have said so in the log themselves."""
        if not up:
            self.metrics.shared_state_error(name)
        self.dependencies.mark(name, up, announce=False)

    def _dependency_changed(self, name: str, up: bool) -> None:
        self.metrics.dependency(name, up)
        if up and name == "store" and self.usage is not None:
            self.usage.wake()  # write what waited for the store now, not after the writer's backoff

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            plain = self._plain.get((scope["method"], scope["path"]))
            if plain is not None:
                await plain(scope, receive, send)
                return
            endpoint = self._routes.get((scope["method"], scope["path"])) or self._dynamic(scope)
            await self._serve(endpoint, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        """Every API request: tracked while in flight, ended cleanly if cut, one log line at the end."""
        handler, surface = endpoint
        call = Call(_request_id(scope), surface, time.monotonic(), self.client_address(scope))
        label = surface.dialect
        self.metrics.request_started(label)
        self.inflight.enter(call)
        try:
            await handler(call, scope, receive, send)
        except ModelwireError as err:
            await self._error(call, send, err)
        except asyncio.CancelledError:
            if not call.cut:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await self._end_cut(call, send)
        except ConnectionResetError:
            call.status, call.error = 499, "client_closed"
        except Exception:
            log.exception("request %s failed", call.request_id)
            await self._error(call, send, ModelwireError("internal gateway error"))
        finally:
            self.inflight.leave(call)
            self.metrics.request_finished(
                label,
                call.model,
                call.backend or "none",
                call.status,
                time.monotonic() - call.started,
                call.ttft,
            )
            self.request_log.write(call)

    async def _end_cut(self, call: Call, send: Send) -> None:
        """Past the grace period: the request's own error, in its dialect, and its usage row."""
        call.error = "shutdown"
        err = ServiceUnavailableError(
            "the gateway is shutting down and could not finish this request; retry it",
            code="shutting_down",
        )
        with contextlib.suppress(OSError):  # the client may be gone too
            await self._error(call, send, err)
        if call.model:
            self._account(call, await self._estimate(call), call.status)

    async def _estimate(self, call: Call) -> Usage:
        """What a cut request used, when the upstream never said: its input counted offline, and
        about one output token per stream event that reached the client."""
        try:
            tokens = await asyncio.to_thread(count_request_tokens, call.decoded())
        except ModelwireError:
            tokens = 0
        return Usage(input_tokens=tokens, output_tokens=call.events)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.error("start-up failed: %s", describe_error(exc))
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _dynamic(self, scope: Scope) -> Endpoint:
        full: str = scope["path"]
        method = scope["method"]
        if full.startswith(("/v1beta/models", "/v1/models/")) and ":" in full.rsplit("/", 1)[-1]:
            return (self._gemini, GEMINI) if method == "POST" else (self._not_found, GEMINI)
        if full.startswith("/v1beta/models") and method == "GET":
            return self._gemini_models, GEMINI
        path = full.removeprefix("/v1")
        if path.startswith("/responses/"):
            return self._stored_response, RESPONSES
        if path.startswith("/models/") and method == "GET":
            return self._get_model, CHAT
        return self._not_found, CHAT

    # ------------------------------------------------------------------------------ plain routes

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await http.respond_json(send, 200, {"status": "ok"}, [])

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 when every dependency answers; 503 naming what is down (the gateway still serves)."""
        ready = self.store is not None and self.dependencies.healthy
        doc: dict[str, Any] = {"status": "ready" if ready else "degraded", **self.dependencies.report()}
        if self.usage is not None:
            doc["usage_pending"] = self.usage.pending
        await http.respond_json(send, 200 if ready else 503, doc, [])

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.usage is not None:
            self.metrics.usage_backlog(self.usage.pending, self.usage.dropped)
        payload, content_type = self.metrics.render()
        await http.respond(send, 200, payload, [], content_type.encode())

    async def _not_found(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        err = NotFoundError(f"no route for {scope['method']} {scope['path']}", code="unknown_url")
        await self._error(call, send, err)

    # ------------------------------------------------------------------------- generation routes

    async def _gemini(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1beta/models/{model}:{action}``: the model and whether to stream are in the URL."""
        model, _, action = scope["path"].split("/models/", 1)[1].rpartition(":")
        if action == "countTokens":
            await self._gemini_count(call, scope, receive, send, model)
        elif action in ("generateContent", "streamGenerateContent"):
            stream = action == "streamGenerateContent"
            sse = not stream or b"alt=sse" in scope.get("query_string", b"")
            call.surface = GEMINI if sse else GEMINI_ARRAY
            await self._generate(call, scope, receive, send, (model, stream))
        else:
            await self._error(call, send, NotFoundError(f"unknown method {action!r}", code="unknown_url"))

    async def _generate(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        from_path: tuple[str, bool] | None = None,
    ) -> None:
        try:
            route = await self._admit(scope, receive, call, from_path)
            if call.surface is RESPONSES:
                await self._expand_chain(call)
            if call.stream:
                await self._stream(call, route, receive, send)
            else:
                await self._complete(call, route, send)
        except ModelwireError as err:
            call.backend, call.upstream_model = err.backend, err.upstream_model
            if isinstance(err, ContextLengthError) and call.surface is ANTHROPIC:
                err = await self._too_long(call, err)
            await self._error(call, send, err)
            self._account(call, None, call.status)

    async def _admit(
        self, scope: Scope, receive: Receive, call: Call, from_path: tuple[str, bool] | None = None
    ) -> Route:
        """Authenticate, read and check the request; the route it will take. ``from_path`` is the
        model and stream flag of dialects that say them in the URL (Gemini)."""
        call.headers = headers = await self._authenticate(call, scope)
        raw = await http.read_body(receive, self.config.server.max_body_bytes, headers.get(b"content-length"))
        _CURRENT.set((call.request_id, call.key.name if call.key else None))
        self._record("client_request", call, raw, url=scope["path"], client=call.client)
        call.body = body = http.parse_json(raw)
        if from_path is not None:
            body["model"], body["stream"] = from_path
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model: is required (a string naming the model)", param="model")
        call.model = model
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise InvalidRequestError("stream: expected a boolean", param="stream")
        call.stream = bool(stream)
        call.surface.check(body)
        route = self.router.resolve(model)
        self._authorize(call.key, model, route)
        await self._limit(call.key)
        return route

    async def _authenticate(self, call: Call, scope: Scope) -> dict[bytes, bytes]:
        """Find the request's client key (``call.key``); the request headers, for the caller."""
        headers = dict(scope["headers"])
        if self.keys.open:
            return headers
        locked = self.lockout.locked(call.client)
        if locked is not None:
            raise RateLimitError(
                f"too many failed attempts with bad keys; try again in {locked:.0f} s",
                retry_after=locked,
                code="locked_out",
            )
        secret = extract_key(headers, scope.get("query_string", b""))
        if secret is None:
            raise AuthenticationError(
                "missing API key: send the header 'Authorization: Bearer' followed by your key, or x-api-key",
                code="missing_api_key",
            )
        key = self.keys.lookup(secret)
        if (
            key is None
            and self.store is not None
            and time.monotonic() - self._checked_at > MISS_CHECK_SECONDS
        ):
            with contextlib.suppress(TimeoutError):  # a hung store must not hang the request
                async with asyncio.timeout(1.0):
                    await self._check_store()  # a key created a moment ago works at once
            key = self.keys.lookup(secret)
        if key is None:
            self.lockout.failure(call.client)
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        if key.expired(time.time()):
            raise AuthenticationError(f"the API key {key.name!r} has expired", code="expired_api_key")
        self.lockout.success(call.client)
        call.key = key
        return headers

    def _authorize(self, key: ClientKey | None, model: str, route: Route) -> None:
        if key is None or key.allows(model):
            return
        if self.router.is_direct(model) and key.allows(*(t.ref for t in route.targets)):
            return
        raise PermissionDeniedError(
            f"this key may not use the model {model!r}", code="model_not_allowed", param="model"
        )

    async def _limit(self, key: ClientKey | None) -> None:
        if key is None or key.policy.unlimited:
            return
        if self.config.server.workers > 1 and not self.config.redis:
            # Each worker would count alone: the key would get its limits once per worker.
            raise ServiceUnavailableError(
                f"the key {key.name!r} has limits, which need `redis:` when the gateway runs several "
                "workers; ask the operator to configure Redis or run one worker",
                code="limits_need_redis",
            )
        if key.policy.budget_usd is not None and key.name not in self._budget_seeded:
            await self._seed_budget(key)
        refusal = await self.limiter.admit(key.policy)
        if refusal is not None:
            kind = ServiceUnavailableError if refusal.status == 503 else RateLimitError
            raise kind(refusal.message, retry_after=refusal.retry_after, code=refusal.code)

    async def _seed_budget(self, key: ClientKey) -> None:
        """A budget is spending across restarts: start from what the usage records say. Until the
        store can say, the key is refused rather than let it spend blind."""
        assert self.store is not None
        try:
            spent = await asyncio.to_thread(self.store.spent_usd, key.name)
        except Exception as exc:  # whatever the database driver raises
            self.dependencies.mark("store", False, describe_error(exc))
            raise ServiceUnavailableError(
                f"the key {key.name!r} has a budget and the gateway's store is unreachable, so its "
                "spending cannot be checked; retry shortly",
                code="store_unavailable",
            ) from None
        await self.limiter.seed_spend(key.policy, spent)
        self._budget_seeded.add(key.name)

    async def _expand_chain(self, call: Call) -> None:
        previous = call.body.get("previous_response_id")
        if previous is None:
            return
        if not isinstance(previous, str):
            raise InvalidRequestError("previous_response_id: expected a string", param="previous_response_id")
        found = await self.chains.get(previous)
        if found is not None and _owned(found, call):
            call.items = [*found.history, *input_items(call.body)]

    # ------------------------------------------------------------------------------ non-streaming

    async def _complete(self, call: Call, route: Route, send: Send) -> None:
        outcome = await self.failover.run(route.order(), lambda t, b, i: self._attempt(call, t, b, i))
        call.served_by(outcome.target, outcome.backend)
        value = outcome.value
        headers = self._served_headers(call, outcome)
        if isinstance(value, Passthrough):
            usage = outcome.backend.wire.usage_of(value.doc) if value.doc is not None else None
            self._record("upstream_response", call, value.payload)
            await self._remember(call, value.doc, outcome.backend, translated=False)
            status, payload = value.reply.status, value.payload
        else:
            assert value.response is not None
            usage = value.response.usage
            # The client's own model name: clients compare it with what they asked for (Claude Code
            # drops thinking blocks from turns "by another model"); x-modelwire-model names the real one.
            value.response.model = call.model
            doc = call.surface.render_response(value.response, call.decoded())
            await self._remember(call, doc, outcome.backend, translated=True)
            status, payload = 200, orjson.dumps(doc)
        await self._respond(call, send, status, payload, headers)
        self._record("client_response", call, payload)
        call.ttft = time.monotonic() - call.started
        self._account(call, usage, status)

    async def _attempt(
        self, call: Call, target: Target, backend: Backend, index: int
    ) -> Passthrough | Translated:
        if call.items is None and call.body.get("previous_response_id") and not backend.chains:
            # Neither we nor this upstream know the chain: forwarding the id would lose its context.
            raise PreviousResponseNotFound(
                f"Previous response with id '{call.body['previous_response_id']}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
        if self._passes_through(call, backend):
            reply = await self._forward(call, target, backend, index)
            if call.stream:
                return Passthrough(reply)
            payload = await reply.read()
            doc = passthrough.json_object(payload)
            return Passthrough(reply, payload, doc)
        req = call.decoded()
        if backend.config.inline_media:
            await inline_media(req, self.transport, allow_private=self.config.server.allow_private_urls)
        driver = backend.driver(index)
        overrides = {"model": target.model, **dict(target.params)}
        dropped = unsupported_settings(req, self.catalog.profile(target.model), backend.wire.name)
        if not call.stream:
            return Translated(dropped, response=await driver.complete(req, **overrides))
        events = driver.events(req, **overrides)
        opening: list[StreamEvent] = []
        async for event in events:  # up to the first event that says something
            if isinstance(event, StreamError):
                await events.aclose()  # type: ignore[attr-defined]
                raise event.error  # nothing reached the client yet: failover may try elsewhere
            opening.append(event)
            if not isinstance(event, Start):
                break
        return Translated(dropped, opening=opening, events=events)

    def _passes_through(self, call: Call, backend: Backend) -> bool:
        return backend.passthrough and backend.wire.name == call.surface.dialect

    async def _forward(self, call: Call, target: Target, backend: Backend, index: int) -> Reply:
        wire = backend.wire
        body = passthrough.rewrite(
            call.body, target, wire, backend.host.wire, stream=call.stream, items=call.items
        )
        url = backend.url(target.model, call.stream)
        headers = backend.headers(index)
        headers["X-Client-Request-Id"] = call.request_id
        for name in wire.client_headers:
            value = call.headers.get(name)
            if value is not None:
                headers[name.decode()] = value.decode("latin-1")
        if call.stream:
            headers["Accept"] = "text/event-stream"
        payload = orjson.dumps(body)
        self._record("upstream_request", call, payload, url=url, headers=headers, backend=backend.name)

        def seen(raw: bytes, _: Mapping[str, str]) -> None:
            self._record("upstream_response", call, raw, backend=backend.name)

        timeout = backend.config.timeout
        return await upstream_call(
            self.transport, "POST", url, headers, payload, read_timeout=timeout, on_error=seen
        )

    # ---------------------------------------------------------------------------------- streaming

    async def _stream(self, call: Call, route: Route, receive: Receive, send: Send) -> None:
        task = asyncio.ensure_future(
            self.failover.run(route.order(), lambda t, b, i: self._attempt(call, t, b, i))
        )
        try:  # a failure is said by _generate: as an error response, or in the stream once it is open
            outcome = await self._first_answer(call, task, send)
        finally:
            task.cancel()  # a no-op once done; stops the search when this request is cut
        call.served_by(outcome.target, outcome.backend)
        if not call.responding:
            call.responding = True
            await http.start_stream(send, self._served_headers(call, outcome), call.surface.stream_headers)
        watcher = asyncio.ensure_future(receive())
        try:
            if isinstance(outcome.value, Passthrough):
                usage, status = await self._pump_passthrough(call, outcome, send, watcher)
            else:
                usage, status = await self._pump_translated(call, outcome, send, watcher)
        finally:
            watcher.cancel()
        await http.end_stream(send)
        if status == 499:
            call.error = "client_closed"
            usage = usage or await self._estimate(call)
        self._account(call, usage, status)

    async def _first_answer(self, call: Call, task: asyncio.Future[Outcome[Any]], send: Send) -> Outcome[Any]:
        """Wait for the failover search; while the wait is long, open the stream and keep it alive."""
        while True:
            done, _ = await asyncio.wait({task}, timeout=self.config.server.keepalive_seconds)
            if done:
                return task.result()
            if not call.responding:
                call.responding = True
                await http.start_stream(
                    send, [(b"x-request-id", call.request_id.encode())], call.surface.stream_headers
                )
            await http.stream_chunk(send, call.surface.keepalive)

    async def _pump_passthrough(
        self, call: Call, outcome: Outcome[Any], send: Send, watcher: asyncio.Future[Any]
    ) -> tuple[Usage | None, int]:
        value: Passthrough = outcome.value
        reply = value.reply
        if "json" in reply.headers.get("content-type", ""):  # the upstream ignored stream=true
            return await self._pump_whole(call, outcome, send)
        backend = outcome.backend
        tap = backend.wire.tap(
            call.body, filter_chunks=backend.profile.filter_chunks, json_array=call.surface.json_array
        )
        call.failing_end = tap.fail
        # A stored response must be in the store before the client can name it: hold the final event.
        hold = self._keeps(call, backend, translated=False)
        capture = self.capture is not None
        broken = False
        try:
            async for chunk in reply.chunks():
                out = tap.feed(chunk)
                if capture:
                    self._record("upstream_chunk", call, chunk)
                if out:
                    if hold and tap.response is not None:
                        hold = False
                        await self._remember(call, tap.response, backend, translated=False)
                    await self._forward_chunk(call, send, out)
                if watcher.done():
                    reply.close()
                    return tap.usage, 499
        except ModelwireError as err:
            broken = True
            log.debug("upstream stream broke: %s", err)
        if (broken or not tap.finished) and not tap.errored:
            cut = ProtocolError("the upstream stream ended before the answer finished", status=502)
            await http.stream_chunk(send, tap.fail(cut))
            call.error = "upstream_cut"
            return tap.usage, 502
        await http.stream_chunk(send, tap.end())
        return tap.usage, 502 if tap.errored else 200

    async def _forward_chunk(self, call: Call, send: Send, out: bytes) -> None:
        if call.ttft is None:
            call.ttft = time.monotonic() - call.started
        call.events += 1
        await http.stream_chunk(send, out)
        if self.capture is not None:
            self._record("client_chunk", call, out)

    async def _pump_whole(self, call: Call, outcome: Outcome[Any], send: Send) -> tuple[Usage | None, int]:
        doc = passthrough.json_object(await outcome.value.reply.read())
        response = outcome.backend.wire.decode_response(doc)
        response.model = call.model
        renderer = call.surface.stream_renderer(call.decoded(), call.body)
        body = b"".join(renderer.feed(e) for e in events_from_response(response)) + renderer.end()
        await http.stream_chunk(send, body)
        return response.usage, 200

    async def _pump_translated(
        self, call: Call, outcome: Outcome[Any], send: Send, watcher: asyncio.Future[Any]
    ) -> tuple[Usage | None, int]:
        value: Translated = outcome.value
        assert value.events is not None
        renderer = call.surface.stream_renderer(call.decoded(), call.body)
        call.failing_end = lambda err: renderer.feed(StreamError(error=err)) + renderer.end()
        hold = self._keeps(call, outcome.backend, translated=True)
        usage: Usage | None = None
        status = 200
        events = value.events
        try:
            async for event in _resume(value.opening, events):
                if isinstance(event, Start):
                    event = Start(id=event.id, model=call.model, created=event.created)
                elif isinstance(event, Finish):
                    usage = event.usage
                elif isinstance(event, StreamError):
                    event = StreamError(error=_safe(event.error))
                    status = getattr(event.error, "status", 502)
                out = renderer.feed(event)
                final = renderer.response if hold else None
                if final is not None:  # stored before the client sees the end of it
                    hold = False
                    await self._remember(call, final, outcome.backend, translated=True)
                if out:
                    await self._forward_chunk(call, send, out)
                if watcher.done():
                    return usage, 499
            await http.stream_chunk(send, renderer.end())
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        return usage, status

    # ------------------------------------------------------------------------------- bookkeeping

    def _served_headers(self, call: Call, outcome: Outcome[Any]) -> Headers:
        headers = [
            (b"x-request-id", call.request_id.encode()),
            (b"x-modelwire-backend", outcome.backend.name.encode()),
            (b"x-modelwire-model", outcome.target.model.encode()),
        ]
        dropped = getattr(outcome.value, "dropped", None)
        if dropped:
            headers.append((b"x-modelwire-dropped-params", ", ".join(dropped).encode()))
        return headers

    def _keeps(self, call: Call, backend: Backend, *, translated: bool) -> bool:
        """Whether the gateway stores this answer: Responses answers from upstreams that keep none
        (a native upstream stores what it served and chains it itself), unless ``store: false``."""
        if call.surface is not RESPONSES or call.body.get("store") is False:
            return False
        return translated or not backend.chains

    async def _remember(
        self, call: Call, doc: dict[str, Any] | None, backend: Backend, *, translated: bool
    ) -> None:
        """Keep a Responses answer for ``previous_response_id``, durably: the caller sends the end of
        the answer only after this returns, so a follow-up on any replica finds it."""
        if doc is None or not self._keeps(call, backend, translated=translated):
            return
        items = call.items if call.items is not None else input_items(call.body)
        await self.chains.put(stored(call.body, items, doc, call.key.name if call.key else None))

    def _account(self, call: Call, usage: Usage | None, status: int) -> None:
        """Record usage and metrics without making the client wait for either."""
        backend, upstream_model = call.backend, call.upstream_model
        usage = usage or Usage()
        cost = self.catalog.cost(upstream_model or call.model, usage) if usage.total_tokens else None
        call.status, call.usage, call.cost = status, usage, cost
        if self.usage is not None:
            self.usage.add(
                UsageRecord(
                    time=time.time(),
                    key_name=call.key.name if call.key else None,
                    public_model=call.model,
                    backend=backend,
                    upstream_model=upstream_model,
                    dialect=call.surface.dialect,
                    input_tokens=usage.input_tokens,
                    cached_tokens=usage.cached_input_tokens,
                    output_tokens=usage.output_tokens,
                    reasoning_tokens=usage.reasoning_tokens,
                    cost=cost,
                    latency_ms=(time.monotonic() - call.started) * 1000,
                    ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
                    status=status,
                    request_id=call.request_id,
                    stream=call.stream,
                    error=call.error,
                )
            )
        if usage.total_tokens:
            self.metrics.usage(
                call.model,
                backend or "",
                usage.input_tokens,
                usage.cached_input_tokens,
                usage.output_tokens,
                usage.reasoning_tokens,
                cost or 0.0,
            )
        if call.key is not None and not call.key.policy.unlimited:
            self._spawn(self.limiter.record(call.key.policy, tokens=usage.total_tokens, cost=cost))

    async def _too_long(self, call: Call, err: ContextLengthError) -> ContextLengthError:
        """The overflow in Anthropic's own words, which Claude Code recognises (and then compacts)."""
        window = self.catalog.context_window(call.upstream_model or call.model)
        try:
            tokens = await asyncio.to_thread(count_request_tokens, call.decoded())
        except ModelwireError:
            return err
        if window is None or tokens <= window:
            window = tokens - 1  # the upstream's limit is lower than the catalog knows
        message = f"prompt is too long: {tokens} tokens > {window} maximum"
        return ContextLengthError(message, status=err.status, code=err.code, request_id=err.request_id)

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _error(self, call: Call, send: Send, err: ModelwireError) -> None:
        """``err`` in the client's dialect: an error response, or the stream's own error event when
        the response has begun."""
        err = _safe(err)
        call.status, call.error = err.status, call.error or _error_code(err)  # a stream's HTTP status was 200
        self.metrics.error(call.surface.dialect, type(err).__name__)
        if call.responding:
            end = call.failing_end or (lambda e: call.surface.stream_error(e, None, call.body))
            await http.stream_chunk(send, end(err))
            await http.end_stream(send)
            return
        status, doc = call.surface.render_error(err)
        extra = [(b"x-request-id", call.request_id.encode())]
        if err.retry_after is not None:
            extra.append((b"retry-after", str(max(1, round(err.retry_after))).encode()))
        await self._respond(call, send, status, orjson.dumps(doc), extra)

    # ----------------------------------------------------------------------- embeddings, models
    # Each handler raises ModelwireError for what goes wrong; _serve says it in the call's dialect.

    async def _embeddings(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            route = await self._admit(scope, receive, call)
            outcome = await self.failover.run(route.order(), lambda t, b, i: self._embed(call, t, b, i))
        except ModelwireError as err:
            call.backend, call.upstream_model = err.backend, err.upstream_model
            await self._error(call, send, err)
            self._account(call, None, call.status)
            return
        payload, doc = outcome.value
        call.served_by(outcome.target, outcome.backend)
        await self._respond(call, send, 200, payload, self._served_headers(call, outcome))
        tokens = (doc.get("usage") or {}).get("prompt_tokens") or 0
        self._account(call, Usage(input_tokens=int(tokens)), 200)

    async def _embed(
        self, call: Call, target: Target, backend: Backend, index: int
    ) -> tuple[bytes, dict[str, Any]]:
        if not backend.profile.embeddings:
            raise InvalidRequestError(f"backend {backend.name!r} serves no embeddings")
        body = orjson.dumps({**call.body, "model": target.model})
        url = backend.host.url("embeddings", target.model)
        timeout = backend.config.timeout
        reply = await upstream_call(
            self.transport, "POST", url, backend.headers(index), body, read_timeout=timeout
        )
        payload = await reply.read()
        doc = passthrough.json_object(payload)
        return payload, doc

    async def _list_models(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        if google_client(scope):  # google-genai lists models here too
            call.surface = GEMINI
            return await self._gemini_models(call, scope, receive, send)
        headers = await self._authenticate(call, scope)
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
        await self._answer(call, send, doc)

    async def _gemini_count(self, call: Call, scope: Scope, receive: Receive, send: Send, model: str) -> None:
        """Gemini's token counter: ``{contents}`` or ``{generateContentRequest}``."""

        def body(sent: dict[str, Any]) -> dict[str, Any]:
            inner = sent.get("generateContentRequest")
            return {**inner, "model": model} if isinstance(inner, dict) else sent

        await self._count(call, scope, receive, send, body, "totalTokens", (model, False))

    async def _gemini_models(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /v1beta/models`` and ``GET /v1beta/models/{model}`` in Gemini's shape."""
        wanted = scope["path"].removeprefix("/v1beta").removeprefix("/v1").removeprefix("/models").strip("/")
        await self._authenticate(call, scope)
        ids = await self._allowed_models(call.key)
        if not wanted:
            doc: dict[str, Any] = {"models": [self._gemini_model(m) for m in ids]}
        elif wanted.removeprefix("models/") in ids:
            doc = self._gemini_model(wanted.removeprefix("models/"))
        else:
            raise NotFoundError(f"models/{wanted} is not found", code="model_not_found")
        await self._answer(call, send, doc)

    def _gemini_model(self, model: str) -> dict[str, Any]:
        return gemini_model(model, self.catalog.profile(self.router.resolve(model).targets[0].model))

    async def _responses_tokens(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """The Responses API's token counter."""
        await self._count(
            call,
            scope,
            receive,
            send,
            lambda sent: sent,
            "input_tokens",
            answer_object="response.input_tokens",
        )

    async def _count_tokens(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """Anthropic's token counter (its bodies carry no ``max_tokens``, which decoding wants)."""
        await self._count(call, scope, receive, send, lambda sent: {"max_tokens": 1, **sent}, "input_tokens")

    async def _count(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        send: Send,
        body: Callable[[dict[str, Any]], dict[str, Any]],
        answer: str,
        from_path: tuple[str, bool] | None = None,
        *,
        answer_object: str | None = None,
    ) -> None:
        """Count a request's input tokens with the upstream model's own tokenizer, offline."""
        route = await self._admit(scope, receive, call, from_path)
        req = call.surface.decode_request(body(call.body))
        req.model = route.targets[0].model
        count = await asyncio.to_thread(count_request_tokens, req)
        doc: dict[str, Any] = (
            {answer: count} if answer_object is None else {"object": answer_object, answer: count}
        )
        await self._answer(call, send, doc)

    async def _get_model(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        if google_client(scope):
            call.surface = GEMINI
            return await self._gemini_models(call, scope, receive, send)
        model = scope["path"].removeprefix("/v1").removeprefix("/models/")
        await self._authenticate(call, scope)
        if model not in await self._allowed_models(call.key):
            raise NotFoundError(
                f"The model {model!r} does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            )
        await self._answer(call, send, openai_model(model))

    async def _answer(self, call: Call, send: Send, doc: Any) -> None:
        await self._respond(call, send, 200, orjson.dumps(doc), [(b"x-request-id", call.request_id.encode())])

    async def _respond(self, call: Call, send: Send, status: int, payload: bytes, headers: Headers) -> None:
        """A whole answer; from here on an error can no longer be a response of its own."""
        call.status, call.responding = status, True
        await http.respond(send, status, payload, headers)

    async def _allowed_models(self, key: ClientKey | None) -> list[str]:
        return [m for m in await self._model_ids() if key is None or key.allows(m)]

    async def _model_ids(self) -> list[str]:
        """The served models, the upstream's half remembered for five minutes."""
        fetched_at, ids = self._models_cache
        if time.monotonic() - fetched_at > 300:
            default = self.backends.get(self.config.default_backend or "")
            served = await served_models(self.router, default)
            if served.error is not None and default is not None:
                log.warning("could not list the models of backend %s: %s", default.name, served.error)
            ids = served.ids
            self._models_cache = (time.monotonic(), ids)
        return ids

    # ---------------------------------------------------------------------------- stored responses

    async def _stored_response(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1/responses/{id}[/input_items]``: from the gateway's store, or else from the native
        upstreams (which store what they served themselves)."""
        rest = scope["path"].removeprefix("/v1").removeprefix("/responses/")
        response_id, _, tail = rest.partition("/")
        await self._authenticate(call, scope)
        found = await self.chains.get(response_id)
        if found is None or not _owned(found, call):
            status, payload = await self._ask_native_backends(scope, rest)
            await self._respond(call, send, status, payload, [(b"x-request-id", call.request_id.encode())])
            return
        await self._answer(
            call, send, await self._stored_document(found, scope["method"], tail, scope["path"])
        )

    async def _stored_document(
        self, found: StoredResponse, method: str, tail: str, path: str
    ) -> dict[str, Any]:
        if method == "DELETE" and not tail:
            await self.chains.delete(found.id)
            return {"id": found.id, "object": "response", "deleted": True}
        if method == "GET" and tail == "input_items":
            items = [{"id": i.get("id") or f"item_{n}", **i} for n, i in enumerate(found.input_items)]
            first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
            return {"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": False}
        if method == "GET" and not tail:
            return found.response
        raise NotFoundError(f"no route for {method} {path}", code="unknown_url")

    async def _ask_native_backends(self, scope: Scope, rest: str) -> tuple[int, bytes]:
        """The first native upstream's answer about a response it stored (GET, DELETE, cancel)."""
        query = scope.get("query_string", b"").decode("latin-1")
        for backend in self.backends.values():
            if not (backend.chains and backend.passthrough):
                continue
            url = backend.host.url("response", suffix=rest)
            if query:
                url += ("&" if "?" in url else "?") + query
            try:
                timeout = backend.config.timeout
                reply = await upstream_call(
                    self.transport, scope["method"], url, backend.headers(0), None, read_timeout=timeout
                )
                return reply.status, await reply.read()
            except ModelwireError as err:
                if not (isinstance(err, NotFoundError) or err.retryable):
                    raise
        raise NotFoundError(
            f"No response found with id '{rest.partition('/')[0]}'.",
            code="response_not_found",
            param="response_id",
        )


# ---------------------------------------------------------------------------------------- helpers


_ID_PREFIX = f"req_{uuid.uuid4().hex[:12]}"
_id_counter = itertools.count(1)


def _request_id(scope: Scope) -> str:
    """The client's ``x-request-id``, or a new id unique to this process and request."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 128:
            return str(value.decode("latin-1"))
    return f"{_ID_PREFIX}{next(_id_counter):012x}"


def _owned(stored: StoredResponse, call: Call) -> bool:
    """A stored response belongs to the key that made it: to another key it does not exist."""
    return stored.key_name == (call.key.name if call.key else None)


def _error_code(err: ModelwireError) -> str:
    """A short code for the usage record and the log line: the error's own, or its kind."""
    if err.code:
        return err.code[:64]
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in type(err).__name__).lstrip("_")


def _safe(err: Exception) -> ModelwireError:
    """The error with any key-looking text removed from its message."""
    if not isinstance(err, ModelwireError):
        log.error("unexpected error type in a stream: %r", err)
        return ModelwireError("internal gateway error")
    cleaned = redact(err.message)
    if cleaned != err.message:
        err.message = cleaned
        err.args = (cleaned,)
    return err


async def _resume(opening: list[StreamEvent], rest: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    """The events read before the stream was committed, then the rest of them."""
    for event in opening:
        yield event
    async for event in rest:
        yield event
