"""The gateway as a raw ASGI application: construction, lifecycle and dispatch.

No framework sits on the proxy path (one cost 36% of throughput when measured): requests are
dispatched by a dict lookup on ``(method, path)`` to a handler of one of the collaborators, each
built once here:

- :class:`~.admission.Admission`: auth, lockout, limits, routing;
- :class:`~.generation.Generation`: the failover search and the answer, whole or streamed, each
  attempt either forwarded (:class:`~.forwarding.Forwarder`: client dialect equals the upstream's
  wire, bytes pass through a usage tap) or translated (:class:`~.translation.Translator`);
- :class:`~.accounting.Accounting`: answers and errors in the client's dialect, usage rows,
  metrics, capture;
- :class:`~.background.Background`: background responses the gateway runs itself;
- :class:`~.sideroutes.SideRoutes` (embeddings, model listings, token counts),
  :class:`~.compaction.Compaction`, :class:`~.stored.StoredResponses`, and
  :class:`~.sockets.ResponsesSockets` (Responses over WebSocket, each response served through this
  same dispatch).

Every API request goes through :meth:`Gateway._serve`: tracked while in flight, ended cleanly if
cut at shutdown, its errors said in its own dialect, one log line at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from .. import heap
from ..errors import ModelwireError, NotFoundError, ServiceUnavailableError
from ..providers.catalog import Catalog
from ..providers.http1 import Http1Transport
from . import http, telemetry
from .accounting import Accounting
from .admission import Admission
from .auth import KeyBook
from .background import Background
from .call import MINTED_ID_PREFIX, Call, InFlight
from .capture import Capture
from .chains import Chains
from .clients import ClientAddress, is_loopback
from .codex_images import CodexImages
from .compaction import Compaction
from .config import Config
from .credentials import share_credentials
from .forwarding import Forwarder
from .generation import Generation
from .health import Dependencies
from .http import Receive, Scope, Send
from .limits import Limiter
from .lockout import Lockout
from .media import Media
from .metrics import Metrics, forget_dead_workers, keep_flushing
from .realtime import MINTED as REALTIME_MINTED
from .realtime import SOCKET_PATHS as REALTIME_PATHS
from .realtime import Realtime
from .relay import Endpoints
from .requestlog import RequestLog
from .routing import Router
from .sideroutes import SideRoutes
from .sockets import ResponsesSockets
from .state import State
from .store import Store, UsageWriter, describe_error
from .stored import StoredResponses
from .surfaces import (
    ANTHROPIC,
    AUDIO,
    CHAT,
    EMBEDDINGS,
    GEMINI,
    GEMINI_ARRAY,
    GEMINI_EMBEDDINGS,
    IMAGES,
    RESPONSES,
    VIDEOS,
    Surface,
)
from .sync import StoreSync
from .translation import Translator
from .upstream import Backend, Failover
from .upstream_runs import UpstreamRuns
from .upstream_sockets import UpstreamSockets
from .videos import VideoBook, Videos

log = logging.getLogger("modelwire.gateway")
Handler = Callable[[Call, Scope, Receive, Send], Awaitable[None]]
Endpoint = tuple[Handler, Surface]
PlainHandler = Callable[[Scope, Receive, Send], Awaitable[None]]
OPERATOR_PATHS = ("/admin/", "/ui")  # the admin API and dashboard, reached only when no API route matched
QUIET_CHECK_SECONDS = 10.0
"""How often the gateway looks for a quiet spell (a whole period without a new request) in which to
give back what a burst left (see ``_give_back_memory``)."""
GC_YOUNG_THRESHOLD = 10_000
"""The collector's young-generation threshold. A request's objects are young while it is in
flight; at CPython's 700 the collector walked them every few requests (a translated request at 32
connections paid ~4.5 µs of collections, 3% of its CPU). At 10,000 the objects of 32 requests in
flight never reach it; cycles a cut stream leaves wait that many allocations, or the quiet spell."""
GEMINI_EMBED_ACTIONS = ("embedContent", "batchEmbedContents")


class Gateway:
    def __init__(self, config: Config, *, hook_signals: bool = False) -> None:
        self.config = config
        self._hook_signals = hook_signals
        router = Router(config)
        catalog = Catalog()
        self.tracer = tracer = telemetry.tracer(config)  # None unless tracing is configured
        self.transport = transport = tracer.transport() if tracer else Http1Transport()
        self.metrics = Metrics()
        self.capture = (
            Capture(config.capture.path, max_bytes=config.capture.max_bytes, backups=config.capture.backups)
            if config.capture
            else None
        )
        self.state = State.in_memory(KeyBook(config.keys, None, loopback=is_loopback(config.server.host)))
        self.accounting = accounting = Accounting(self.state, self.metrics, self.capture, catalog)
        self.backends = backends = {
            name: Backend(
                name, b, catalog, transport, tap=accounting.driver_tap(name) if self.capture else None
            )
            for name, b in config.backends.items()
        }
        failover = Failover(
            backends,
            config.failover,
            on_retry=self.metrics.retry,
            on_failover=self.metrics.failover,
            on_cooldown=self.metrics.cooldown,
            tracer=tracer,
        )
        self.dependencies = Dependencies(self._dependency_changed)
        self.sync = StoreSync(self.state, self.dependencies)
        self.admission = admission = Admission(
            config,
            router,
            self.state,
            Lockout.from_config(config.lockout),
            self.sync,
            self.dependencies,
            accounting,
        )
        forwarder = Forwarder(transport, accounting)
        self.upstream_runs = UpstreamRuns(transport, accounting)
        self.generation = Generation(
            config,
            catalog,
            failover,
            admission,
            accounting,
            forwarder,
            Translator(config, catalog, transport, accounting),
            self.upstream_runs,
        )
        self.side = SideRoutes(
            config, router, catalog, backends, failover, transport, admission, accounting, forwarder
        )
        self.background = Background(config, self.generation, backends, self.state, accounting)
        self.generation.background = self.background
        self.stored = StoredResponses(backends, transport, self.state, admission, accounting, self.background)
        self.compaction = Compaction(backends, failover, transport, admission, accounting)
        self.media = Media(
            config,
            catalog,
            failover,
            transport,
            admission,
            accounting,
            Endpoints(config.server.allow_private_urls),
            CodexImages(transport),
        )
        self.videos = Videos(
            config, backends, failover, transport, admission, accounting, self.media, VideoBook(self.state)
        )
        self.client_address = ClientAddress(config.server.trusted_proxies)
        self.sockets = ResponsesSockets(
            self,
            admission,
            self.metrics,
            self.client_address,
            partial(UpstreamSockets, transport.connect_socket, {}),
        )
        self.realtime = Realtime(
            admission,
            failover,
            accounting,
            self.metrics,
            transport,
            transport.connect_socket,
            self.sockets,
            self.client_address,
        )
        self.request_log = RequestLog(config.server.log_format)
        self._operators: tuple[PlainHandler, PlainHandler] | None = None  # built on first use
        self.inflight = InFlight()
        self._background: set[asyncio.Task[Any]] = set()
        self._plain: dict[tuple[str, str], PlainHandler] = {
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/"): self._healthz,
            ("HEAD", "/"): self._healthz,
            # Claude Code's reachability probe (its start-up pre-connect, first-run check, doctor).
            ("GET", "/api/hello"): self._healthz,
            ("HEAD", "/api/hello"): self._healthz,
        }
        self._routes = self._route_table()

    def _route_table(self) -> dict[tuple[str, str], Endpoint]:
        generate, side = self.generation.generate, self.side
        routes: dict[tuple[str, str], Endpoint] = {}
        for prefix in ("/v1", ""):
            routes[("POST", prefix + "/chat/completions")] = (generate, CHAT)
            routes[("POST", prefix + "/responses")] = (generate, RESPONSES)
            routes[("POST", prefix + "/embeddings")] = (side.embeddings, EMBEDDINGS)
            routes[("GET", prefix + "/models")] = (side.list_models, CHAT)
            routes[("POST", prefix + "/images/generations")] = (self.media.images_generate, IMAGES)
            routes[("POST", prefix + "/images/edits")] = (self.media.images_edit, IMAGES)
            routes[("POST", prefix + "/audio/speech")] = (self.media.speech, AUDIO)
            routes[("POST", prefix + "/audio/transcriptions")] = (self.media.transcription, AUDIO)
            routes[("POST", prefix + "/audio/translations")] = (self.media.translation, AUDIO)
            routes[("POST", prefix + "/videos")] = (self.videos.create, VIDEOS)
            routes[("GET", prefix + "/videos")] = (self.videos.list, VIDEOS)
        routes[("POST", "/v1/messages")] = (generate, ANTHROPIC)
        routes[("POST", "/v1/responses/input_tokens")] = (side.responses_tokens, RESPONSES)
        routes[("POST", "/v1/responses/compact")] = (self.compaction.compact, RESPONSES)
        routes[("POST", "/v1/messages/count_tokens")] = (side.anthropic_tokens, ANTHROPIC)
        for path in REALTIME_MINTED:
            routes[("POST", path)] = (self.realtime.mint, RESPONSES)
        return routes

    # --------------------------------------------------------------------------------- lifecycle

    async def startup(self) -> None:
        state, config = self.state, self.config
        state.store = store = await asyncio.to_thread(Store, config.store)
        if store.dialect == "postgresql":  # replicas share sign-ins through the store (encrypted)
            share_credentials(store, [b.credentials for b in self.backends.values() if b.credentials])
        state.keys = KeyBook(config.keys, store, loopback=state.keys.loopback)
        await asyncio.to_thread(state.keys.sync)
        self.dependencies.watch("store")
        state.usage = UsageWriter(
            store,
            interval=config.usage.flush_seconds,
            max_batch=config.usage.batch,
            quiet=lambda: len(self.inflight) <= 1,
        )
        await state.usage.start()
        # A follow-up may reach another process when the store is shared: then a stored response is
        # committed before its client has it. One process on a SQLite file answers from memory.
        state.chains = Chains(
            store,
            shared=store.dialect != "sqlite" or config.server.workers > 1,
            in_flight=lambda: len(self.inflight),
        )
        if config.redis:
            self.dependencies.watch("redis")
        state.limiter = Limiter.create(
            config.redis,
            on_shared_error=config.limits.on_shared_error,
            on_change=lambda up: self._shared_state("redis", up),
        )
        await state.limiter.start()
        if self.tracer is not None:
            self.tracer.start()
        self._spawn(self.sync.watch())
        self._spawn(self._give_back_memory())
        self._spawn(keep_flushing(self.metrics))
        forget_dead_workers()
        if self._hook_signals:
            self._hook_stop_signals()
        # Everything alive now lives as long as the process; keep the cyclic collector from walking
        # it again and again (full collections over it showed up as 50 ms stalls at p99).
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])

    async def shutdown(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        # Before the usage rows and stored responses are written out: these end by writing theirs.
        await self.background.stop()
        await self.upstream_runs.stop()
        state = self.state
        await state.chains.drain()
        if state.usage is not None:
            await state.usage.stop()
        await state.limiter.aclose()
        await self.transport.aclose()
        if self.capture is not None:
            self.capture.close()
        if self.tracer is not None:
            await self.tracer.shutdown()
        if state.store is not None:
            state.store.close()
        self.request_log.flush()
        self.metrics.flush()

    def begin_shutdown(self) -> None:
        """A stop signal arrived: in-flight requests and background responses get the grace period,
        then are cut cleanly."""
        self.inflight.cut_after(self.config.server.grace_seconds)
        self.background.cut_after(self.config.server.grace_seconds)

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

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _give_back_memory(self) -> None:
        """What a burst needed should not stay resident once it is over: the heap that a thousand
        streams' buffers grew (glibc keeps freed memory mapped until trimmed). Once per quiet
        spell, not on every tick, the cycles a burst left (cut streams, closed connections) are
        collected rather than left for the collector's next full pass, and the heap is trimmed."""
        seen = trimmed = self.inflight.entered
        while True:
            await asyncio.sleep(QUIET_CHECK_SECONDS)
            quiet, seen = seen == self.inflight.entered, self.inflight.entered
            if quiet and not self.inflight and seen != trimmed:
                gc.collect()
                await asyncio.to_thread(heap.give_back)
                trimmed = seen

    def _shared_state(self, name: str, up: bool) -> None:
        """The limit counters' dependency changed; they have said so in the log themselves."""
        if not up:
            self.metrics.shared_state_error(name)
        self.dependencies.mark(name, up, announce=False)

    def _dependency_changed(self, name: str, up: bool) -> None:
        self.metrics.dependency(name, up)
        if up and name == "store" and self.state.usage is not None:
            self.state.usage.wake()  # write what waited for the store now, not after the writer's backoff

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

    # ---------------------------------------------------------------------------------- dispatch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            plain = self._plain.get((scope["method"], scope["path"]))
            if plain is not None:
                await plain(scope, receive, send)
                return
            endpoint = self._routes.get((scope["method"], scope["path"]))
            if endpoint is None and scope["path"].startswith(OPERATOR_PATHS):
                await self._operator(scope, receive, send)
                return
            await self._serve(endpoint or self._dynamic(scope), scope, receive, send)
        elif kind == "websocket":
            serve = self.realtime.serve if scope["path"] in REALTIME_PATHS else self.sockets.serve
            await serve(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _operator(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The admin API or the dashboard; an unexpected failure is logged, never shown."""
        try:
            api, dashboard = self._operators or self._build_operators()
            await (api if scope["path"].startswith("/admin/") else dashboard)(scope, receive, send)
        except Exception:
            log.exception("admin request %s %s failed", scope["method"], scope["path"])
            with contextlib.suppress(Exception):
                await http.respond_json(send, 500, {"error": {"message": "internal gateway error"}}, [])

    def _build_operators(self) -> tuple[PlainHandler, PlainHandler]:
        """The admin API and dashboard, imported and built when first asked for: a gateway no
        operator looks at pays nothing for them, not even at start-up."""
        from .admin import AdminAPI, Operations
        from .admin_auth import AdminGate
        from .dashboard import Dashboard

        operations = Operations(self.config, self.state, self.backends, self.metrics, self.dependencies)
        gate = AdminGate(self.state, self.admission.lockout, self.sync, self.client_address)
        self._operators = AdminAPI(operations, gate), Dashboard(operations, gate)
        return self._operators

    def _dynamic(self, scope: Scope) -> Endpoint:
        full: str = scope["path"]
        method = scope["method"]
        if full.startswith(("/v1beta/models", "/v1/models/")) and ":" in full.rsplit("/", 1)[-1]:
            if method != "POST":
                return self._not_found, GEMINI
            embeds = full.rpartition(":")[2] in GEMINI_EMBED_ACTIONS
            return self._gemini, GEMINI_EMBEDDINGS if embeds else GEMINI
        if full.startswith("/v1beta/models") and method == "GET":
            return self.side.gemini_models, GEMINI
        path = full.removeprefix("/v1")
        if path.startswith("/responses/"):
            return self.stored.serve, RESPONSES
        if path.startswith("/videos/"):
            return self.videos.serve, VIDEOS
        if path.startswith("/models/") and method == "GET":
            return self.side.get_model, CHAT
        return self._not_found, CHAT

    async def _gemini(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1beta/models/{model}:{action}``: the model and whether to stream are in the URL."""
        model, _, action = scope["path"].split("/models/", 1)[1].rpartition(":")
        if action == "countTokens":
            await self.side.gemini_tokens(call, scope, receive, send, model)
        elif action in GEMINI_EMBED_ACTIONS:
            await self.side.gemini_embeddings(
                call, scope, receive, send, model, action == "batchEmbedContents"
            )
        elif action in ("generateContent", "streamGenerateContent"):
            stream = action == "streamGenerateContent"
            sse = not stream or b"alt=sse" in scope.get("query_string", b"")
            call.surface = GEMINI if sse else GEMINI_ARRAY
            await self.generation.generate(call, scope, receive, send, (model, stream))
        else:
            raise NotFoundError(f"unknown method {action!r}", code="unknown_url")

    async def _not_found(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotFoundError(f"no route for {scope['method']} {scope['path']}", code="unknown_url")

    async def _serve(self, endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
        """Every API request: tracked while in flight, ended cleanly if cut, one log line at the end."""
        handler, surface = endpoint
        call = Call(_request_id(scope), surface, time.monotonic(), self.client_address(scope))
        if self.tracer is not None:
            call.trace = self.tracer.begin(call, scope)
        label = surface.label
        self.metrics.request_started(label)
        self.inflight.enter(call)
        try:
            await handler(call, scope, receive, send)
        except ModelwireError as err:
            await self.accounting.error(call, send, err)
        except asyncio.CancelledError:
            if not call.cut:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            await self._end_cut(call, send)
        except ConnectionResetError:
            call.status, call.error = 499, "client_closed"
        except Exception:
            log.exception("request %s failed", call.request_id)
            await self.accounting.error(call, send, ModelwireError("internal gateway error"))
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
            if call.trace is not None:
                call.trace.end(call)

    async def _end_cut(self, call: Call, send: Send) -> None:
        """Past the grace period: the request's own error, in its dialect, and its usage row."""
        call.error = "shutdown"
        err = ServiceUnavailableError(
            "the gateway is shutting down and could not finish this request; retry it",
            code="shutting_down",
        )
        with contextlib.suppress(OSError):  # the client may be gone too
            await self.accounting.error(call, send, err)
        if call.model and not call.detached:
            self.accounting.account(call, await self.accounting.estimate(call), call.status)

    # ------------------------------------------------------------------------------ plain routes

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await http.respond_json(send, 200, {"status": "ok"}, [])

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 when every dependency answers; 503 naming what is down (the gateway still serves)."""
        usage = self.state.usage
        ready = self.state.store is not None and self.dependencies.healthy
        doc: dict[str, Any] = {"status": "ready" if ready else "degraded", **self.dependencies.report()}
        if usage is not None:
            doc["usage_pending"] = usage.pending
        await http.respond_json(send, 200 if ready else 503, doc, [])

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        usage = self.state.usage
        if usage is not None:
            self.metrics.usage_backlog(usage.pending, usage.dropped)
        payload, content_type = self.metrics.render()
        await http.respond(send, 200, payload, [], content_type.encode())


_id_counter = itertools.count(1)


def _request_id(scope: Scope) -> str:
    """The client's ``x-request-id``, or a new id unique to this process and request."""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 128:
            return str(value.decode("latin-1"))
    return f"{MINTED_ID_PREFIX}{next(_id_counter):012x}"
