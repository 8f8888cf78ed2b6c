"""The admin API (``/admin/v1/…``): keys, usage, the request log, backends and the loaded config,
as JSON, for admin keys only.

Every route is a row of :data:`ROUTES`: its method, path, handler, summary and the shapes it takes
and gives. Dispatch, the authorisation test that walks every route, and the OpenAPI document
(:mod:`.admin_openapi`) all read that one table. The operations themselves live in
:class:`Operations`, which the dashboard (:mod:`.dashboard`) calls too, so the API and the pages
can never disagree.

Nothing here is on the proxy path: the gateway hands a request over only after its own route
table missed, and every store read runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from ..errors import InvalidRequestError, ModelwireError, NotFoundError, ServiceUnavailableError
from ..observe import redact
from . import http
from .admin_auth import AdminGate
from .config import Config
from .database import StoreError
from .health import Dependencies
from .http import Receive, Scope, Send
from .metrics import Metrics
from .state import State
from .store import GROUPINGS, NO_GROUP, KeyRecord, UsageRow, describe_error, error_cause
from .upstream import Backend

log = logging.getLogger("modelwire.gateway")
PREFIX = "/admin/v1"
MAX_BODY = 64 * 1024
MASK = "****"
SECRET_FIELDS = frozenset({"key", "api_key", "api_keys", "headers"})
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_LOG_ROWS = 500
M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------------------------
# Shapes (request bodies are validated by these; the OpenAPI document is generated from them)
# ----------------------------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class KeyCreate(_Body):
    name: str = Field(min_length=1, max_length=200)
    models: list[str] = Field(default_factory=lambda: ["*"], description="globs of allowed models")
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    expires_in_seconds: float | None = Field(None, gt=0)
    admin: bool = Field(False, description="an operator's key: this API and /ui only")


class KeyUpdate(_Body):
    models: list[str] | None = Field(None, min_length=1)
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    budget_usd: float | None = Field(None, ge=0)
    expires_at: float | None = Field(None, description="Unix time; null: never")


class KeyView(BaseModel):
    id: str
    name: str
    prefix: str
    source: str
    admin: bool
    models: list[str]
    rpm: int | None
    tpm: int | None
    budget_usd: float | None
    spent_usd: float
    created_at: float | None
    expires_at: float | None
    state: str = Field(description="active | expired | revoked")


class CreatedKey(BaseModel):
    secret: str = Field(description="the key itself, shown only in this answer")
    key: KeyView


class UsageView(BaseModel):
    group: str
    requests: int
    errors: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: float
    p50_ms: float | None
    p95_ms: float | None


class RequestView(BaseModel):
    id: int = Field(description="row id: pass the last one as `before` for the next page")
    request_id: str
    time: float
    key: str | None
    model: str
    backend: str | None
    upstream_model: str | None
    dialect: str
    stream: bool
    status: int
    error: str | None
    latency_ms: float
    ttft_ms: float | None
    hops: int
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_usd: float | None


class RequestDetail(BaseModel):
    request_id: str
    records: list[RequestView]
    capture: list[dict[str, Any]] | None = Field(description="wire capture lines; null when capture is off")


class Revoked(BaseModel):
    revoked: str


class ListOf(BaseModel):
    data: list[Any]


# ----------------------------------------------------------------------------------------------
# Operations: what the API and the dashboard both do
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Operations:
    config: Config
    state: State
    backends: dict[str, Backend]
    metrics: Metrics
    dependencies: Dependencies

    def _store(self) -> Any:
        store = self.state.store
        if store is None:
            raise ModelwireError("the store is not open yet", status=503)
        return store

    async def keys(self, *, include_revoked: bool = False) -> list[KeyView]:
        store = self._store()
        records, spent = await asyncio.gather(
            asyncio.to_thread(store.list_keys, include_revoked=include_revoked),
            asyncio.to_thread(store.spent_by_key),
        )
        now = time.time()
        views = [_config_key_view(k, spent.get(k.name, 0.0)) for k in self.config.keys]
        return views + [_key_view(r, spent.get(r.name, 0.0), now) for r in records]

    async def create_key(self, body: KeyCreate) -> CreatedKey:
        expires = time.time() + body.expires_in_seconds if body.expires_in_seconds else None
        try:
            secret, record = await asyncio.to_thread(
                self._store().create_key,
                name=body.name,
                models=body.models,
                rpm=body.rpm,
                tpm=body.tpm,
                budget_usd=body.budget_usd,
                expires_at=expires,
                admin=body.admin,
            )
        except ValueError as exc:
            raise InvalidRequestError(str(exc), code="invalid_key") from None
        await self._keys_changed()
        return CreatedKey(secret=str(secret), key=_key_view(record, 0.0, time.time()))

    async def update_key(self, name_or_id: str, body: KeyUpdate) -> KeyView:
        changes = body.model_dump(exclude_unset=True)
        if "models" in changes and changes["models"] is None:
            raise InvalidRequestError("models: give at least one pattern", code="invalid_key")
        try:
            record = await asyncio.to_thread(self._store().update_key, name_or_id, changes)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), code="invalid_key") from None
        if record is None:
            raise _no_key(name_or_id)
        await self._keys_changed()
        spent = await asyncio.to_thread(self._store().spent_usd, record.name)
        return _key_view(record, spent, time.time())

    async def revoke_key(self, name_or_id: str) -> Revoked:
        if not await asyncio.to_thread(self._store().revoke_key, name_or_id):
            raise _no_key(name_or_id)
        await self._keys_changed()
        return Revoked(revoked=name_or_id)

    async def _keys_changed(self) -> None:
        """This process takes its own key change before it answers (other replicas within their
        poll): the key just made works on this replica's next request, whatever the poll's timing."""
        await asyncio.to_thread(self.state.keys.sync)

    async def usage(self, query: dict[str, str]) -> list[UsageView]:
        by = query.get("by", "day")
        if by not in GROUPINGS:
            raise InvalidRequestError(f"by must be one of {', '.join(GROUPINGS)}", param="by")
        since, until = _time(query, "since", "7d"), _time(query, "until", None)
        rows = await asyncio.to_thread(
            self._store().usage_summary, since=since or 0.0, until=until, by=by, **_filters(query)
        )
        return [_usage_view(r) for r in rows]

    async def requests(self, query: dict[str, str]) -> list[RequestView]:
        status = query.get("status") or None
        if status is not None and status not in ("ok", "error") and not status.isdigit():
            raise InvalidRequestError("status must be ok, error or an HTTP status", param="status")
        rows = await asyncio.to_thread(
            self._store().requests,
            limit=_int(query, "limit", 100, 1, MAX_LOG_ROWS),
            before=_int(query, "before", None, 1, None),
            since=_time(query, "since", None),
            until=_time(query, "until", None),
            status=status,
            request_id=query.get("request_id") or None,
            **_filters(query),
        )
        return [_request_view(row) for row in rows]

    async def request(self, request_id: str) -> RequestDetail:
        rows = await asyncio.to_thread(self._store().requests, request_id=request_id, limit=MAX_LOG_ROWS)
        capture = self.config.capture
        lines = (
            None
            if capture is None
            else await asyncio.to_thread(captured, Path(capture.path), capture.backups, request_id)
        )
        if not rows and not lines:
            raise NotFoundError(f"no request {request_id!r} in the log", code="request_not_found")
        return RequestDetail(request_id=request_id, records=[_request_view(r) for r in rows], capture=lines)

    def backends_report(self) -> dict[str, Any]:
        """Each backend's keys and cool-downs as this process sees them (each replica keeps its
        own), with the retries, failovers and cool-downs counted since it started."""
        counts = _backend_counts(self.metrics)
        now = time.monotonic()
        items = [_backend_view(name, b, now, counts.get(name, {})) for name, b in self.backends.items()]
        replica = f"{socket.gethostname()}:{os.getpid()}"
        return {"replica": replica, "dependencies": self.dependencies.report(), "data": items}

    def config_report(self) -> dict[str, Any]:
        """The loaded config with every secret masked: keys, upstream keys, headers, passwords."""
        doc = mask(self.config.model_dump(mode="json"))
        doc["store"] = _hide_password(self.config.store)
        if self.config.redis:
            doc["redis"] = _hide_password(self.config.redis)
        return {"source": self.config.source, "config": doc}


def _no_key(name_or_id: str) -> NotFoundError:
    return NotFoundError(f"no active store key named {name_or_id!r}", code="key_not_found")


def _state(revoked: bool, expires_at: float | None, now: float) -> str:
    if revoked:
        return "revoked"
    return "expired" if expires_at is not None and now >= expires_at else "active"


def _key_view(record: KeyRecord, spent: float, now: float) -> KeyView:
    return KeyView(
        id=record.id,
        name=record.name,
        prefix=record.prefix,
        source=record.source,
        admin=record.admin,
        models=list(record.models),
        rpm=record.rpm,
        tpm=record.tpm,
        budget_usd=record.budget_usd,
        spent_usd=spent,
        created_at=record.created_at,
        expires_at=record.expires_at,
        state=_state(record.revoked, record.expires_at, now),
    )


def _config_key_view(entry: Any, spent: float) -> KeyView:
    """A key from the config file: shown, never editable here, its secret never even in part."""
    return KeyView(
        id=f"config:{entry.name}",
        name=entry.name,
        prefix="",
        source="config",
        admin=entry.admin,
        models=list(entry.models),
        rpm=entry.rpm,
        tpm=entry.tpm,
        budget_usd=entry.budget_usd,
        spent_usd=spent,
        created_at=None,
        expires_at=None,
        state="active",
    )


def _usage_view(row: UsageRow) -> UsageView:
    return UsageView(
        group=row.group,
        requests=row.requests,
        errors=row.errors,
        input_tokens=row.input_tokens,
        cached_tokens=row.cached_tokens,
        output_tokens=row.output_tokens,
        reasoning_tokens=row.reasoning_tokens,
        cost_usd=row.cost,
        p50_ms=row.p50_ms,
        p95_ms=row.p95_ms,
    )


def _request_view(row: dict[str, Any]) -> RequestView:
    return RequestView(
        id=row["id"],
        request_id=row["request_id"],
        time=row["time"],
        key=row["key_name"],
        model=row["public_model"],
        backend=row["backend"],
        upstream_model=row["upstream_model"],
        dialect=row["dialect"],
        stream=bool(row["stream"]),
        status=row["status"],
        error=row["error"],
        latency_ms=row["latency_ms"],
        ttft_ms=row["ttft_ms"],
        hops=row["hops"],
        input_tokens=row["input_tokens"],
        cached_tokens=row["cached_tokens"],
        output_tokens=row["output_tokens"],
        reasoning_tokens=row["reasoning_tokens"],
        cost_usd=row["cost"],
    )


def _backend_counts(metrics: Metrics) -> dict[str, dict[str, float]]:
    """Retries, failovers (away from a backend) and key cool-downs per backend, from the metrics."""
    wanted = {
        "modelwire_retries_total": ("retries", "backend"),
        "modelwire_failovers_total": ("failovers", "from_backend"),
        "modelwire_upstream_key_cooldowns_total": ("cooldowns", "backend"),
    }
    counts: dict[str, dict[str, float]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            found = wanted.get(sample.name)
            if found is not None:
                name, label = found
                per = counts.setdefault(sample.labels.get(label, ""), {})
                per[name] = per.get(name, 0.0) + sample.value
    return counts


def _backend_view(name: str, backend: Backend, now: float, counts: dict[str, float]) -> dict[str, Any]:
    waits = backend.keys.cooling(now)
    usable = sum(1 for w in waits if w == 0)
    circuit = "closed" if usable == len(waits) else "open" if usable == 0 else "degraded"
    return {
        "name": name,
        "type": backend.config.type,
        "wire": backend.wire.name,
        "base_url": redact(backend.host.base_url),
        "configured": backend.missing_key is None,
        "circuit": circuit,
        "keys": [{"index": i, "cooldown_seconds": round(w, 3)} for i, w in enumerate(waits)],
        "retries": int(counts.get("retries", 0)),
        "failovers": int(counts.get("failovers", 0)),
        "cooldowns": int(counts.get("cooldowns", 0)),
    }


def mask(doc: Any, name: str = "") -> Any:
    """``doc`` with the value of every secret-bearing field replaced by a mask."""
    if name in SECRET_FIELDS and doc:
        if isinstance(doc, dict):
            return dict.fromkeys(doc, MASK)
        return [MASK for _ in doc] if isinstance(doc, list) else MASK
    if isinstance(doc, dict):
        return {k: mask(v, k) for k, v in doc.items()}
    if isinstance(doc, list):
        return [mask(v) for v in doc]
    return doc


def _hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads (a Redis URL with odd parts): show nothing of it
        return MASK


def captured(path: Path, backups: int, request_id: str) -> list[dict[str, Any]]:
    """The wire capture lines of one request, oldest file first (the capture rotates to .1, .2 …)."""
    needle = orjson.dumps({"request_id": request_id})[1:-1]
    found: list[dict[str, Any]] = []
    files = [path.with_name(f"{path.name}.{n}") for n in range(backups, 0, -1)] + [path]
    for file in files:
        try:
            with file.open("rb") as lines:
                found += [orjson.loads(line) for line in lines if needle in line]
        except FileNotFoundError:
            continue
    return found


def _filters(query: dict[str, str]) -> dict[str, str | None]:
    return {name: query.get(name) or None for name in ("key", "model", "backend")}


def _time(query: dict[str, str], name: str, default: str | None) -> float | None:
    """A time parameter: a Unix time, or a duration back from now (``24h``, ``7d``, ``30m``)."""
    text = query.get(name) or default
    if text is None:
        return None
    try:
        if text[-1:] in DURATION_UNITS:
            return time.time() - float(text[:-1]) * DURATION_UNITS[text[-1]]
        return float(text)
    except ValueError:
        raise InvalidRequestError(f"{name}: a Unix time or a duration like 24h", param=name) from None


def _int(query: dict[str, str], name: str, default: int | None, low: int, high: int | None) -> int | None:
    text = query.get(name)
    if not text:
        return default
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        bound = f" up to {high}" if high is not None else ""
        raise InvalidRequestError(f"{name}: a whole number from {low}{bound}", param=name)
    return int(text)


# ----------------------------------------------------------------------------------------------
# The route table and its dispatch
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    description: str
    where: str = "query"  # or "path"


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # segments in braces are path parameters
    handler: str  # the AdminAPI method that answers
    summary: str
    answer: type[BaseModel] | None  # the 2xx body's shape (None: free-form JSON object)
    body: type[BaseModel] | None = None
    params: tuple[Param, ...] = ()
    status: int = 200
    segments: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "segments", tuple(self.path.split("/")))

    def match(self, method: str, path: str) -> dict[str, str] | None:
        parts = path.split("/")
        if method != self.method or len(parts) != len(self.segments):
            return None
        found: dict[str, str] = {}
        for pattern, part in zip(self.segments, parts, strict=True):
            if pattern.startswith("{"):
                if not part:
                    return None
                found[pattern[1:-1]] = part
            elif pattern != part:
                return None
        return found


_KEY = Param("key", "the key's id or name", "path")
_WINDOW = (
    Param("since", "start: a Unix time or a duration back from now (24h, 7d); default 7d for usage"),
    Param("until", "end (exclusive): a Unix time or a duration back from now"),
    Param("key", f"only this key's requests ({NO_GROUP}: requests without a key)"),
    Param("model", "only this public model"),
    Param("backend", "only this backend"),
)
ROUTES: tuple[Route, ...] = (
    Route("GET", f"{PREFIX}/openapi.json", "openapi", "This document", None),
    Route(
        "GET",
        f"{PREFIX}/keys",
        "list_keys",
        "Client keys (never their secrets), with their spend",
        ListOf,
        params=(Param("all", "true: include revoked keys"),),
    ),
    Route(
        "POST",
        f"{PREFIX}/keys",
        "create_key",
        "Create a key; its secret is shown once",
        CreatedKey,
        KeyCreate,
        status=201,
    ),
    Route(
        "PATCH",
        f"{PREFIX}/keys/{{key}}",
        "update_key",
        "Change a key's models, limits or expiry",
        KeyView,
        KeyUpdate,
        (_KEY,),
    ),
    Route(
        "DELETE",
        f"{PREFIX}/keys/{{key}}",
        "revoke_key",
        "Revoke a key (every replica within a second)",
        Revoked,
        params=(_KEY,),
    ),
    Route(
        "GET",
        f"{PREFIX}/usage",
        "usage",
        "Requests, tokens, cost and latency, grouped",
        ListOf,
        params=(Param("by", f"one of {', '.join(GROUPINGS)} (default day)"), *_WINDOW),
    ),
    Route(
        "GET",
        f"{PREFIX}/requests",
        "requests",
        "The request log, newest first",
        ListOf,
        params=(
            *_WINDOW,
            Param("status", "ok, error, or one HTTP status"),
            Param("request_id", "one request"),
            Param("limit", f"rows, 1 to {MAX_LOG_ROWS} (default 100)"),
            Param("before", "rows older than this row id (paging)"),
        ),
    ),
    Route(
        "GET",
        f"{PREFIX}/requests/{{request_id}}",
        "request",
        "One request: its records and, when capture is on, its wire capture",
        RequestDetail,
        params=(Param("request_id", "the request's id", "path"),),
    ),
    Route(
        "GET", f"{PREFIX}/backends", "backends", "Backends: key cool-downs, circuit, retries, failovers", None
    ),
    Route("GET", f"{PREFIX}/config", "config", "The loaded config, secrets masked", None),
)


@dataclass(slots=True)
class AdminRequest:
    params: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any] | None


class AdminAPI:
    """Dispatches ``/admin/v1/…`` by :data:`ROUTES`, for admin keys only."""

    def __init__(self, ops: Operations, gate: AdminGate) -> None:
        self.ops = ops
        self.gate = gate
        self._openapi: bytes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            route, params = _find(scope["method"], scope["path"])
            await self.gate.admin_from_headers(scope)
            body = None
            if route.body is not None:
                raw = await http.read_body(receive, MAX_BODY, dict(scope["headers"]).get(b"content-length"))
                body = http.parse_json(raw)
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            handler: Callable[[AdminRequest], Awaitable[Any]] = getattr(self, route.handler)
            answer = await handler(AdminRequest(params, query, body))
        except ModelwireError as err:
            await respond_error(send, err)
            return
        except (SQLAlchemyError, StoreError) as exc:
            await respond_error(send, store_unreachable(exc))
            return
        await http.respond(send, route.status, _encode(answer), [(b"cache-control", b"no-store")])

    async def openapi(self, req: AdminRequest) -> Any:
        from .admin_openapi import document

        return document()

    async def list_keys(self, req: AdminRequest) -> Any:
        return ListOf(data=await self.ops.keys(include_revoked=req.query.get("all") == "true"))

    async def create_key(self, req: AdminRequest) -> Any:
        return await self.ops.create_key(parse_body(KeyCreate, req.body))

    async def update_key(self, req: AdminRequest) -> Any:
        return await self.ops.update_key(req.params["key"], parse_body(KeyUpdate, req.body))

    async def revoke_key(self, req: AdminRequest) -> Any:
        return await self.ops.revoke_key(req.params["key"])

    async def usage(self, req: AdminRequest) -> Any:
        return ListOf(data=await self.ops.usage(req.query))

    async def requests(self, req: AdminRequest) -> Any:
        return ListOf(data=await self.ops.requests(req.query))

    async def request(self, req: AdminRequest) -> Any:
        return await self.ops.request(req.params["request_id"])

    async def backends(self, req: AdminRequest) -> Any:
        return self.ops.backends_report()

    async def config(self, req: AdminRequest) -> Any:
        return self.ops.config_report()


def _find(method: str, path: str) -> tuple[Route, dict[str, str]]:
    allowed = False
    for route in ROUTES:
        params = route.match(method, path)
        if params is not None:
            return route, params
        allowed = allowed or route.match(route.method, path) is not None
    if allowed:
        raise ModelwireError(f"{method} is not allowed on {path}", status=405, code="method_not_allowed")
    raise NotFoundError(f"no admin route {method} {path}", code="unknown_url")


def parse_body(model: type[M], body: dict[str, Any] | None) -> M:
    try:
        return model.model_validate(body or {})
    except ValidationError as exc:
        problem = exc.errors()[0]
        where = ".".join(str(p) for p in problem["loc"]) or "body"
        raise InvalidRequestError(f"{where}: {problem['msg']}", param=where, code="invalid_body") from None


def _encode(answer: Any) -> bytes:
    if isinstance(answer, BaseModel):
        return answer.model_dump_json().encode()
    return orjson.dumps(answer)


def store_unreachable(exc: Exception) -> ServiceUnavailableError:
    """A store that failed an admin read or write: a 503 and one log line, never a traceback."""
    log.warning("admin request: the store failed: %s", describe_error(exc))
    return ServiceUnavailableError(f"the store is unreachable: {error_cause(exc)}", code="store_unavailable")


async def respond_error(send: Send, err: ModelwireError) -> None:
    doc = {"error": {"message": redact(err.message), "type": err.type, "code": err.code}}
    headers = [(b"cache-control", b"no-store")]
    if err.status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="modelwire admin"'))
    await http.respond(send, err.status, orjson.dumps(doc), headers)
