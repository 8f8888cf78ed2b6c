"""The OpenAI driver: the neutral model onto the OpenAI wire, Responses API first.

One :class:`OpenAI` object holds a host (native OpenAI, Azure, Codex or any compatible server),
a wire API (``responses`` by default, ``chat`` on request), keys, a retry policy and a model
catalog. ``complete`` and ``stream`` take a neutral :class:`Request` (or its fields as keyword
arguments) and do everything a serious caller would otherwise hand-write: repair broken tool
sequences, fit settings to the model, keep reasoning across turns, chain stored responses, retry
transient failures, continue cut-off answers, and price what it cost.
"""

from __future__ import annotations

import array
import asyncio
import base64
import builtins
import contextlib
import dataclasses
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import orjson

from .._version import __version__
from ..dialects.stream import ResponseAccumulator, events_from_response
from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    ModelwireError,
    PermissionDeniedError,
    PreviousResponseNotFound,
    ProtocolError,
    TimeoutError,
)
from ..observe import (
    Continued,
    Hook,
    Observer,
    RequestSent,
    ResponseReceived,
    RetryScheduled,
    StreamAborted,
    StreamEnded,
    StreamStarted,
    Tap,
)
from ..types import (
    BlockDelta,
    BlockStart,
    BlockStop,
    Finish,
    Part,
    Request,
    Response,
    Start,
    StreamError,
    StreamEvent,
    Text,
    Usage,
    UsageUpdate,
)
from .catalog import Catalog
from .codex import CodexCredentials
from .codex_models import CATALOG_QUERY, catalog_models, with_served
from .driver import observed_call, raising, read_events, read_json
from .hosts import CODEX_REF, Endpoint, Host, HostKind, WireAPI
from .media import MediaAPIs
from .planning import Plan, Planner
from .realtime import Realtime
from .retry import RetryPolicy
from .session import Session
from .strict import StopScanner, cut_at_stop
from .transport import AiohttpTransport, Reply, Transport, default_transport
from .websocket import BETA, MODES, Lease, Route, SocketPolicy, Sockets, TransportMode


@dataclass(slots=True, kw_only=True)
class Embeddings:
    vectors: list[list[float]]
    model: str
    usage: Usage


class OpenAI(MediaAPIs):
    """A driver for one OpenAI host.

    ``host`` is inferred from ``base_url`` when not given (``api.openai.com`` is native OpenAI,
    ``*.openai.azure.com`` and friends are Azure, anything else is OpenAI-compatible).
    ``continuations`` bounds how many times a cut-off answer is continued (0 disables it).
    ``store`` decides Responses statefulness on native hosts: the default (False) replays the
    transcript with encrypted reasoning; True stores responses and chains by id.

    ``transport`` is how Responses calls travel: ``"auto"`` (the default) uses WebSocket on hosts
    that offer it (native OpenAI, Azure's ``/openai/v1``, Codex) and SSE elsewhere, falling back
    to SSE for a while when sockets fail; ``"sse"`` never opens a socket; ``"websocket"`` always
    does, without fallback. Any call can override it (``transport=`` among its settings), and
    :meth:`session` keeps one socket for a conversation (:mod:`.websocket`). ``http`` is the HTTP
    client (a :class:`Transport`; one passed as ``transport`` is taken as that too), ``sockets``
    the WebSocket policy.

    A model written ``openai-codex/<model>`` goes by the Codex subscription route whatever the
    client's own host, signed in with ``credentials`` (default: the Codex CLI's ``auth.json``) at
    ``codex_base_url``. ``context_cap`` bounds the context every model may use (default: the host's
    own cap, 272,000 tokens on the Codex route); a request over it is refused before it is sent.

    ``images``, ``audio`` and ``videos`` are the media APIs (:mod:`.media`); ``base_urls`` sends
    a modality elsewhere (``{"audio.speech": url}``; also ``OPENAI_TTS_BASE_URL`` and friends),
    refused on private addresses unless ``allow_private_urls``.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        host: HostKind | None = None,
        api: WireAPI = "responses",
        api_version: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        timeout: float = 600.0,
        deadline: float | None = None,
        max_retries: int = 5,
        retry: RetryPolicy | None = None,
        continuations: int = 5,
        compaction: bool = True,
        store: bool | None = None,
        catalog: Catalog | None = None,
        transport: TransportMode | Transport | None = None,
        http: Transport | None = None,
        sockets: SocketPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        extra_body: Mapping[str, Any] | None = None,
        on_event: Hook | None = None,
        debug: bool = False,
        raw: bool = False,
        credentials: CodexCredentials | None = None,
        tap: Tap | None = None,
        context_cap: int | None = None,
        codex_base_url: str | None = None,
        base_urls: Mapping[str, str] | None = None,
        allow_private_urls: bool = False,
    ) -> None:
        self.base_urls, self.allow_private_urls = base_urls, allow_private_urls  # media (.media)
        self.host = Host.create(host, base_url or os.environ.get("OPENAI_BASE_URL") or None, api_version)
        self.api_key = api_key
        if api_key is None and not self.host.profile.signs_in:  # a signed-in route takes no env key
            self.api_key = os.environ.get(self.host.profile.key_env) or os.environ.get("OPENAI_API_KEY")
        self.api: WireAPI = api
        self.timeout = timeout
        self.deadline = deadline
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.catalog = catalog or Catalog()
        mode, client = (transport, http) if isinstance(transport, str) else ("auto", http or transport)
        self.mode: TransportMode = _mode(mode)
        self.transport: Transport = client or default_transport()
        self.observer = Observer(on_event, debug=debug, raw=raw, tap=tap)
        self.planner = Planner(
            host=self.host,
            api=api,
            catalog=self.catalog,
            observer=self.observer,
            store=store,
            compaction=compaction,
            continuations=continuations,
            extra_body=dict(extra_body or {}),
            context_cap=context_cap,
        )
        self._headers = {"Content-Type": "application/json", "User-Agent": f"modelwire/{__version__}"}
        if organization:
            self._headers["OpenAI-Organization"] = organization
        if project:
            self._headers["OpenAI-Project"] = project
        self._headers.update(headers or {})
        if credentials is None and self.host.profile.signs_in and not self.api_key:
            credentials = CodexCredentials(transport=self.transport)
        # Only a signed-in host sends them; another keeps them for its openai-codex/ refs.
        self.credentials = credentials if self.host.profile.signs_in else None
        sockets_client = (
            self.transport if isinstance(self.transport, AiohttpTransport) else default_transport()
        )
        self.sockets = Sockets(
            url=self.host.websocket_url,
            planner=self.planner,
            observer=self.observer,
            headers=self._socket_headers,
            connect=sockets_client.connect_socket,
            timeout=timeout,
            policy=sockets or SocketPolicy(),
            metadata=self.host.profile.metadata,
        )
        self.realtime = Realtime(self.host, self._realtime_headers, sockets_client.connect_socket)
        # What a Codex-route sibling (for openai-codex/ refs) is built from, when one is needed.
        self._codex_settings: dict[str, Any] = {
            "base_url": codex_base_url,
            "timeout": timeout,
            "deadline": deadline,
            "retry": self.retry,
            "continuations": continuations,
            "compaction": compaction,
            "catalog": self.catalog,
            "transport": self.mode,
            "http": self.transport,
            "sockets": sockets,
            "on_event": on_event,
            "debug": debug,
            "raw": raw,
            "tap": tap,
            "credentials": credentials,
            "context_cap": context_cap,
        }
        self._codex: OpenAI | None = None
        self._keyed: tuple[str | None, dict[str, str]] = (self.api_key, self._with_key(self.api_key))

    # ------------------------------------------------------------------------------- public API

    async def complete(self, request: Request | None = None, /, **settings: Any) -> Response:
        """One answer, whole. Cut-off answers are continued and merged; usage is summed and priced."""
        driver, settings = self._by_ref(request, settings)
        return await driver._complete_on(None, request, settings)

    async def stream(self, request: Request | None = None, /, **settings: Any) -> AsyncIterator[StreamEvent]:
        """The answer as neutral events. A failure after the stream started raises a typed error."""
        async for event in raising(self.events(request, **settings)):
            yield event

    async def events(self, request: Request | None = None, /, **settings: Any) -> AsyncIterator[StreamEvent]:
        """Like :meth:`stream`, but a failure after the stream started arrives as a
        :class:`StreamError` event rather than an exception (what a gateway needs to render it)."""
        driver, settings = self._by_ref(request, settings)
        async for event in driver._events_on(None, request, settings):
            yield event

    def session(self, *, warmup: bool = False, **defaults: Any) -> Session:
        """A conversation on one WebSocket: ``async with client.session(model=...) as s:`` then
        ``await s.complete(messages=...)`` or ``s.stream(...)``. ``defaults`` are settings every
        call takes unless it names its own; ``warmup`` primes the socket on entry."""
        return Session(self, warmup=warmup, defaults=defaults)

    async def warmup(self, request: Request | None = None, /, **settings: Any) -> bool:
        """Open a pooled socket ahead of the first call and prime it with ``generate: false``
        (instructions and tools, no input). Whether it worked; a failure is not raised."""
        driver, settings = self._by_ref(request, settings)
        return await driver._warmup_on(None, request, settings)

    # ------------------------------------------------------------- calls on a lease (sessions)

    async def _complete_on(
        self, lease: Lease | None, request: Request | None, settings: dict[str, Any]
    ) -> Response:
        """:meth:`complete` with its socket taken from ``lease`` (a session's; None: the pool)."""
        mode = _call_mode(settings)
        plan = self.planner.plan(request, settings, stream=False)
        route = self._route(plan, mode, lease)
        if self.deadline is None:  # the gateway's drivers: no timeout to arm and disarm per call
            response = await self._continued(plan, route)
        else:
            async with _deadline(self.deadline):
                response = await self._continued(plan, route)
        response.usage.cost = self.catalog.cost(response.model or plan.req.model, response.usage)
        return response

    async def _continued(self, plan: Plan, route: Route | None) -> Response:
        """The answer to ``plan``, continued and merged while it is cut off (as far as allowed)."""
        response = await self._call(plan, route)
        continued = 0
        while self.planner.should_continue(response, continued):
            continued += 1
            self.observer.emit(
                Continued(count=continued, reason="max_output_tokens", response_id=response.id)
            )
            plan = self.planner.continuation(plan, response)
            response = _merge(response, await self._call(plan, route))
        return response

    async def _events_on(
        self, lease: Lease | None, request: Request | None, settings: dict[str, Any]
    ) -> AsyncIterator[StreamEvent]:
        """:meth:`events` with its socket taken from ``lease`` (a session's; None: the pool)."""
        mode = _call_mode(settings)
        plan = self.planner.plan(request, settings, stream=True)
        route = self._route(plan, mode, lease)
        self.observer.emit(StreamStarted(model=plan.req.model))
        total = Usage()
        offset = continued = 0
        try:
            while True:
                acc = ResponseAccumulator()
                finish: Finish | None = None
                async for event in self._stream_call(plan, route):
                    if isinstance(event, Finish):
                        finish = event
                    elif isinstance(event, StreamError):
                        self.observer.emit(StreamAborted(error=event.error))
                        yield event
                        return
                    elif not isinstance(event, UsageUpdate):
                        acc.feed(event)
                        if not (continued and isinstance(event, Start)):
                            yield _shift(event, offset)
                assert finish is not None
                response = acc.result()
                response.stop_reason = finish.stop_reason
                total = total + (finish.usage or Usage())
                if not self.planner.should_continue(response, continued):
                    break
                continued += 1
                offset += acc.block_count
                self.observer.emit(
                    Continued(count=continued, reason="max_output_tokens", response_id=response.id)
                )
                plan = self.planner.continuation(plan, response)
            total.cost = self.catalog.cost(plan.req.model, total)
            yield UsageUpdate(usage=total)
            yield Finish(stop_reason=finish.stop_reason, usage=total, stop_sequence=finish.stop_sequence)
            self.observer.emit(StreamEnded(usage=total))
        except BaseException as exc:
            self.observer.emit(StreamAborted(error=exc))
            raise

    async def _warmup_on(
        self, lease: Lease | None, request: Request | None, settings: dict[str, Any]
    ) -> bool:
        """:meth:`warmup` for ``lease`` (a session's; None: the pool)."""
        mode = _call_mode(settings)
        plan = self.planner.plan(request, settings, stream=True)
        route = self._route(plan, mode, lease)
        return route is not None and await self.sockets.warm_up(plan, route.lease)

    def complete_sync(self, request: Request | None = None, /, **settings: Any) -> Response:
        """:meth:`complete` for code without an event loop."""

        async def run() -> Response:
            try:
                return await self.complete(request, **settings)
            finally:
                await self.aclose()

        return asyncio.run(run())

    def stream_sync(self, request: Request | None = None, /, **settings: Any) -> Iterator[StreamEvent]:
        """:meth:`stream` for code without an event loop."""
        with asyncio.Runner() as runner:
            events = cast(AsyncGenerator[StreamEvent, None], self.stream(request, **settings))
            try:
                while True:
                    try:
                        yield runner.run(events.__anext__())
                    except StopAsyncIteration:
                        return
            finally:
                runner.run(events.aclose())
                runner.run(self.aclose())

    async def embed(self, input: str | list[str], *, model: str, dimensions: int | None = None) -> Embeddings:
        """Embedding vectors for ``input``, fetched as base64 float32 (a quarter of the JSON size)."""
        body: dict[str, Any] = {"model": model, "input": input, "encoding_format": "base64"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        reply = await self._send("embeddings", model, orjson.dumps(body), stream=False)
        data = await read_json(reply)
        vectors = [_vector(item.get("embedding")) for item in sorted(data.get("data") or [], key=_index)]
        usage = Usage(input_tokens=(data.get("usage") or {}).get("prompt_tokens") or 0)
        usage.cost = self.catalog.cost(model, usage)
        return Embeddings(vectors=vectors, model=data.get("model") or model, usage=usage)

    async def list_models(self) -> list[str]:
        """The upstream's model ids (``GET /models``); the catalog learns them too.

        On the Codex route: its catalog, plus the models it serves that the catalog omits
        (:mod:`.codex_models`), listed only while the account is signed in.
        """
        if self.host.profile.codex_catalog:
            ids = await self._codex_models()
        else:
            reply = await self._send("models", "", None, stream=False, method="GET")
            listed = (await read_json(reply)).get("data") or []
            ids = [m["id"] for m in listed if isinstance(m, dict) and "id" in m]
        self.catalog.discover(ids)
        return ids

    async def _codex_models(self) -> list[str]:
        try:
            reply = await self._send("models", "", None, stream=False, method="GET", suffix=CATALOG_QUERY)
            listed = catalog_models(await read_json(reply))
        except (AuthenticationError, PermissionDeniedError):
            raise  # not signed in (or not any more): nothing is served, so nothing is listed
        except ModelwireError:
            listed = []  # signed in, but the catalog is out of reach: what we know is still served
        return with_served(listed)

    async def aclose(self) -> None:
        await self.sockets.aclose()
        await self.transport.aclose()

    def _by_ref(self, request: Request | None, settings: dict[str, Any]) -> tuple[OpenAI, dict[str, Any]]:
        """The driver for a call's model, and the settings it takes: an ``openai-codex/`` ref goes
        to the Codex route, with the ref's model name."""
        model = settings.get("model", request.model if request is not None else None)
        if not isinstance(model, str) or not model.startswith(CODEX_REF):
            return self, settings
        settings = {**settings, "model": model.removeprefix(CODEX_REF)}
        if self.host.profile.signs_in:
            return self, settings
        if self._codex is None:
            self._codex = OpenAI(host="codex", **self._codex_settings)
        return self._codex, settings

    async def __aenter__(self) -> OpenAI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -------------------------------------------------------------------------------------- calls

    def _route(self, plan: Plan, mode: TransportMode | None, lease: Lease | None) -> Route | None:
        """Whether a call goes over WebSocket (and with which socket), or over HTTP (None)."""
        mode = mode or self.mode
        if mode == "sse":
            return None
        if plan.wire.name != "openai_responses":
            if mode == "websocket":
                raise InvalidRequestError("transport='websocket' needs the Responses API", param="transport")
            return None
        if mode == "auto" and (not self.host.offers_websocket or self.sockets.cooldown.active):
            return None
        return Route(lease=lease or self.sockets.pool, forced=mode == "websocket")

    async def _call(self, plan: Plan, route: Route | None = None) -> Response:
        if self.host.profile.streams_only or route is not None:
            acc = ResponseAccumulator()
            async for event in self._stream_call(dataclasses.replace(plan, req=_streaming(plan.req)), route):
                if isinstance(event, StreamError):
                    raise event.error
                acc.feed(event)
            return acc.result()
        try:
            reply = await self._post(plan, stream=False)
        except PreviousResponseNotFound:
            if not plan.chained:
                raise
            return await self._call(self.planner.unchain(plan))
        started = time.monotonic()
        data = await read_json(reply, self.observer)
        response = plan.wire.decode_response(data)
        if plan.stops:
            _apply_stops(response, plan.stops)
        if self.observer.listening:
            self.observer.emit(
                ResponseReceived(
                    status=reply.status,
                    model=response.model,
                    latency=time.monotonic() - started,
                    request_id=reply.headers.get("x-request-id"),
                    usage=response.usage,
                )
            )
        return response

    async def _stream_call(self, plan: Plan, route: Route | None) -> AsyncIterator[StreamEvent]:
        """Events of one streamed call, over WebSocket when ``route`` says so, else SSE."""
        if route is None:
            events = self._sse_call(plan)
        else:
            events = self.sockets.events(plan, route, sse=self._sse_call)
        # Closed at once when the caller stops early (a stop sequence, a break): a socket with
        # frames still coming must be given up now, not whenever the generator is collected.
        async with contextlib.aclosing(events):
            async for event in _stop_stream(events, plan.stops) if plan.stops else events:
                yield event

    async def _sse_call(self, plan: Plan) -> AsyncGenerator[StreamEvent, None]:
        """Events of one call over SSE. Failures before the first event are retried by ``_send``;
        after it, they arrive as a :class:`StreamError`."""
        try:
            reply = await self._post(plan, stream=True)
        except PreviousResponseNotFound:
            if not plan.chained:
                raise
            plan = self.planner.unchain(plan)
            reply = await self._post(plan, stream=True)
        if "json" in reply.headers.get("content-type", ""):  # the server ignored stream=true
            for event in events_from_response(plan.wire.decode_response(await read_json(reply))):
                yield event
            return
        async for event in read_events(reply, plan.wire.stream_decoder(), self.observer):
            yield event

    async def _post(self, plan: Plan, *, stream: bool) -> Reply:
        body = orjson.dumps(self.planner.body(plan))
        if self.planner.capped:  # (most routes: no cap, no coroutine to make and await)
            await self.planner.check_fits(plan, body)
        return await self._send(plan.wire.endpoint, plan.req.model, body, stream=stream)

    async def _send(
        self,
        endpoint: Endpoint,
        model: str,
        body: bytes | None,
        *,
        stream: bool,
        method: str = "POST",
        suffix: str = "",
    ) -> Reply:
        """One request with retries; returns a reply whose status is a success.

        A signed-in route's 401 renews the token and sends again, once: the token may have been
        revoked early, or refreshed by another process. That resend is not a retry (no backoff,
        no attempt counted), and a second 401 is the answer.
        """
        url = self.host.url(endpoint, model, suffix)
        keyed = self._keyed_headers()
        headers = dict(keyed) if keyed is not None else {**self._headers, **await self._auth()}
        if stream:
            headers["Accept"] = "text/event-stream"
        if self.observer.tapped:
            self.observer.payload("request", url, headers, body or b"")
        attempt = 0
        renewed = False
        while True:
            if self.observer.listening:
                self.observer.emit(
                    RequestSent(url=url, model=model, api=endpoint, attempt=attempt, stream=stream)
                )
            try:
                return await observed_call(
                    self.transport, self.observer, method, url, headers, body, self.timeout
                )
            except AuthenticationError:
                if self.credentials is None or renewed:
                    raise
                renewed = True
                rejected = headers["Authorization"].removeprefix("Bearer ")
                headers.update(await self.credentials.renew(rejected))
            except ModelwireError as err:
                wait = self.retry.delay(attempt, err)
                if wait is None:
                    raise
                self.observer.emit(RetryScheduled(attempt=attempt + 1, delay=wait, error=err))
                await asyncio.sleep(wait)
                attempt += 1

    def _keyed_headers(self) -> dict[str, str] | None:
        """Every call's headers with the API key's, made once per key (``api_key`` is the caller's
        to change); None on a signed-in route, whose token is renewed as it goes."""
        if self.credentials is not None:
            return None
        key, headers = self._keyed
        if key is not self.api_key:
            headers = self._with_key(self.api_key)
            self._keyed = (self.api_key, headers)
        return headers

    def _with_key(self, key: str | None) -> dict[str, str]:
        return {**self._headers, **self.host.auth_headers(key)}

    async def _auth(self) -> dict[str, str]:
        return await self.credentials.headers() if self.credentials else self.host.auth_headers(self.api_key)

    async def _realtime_headers(self) -> dict[str, str]:
        headers = {**self._headers, **await self._auth()}
        headers.pop("Content-Type", None)
        return headers

    async def _socket_headers(self) -> dict[str, str]:
        """The handshake's headers: the HTTP ones (auth included) with the WebSocket beta, which
        replaces the Codex route's HTTP-only ``responses=experimental`` as the Codex CLI does, and
        joins a beta of the caller's own."""
        headers = {**self._headers, **await self._auth()}
        headers.pop("Content-Type", None)
        own = self._headers.get("OpenAI-Beta")
        headers["OpenAI-Beta"] = f"{own}, {BETA}" if own else BETA
        return headers


# ------------------------------------------------------------------------------------------ helpers


def _mode(mode: Any) -> TransportMode:
    if mode not in MODES:
        raise InvalidRequestError(
            f"transport must be one of {', '.join(MODES)}, not {mode!r}", param="transport"
        )
    return cast(TransportMode, mode)


def _call_mode(settings: dict[str, Any]) -> TransportMode | None:
    """A call's own ``transport=`` (taken out of its settings: it is no request field)."""
    mode = settings.pop("transport", None)
    return None if mode is None else _mode(mode)


def _apply_stops(response: Response, stops: list[str]) -> None:
    """Cut a whole response at its first stop sequence, as the upstream would have."""
    for i, part in enumerate(response.content):
        if isinstance(part, Text):
            text, hit = cut_at_stop(part.text, stops)
            if hit is not None:
                response.content = [*response.content[:i], Text(text=text)]
                response.stop_reason, response.stop_sequence = "stop", hit
                return


async def _stop_stream(events: AsyncIterator[StreamEvent], stops: list[str]) -> AsyncIterator[StreamEvent]:
    """Cut a stream at its first stop sequence and end it there, closing the upstream."""
    scanner = StopScanner(stops)
    texts: dict[int, list[str]] = {}
    async for event in events:
        if isinstance(event, BlockStart) and isinstance(event.part, Text):
            texts[event.index] = []
        elif isinstance(event, BlockDelta) and event.index in texts:
            shown = scanner.feed(event.text)
            if shown:
                texts[event.index].append(shown)
                yield BlockDelta(index=event.index, text=shown)
            if scanner.hit is not None:
                yield BlockStop(index=event.index, part=Text(text="".join(texts[event.index])))
                yield Finish(stop_reason="stop", stop_sequence=scanner.hit)
                return
            continue
        elif isinstance(event, BlockStop) and event.index in texts:
            held = scanner.flush()
            if held:
                yield BlockDelta(index=event.index, text=held)
        yield event


def _streaming(req: Request) -> Request:
    return dataclasses.replace(req, stream=True)


def _merge(first: Response, more: Response) -> Response:
    """One response from an answer and its continuation: text runs join, usage adds up."""
    content: list[Part] = list(first.content)
    for part in more.content:
        if isinstance(part, Text) and content and isinstance(content[-1], Text):
            content[-1] = Text(text=content[-1].text + part.text)
        else:
            content.append(part)
    return dataclasses.replace(
        more, content=content, usage=first.usage + more.usage, created=first.created or more.created
    )


def _shift(event: StreamEvent, offset: int) -> StreamEvent:
    if offset and isinstance(event, BlockStart | BlockDelta | BlockStop):
        return dataclasses.replace(event, index=event.index + offset)
    return event


def _vector(raw: Any) -> list[float]:
    if isinstance(raw, str):
        values = array.array("f")
        values.frombytes(base64.b64decode(raw))
        return values.tolist()
    if isinstance(raw, list):
        return [float(x) for x in raw]
    raise ProtocolError("upstream embedding is neither base64 nor a list of numbers")


def _index(item: dict[str, Any]) -> int:
    return int(item.get("index") or 0)


class _deadline:
    """``asyncio.timeout`` that raises modelwire's :class:`TimeoutError`."""

    def __init__(self, seconds: float) -> None:
        self._cm = asyncio.timeout(seconds)

    async def __aenter__(self) -> None:
        await self._cm.__aenter__()

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> None:
        try:
            await self._cm.__aexit__(kind, exc, tb)
        except builtins.TimeoutError as err:
            raise TimeoutError("the overall deadline passed") from err
