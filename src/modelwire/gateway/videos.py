"""Video jobs: ``POST /v1/videos`` (text-to-video, or image-to-video with an ``input_reference``
upload), ``GET /v1/videos/{id}``, ``GET /v1/videos/{id}/content``, ``GET /v1/videos``,
``DELETE /v1/videos/{id}`` and ``POST /v1/videos/{id}/remix``.

A job lives on the backend (and under the upstream key) that created it, and its id is all a
client has. So the gateway writes down, in the store (``mw_videos``), which backend and key hold
each id and which client key created it, and commits that before the creating answer reaches the
client: a poll may land on another replica at once. Another client key asking for the id is told
it does not exist (404), as it would be by OpenAI for another project's video. A job created
outside the gateway is unknown to it (404) too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlencode

import orjson

from ..dialects.check import fail
from ..errors import InvalidRequestError, ModelwireError, NotFoundError, ServiceUnavailableError
from ..providers.transport import Transport
from . import http, relay
from .accounting import Accounting
from .admission import Admission
from .call import Call
from .config import Config
from .http import Receive, Scope, Send
from .media import DEFAULT_MODELS, Media
from .media_usage import measure
from .relay import Relayed, Sent, json_document, media_url
from .state import State
from .store import Store, describe_error
from .uploads import Upload
from .upstream import Backend, Failover, Outcome

T = TypeVar("T")
MAX_PAGE = 100
SECONDS = frozenset({"4", "8", "12"})


@dataclass(frozen=True, slots=True)
class VideoRecord:
    id: str
    key_name: str | None
    backend: str
    upstream_key: int
    model: str  # the public model name the client asked for
    created_at: float


@dataclass(eq=False)
class VideoBook:
    """The ``mw_videos`` table: which backend holds each video, and whose it is."""

    state: State

    async def put(self, record: VideoRecord) -> None:
        await self._run(lambda s: _put(s, record))

    async def get(self, video_id: str) -> VideoRecord | None:
        return await self._run(lambda s: _get(s, video_id))

    async def delete(self, video_id: str) -> None:
        await self._run(lambda s: _delete(s, video_id))

    async def page(
        self, key_name: str | None, after: str | None, limit: int, newest_first: bool
    ) -> list[VideoRecord]:
        return await self._run(lambda s: _page(s, key_name, after, limit, newest_first))

    async def _run(self, work: Callable[[Store], T]) -> T:
        store = self.state.store
        if store is None:
            raise ServiceUnavailableError("the gateway's store is not open yet", code="store_unavailable")
        try:
            return await asyncio.to_thread(work, store)
        except Exception as exc:  # whatever the database driver raises
            raise ServiceUnavailableError(
                f"the gateway's store is unreachable, so video jobs cannot be found or recorded "
                f"({describe_error(exc)}); retry shortly",
                code="store_unavailable",
            ) from None


_COLUMNS = ", ".join(f.name for f in dataclasses.fields(VideoRecord))


def _put(store: Store, record: VideoRecord) -> None:
    m = store.db.marker
    values = dataclasses.astuple(record)
    store.db.run([(f"INSERT INTO mw_videos ({_COLUMNS}) VALUES ({', '.join([m] * len(values))})", values)])


def _get(store: Store, video_id: str) -> VideoRecord | None:
    rows = store.db.rows(f"SELECT {_COLUMNS} FROM mw_videos WHERE id = {store.db.marker}", (video_id,))
    return VideoRecord(*rows[0]) if rows else None


def _delete(store: Store, video_id: str) -> None:
    store.db.run([(f"DELETE FROM mw_videos WHERE id = {store.db.marker}", (video_id,))])


def _page(
    store: Store, key_name: str | None, after: str | None, limit: int, newest_first: bool
) -> list[VideoRecord]:
    m = store.db.marker
    owner, params = ("key_name IS NULL", ()) if key_name is None else (f"key_name = {m}", (key_name,))
    where = owner
    if after is not None:
        found = store.db.rows(
            f"SELECT created_at FROM mw_videos WHERE id = {m} AND {owner}", (after, *params)
        )
        if found:
            where, params = (
                f"{owner} AND created_at {'<' if newest_first else '>'} {m}",
                (*params, found[0][0]),
            )
    order = "DESC" if newest_first else "ASC"
    sql = f"SELECT {_COLUMNS} FROM mw_videos WHERE {where} ORDER BY created_at {order}, id LIMIT {m}"
    return [VideoRecord(*row) for row in store.db.rows(sql, (*params, limit))]


@dataclass(eq=False)
class Videos:
    config: Config
    backends: dict[str, Backend]
    failover: Failover
    transport: Transport
    admission: Admission
    accounting: Accounting
    media: Media
    book: VideoBook

    # ------------------------------------------------------------------------------ create

    async def create(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """A new job, JSON or multipart (an ``input_reference`` file), failed over like any request."""
        upload: Upload | None = None
        try:
            content_type = dict(scope["headers"]).get(b"content-type", b"")
            if content_type.startswith(b"multipart/"):
                route, upload = await self.media.admit_form(
                    call, scope, receive, "video", self.config.media.video_max_bytes
                )
            else:
                route = await self.admission.admit(
                    call, scope, receive, default_model=DEFAULT_MODELS["video"]
                )
            check_video(call.body, upload)
            form = upload
            outcome = await self.failover.run(
                route.order(), lambda t, b, i: self.media.attempt(call, "video", form, t, b, i)
            )
            await self._answer_job(call, send, outcome)
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)
        finally:
            if upload is not None:
                self.media.done_with(call, scope, upload)

    async def _answer_job(self, call: Call, send: Send, outcome: Outcome[Sent]) -> None:
        """A new job's answer, sent once the store knows where the job lives."""
        sent = outcome.value
        assert sent.reply is not None
        call.served_by(outcome.target, outcome.backend)
        payload = await sent.reply.read()
        doc = json_document(payload)
        video_id = doc.get("id")
        if not isinstance(video_id, str) or not video_id:
            raise ModelwireError("the upstream answered a video job without an id", status=502)
        key_name = call.key.name if call.key else None
        record = VideoRecord(
            video_id, key_name, outcome.backend.name, sent.key_index, call.model, time.time()
        )
        await self.book.put(record)
        self.accounting.record("upstream_response", call, doc)
        await self.accounting.respond(call, send, 200, payload, self.accounting.served_headers(call, outcome))
        self.media.account(call, measure("video", call.body, Relayed(doc=doc)))

    # ---------------------------------------------------------------------- by id / list

    async def serve(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1/videos/{id}``, ``…/content`` and ``…/remix``, on the backend that holds the job."""
        video_id, _, action = scope["path"].removeprefix("/v1").removeprefix("/videos/").partition("/")
        method = scope["method"]
        handler = {
            ("GET", ""): self._retrieve,
            ("DELETE", ""): self._delete,
            ("GET", "content"): self._content,
            ("POST", "remix"): self._remix,
        }.get((method, action))
        if handler is None or not video_id:
            raise NotFoundError(f"no route for {method} {scope['path']}", code="unknown_url")
        try:
            record = await self._owned(call, scope, video_id)
            backend = self.backends.get(record.backend)
            if backend is None:  # the backend left the config since
                raise _not_found(video_id)
            await handler(call, scope, receive, send, record, backend)
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)

    async def _owned(self, call: Call, scope: Scope, video_id: str) -> VideoRecord:
        """The job, if it exists and is the calling key's (else 404, as for a job never made)."""
        await self.admission.authenticate(call, scope)
        self.accounting.bind(call)
        record = await self.book.get(video_id)
        if record is None or record.key_name != (call.key.name if call.key else None):
            raise _not_found(video_id)
        call.body = {"model": record.model}
        await self.admission.route(call, call.body)  # the key may still use the model; its limits
        return record

    async def _retrieve(
        self, call: Call, scope: Scope, receive: Receive, send: Send, record: VideoRecord, backend: Backend
    ) -> None:
        await self._relay(call, receive, send, record, backend, "GET", f"/{record.id}")

    async def _content(
        self, call: Call, scope: Scope, receive: Receive, send: Send, record: VideoRecord, backend: Backend
    ) -> None:
        variant = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("variant")
        query = "?" + urlencode({"variant": variant[0]}) if variant else ""
        await self._relay(call, receive, send, record, backend, "GET", f"/{record.id}/content", query=query)

    async def _delete(
        self, call: Call, scope: Scope, receive: Receive, send: Send, record: VideoRecord, backend: Backend
    ) -> None:
        reply = await relay.send(
            self.transport,
            call,
            backend,
            record.upstream_key,
            "DELETE",
            self._url(backend, record, f"/{record.id}"),
            None,
            None,
        )
        payload = await reply.read()
        json_document(payload)
        await self.book.delete(record.id)
        call.backend = backend.name
        await self.accounting.respond(call, send, 200, payload, [(b"x-request-id", call.request_id.encode())])
        self.accounting.account(call, None, 200)

    async def _remix(
        self, call: Call, scope: Scope, receive: Receive, send: Send, record: VideoRecord, backend: Backend
    ) -> None:
        raw = await http.read_body(
            receive, self.config.server.max_body_bytes, call.headers.get(b"content-length")
        )
        body = http.parse_json(raw)
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            fail("prompt", "is required (a string)")
        url = self._url(backend, record, f"/{record.id}/remix")
        reply = await relay.send(
            self.transport, call, backend, record.upstream_key, "POST", url, orjson.dumps(body)
        )
        target = self.admission.router.resolve(record.model).targets[0]
        outcome = Outcome(Sent(reply, target.model, key_index=record.upstream_key), target, backend, 1)
        await self._answer_job(call, send, outcome)

    async def _relay(
        self,
        call: Call,
        receive: Receive,
        send: Send,
        record: VideoRecord,
        backend: Backend,
        method: str,
        path: str,
        query: str = "",
    ) -> None:
        url = self._url(backend, record, path) + query
        reply = await relay.send(self.transport, call, backend, record.upstream_key, method, url, None, None)
        call.backend = backend.name
        served = [(b"x-request-id", call.request_id.encode())]
        await relay.relay(self.accounting, call, send, reply, served, receive)
        self.accounting.account(call, None, call.status if call.error else 200)

    def _url(self, backend: Backend, record: VideoRecord, suffix: str) -> str:
        return media_url(backend, "video", record.model, suffix)

    async def list(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        """The calling key's jobs, newest first (``order=asc`` for oldest), each as its backend
        says it is now; jobs their backend no longer knows are left out."""
        try:
            await self.admission.authenticate(call, scope)
            query = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode("latin-1")).items()}
            limit = _limit(query.get("limit"))
            newest_first = query.get("order", "desc") != "asc"
            key_name = call.key.name if call.key else None
            records = await self.book.page(key_name, query.get("after"), limit + 1, newest_first)
            found = await asyncio.gather(*(self._current(call, r) for r in records[:limit]))
        except ModelwireError as err:
            await self.accounting.failed(call, send, err)
            return
        data = [doc for doc in found if doc is not None]
        doc = {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": len(records) > limit,
        }
        await self.accounting.answer(call, send, doc)

    async def _current(self, call: Call, record: VideoRecord) -> dict[str, Any] | None:
        backend = self.backends.get(record.backend)
        if backend is None:
            return None
        try:
            reply = await relay.send(
                self.transport,
                call,
                backend,
                record.upstream_key,
                "GET",
                self._url(backend, record, f"/{record.id}"),
                None,
                None,
            )
            return json_document(await reply.read())
        except NotFoundError:
            return None


def check_video(body: dict[str, Any], upload: Upload | None) -> None:
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        fail("prompt", "is required (a string)")
    seconds = body.get("seconds")
    if seconds is not None and str(seconds) not in SECONDS:
        fail("seconds", "must be one of 4, 8, 12")
    if upload is not None:
        names = [f.name for f in upload.files]
        if any(n != "input_reference" for n in names):
            bad = next(n for n in names if n != "input_reference")
            fail(bad, "is not a file field of this endpoint (send the reference image as 'input_reference')")
        if len(names) > 1:
            fail("input_reference", "give one reference at most")


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise InvalidRequestError(f"limit: must be between 1 and {MAX_PAGE}", param="limit")
    return int(raw)


def _not_found(video_id: str) -> NotFoundError:
    return NotFoundError(f"No video found with id {video_id!r}.", code="video_not_found", param="video_id")
