"""Admission: who is asking, for what, and whether they may. A request is admitted once its key is
found (or the gateway is open), its body is read and checked, its model resolves to a route the key
may use, and the key's limits let it through; only then does anything go upstream."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    AuthenticationError,
    InvalidRequestError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
)
from . import http
from .accounting import Accounting
from .auth import ClientKey, extract_key
from .call import Call
from .chains import input_items, owned
from .config import Config
from .health import Dependencies
from .http import Receive, Scope
from .lockout import Lockout
from .routing import Route, Router
from .state import State
from .store import describe_error
from .sync import StoreSync


@dataclass(eq=False)
class Admission:
    config: Config
    router: Router
    state: State
    lockout: Lockout
    sync: StoreSync
    dependencies: Dependencies
    accounting: Accounting
    _budget_seeded: set[str] = field(default_factory=set, init=False)

    async def admit(
        self,
        call: Call,
        scope: Scope,
        receive: Receive,
        from_path: tuple[str, bool] | None = None,
        default_model: str | None = None,
    ) -> Route:
        """Authenticate, read and check the request; the route it will take. ``from_path`` is the
        model and stream flag of dialects that say them in the URL (Gemini); ``default_model`` is
        the endpoint's own when the body names none (media)."""
        call.headers = headers = await self.authenticate(call, scope)
        raw = await http.read_body(receive, self.config.server.max_body_bytes, headers.get(b"content-length"))
        self.accounting.bind(call)
        self.accounting.record("client_request", call, raw, url=scope["path"], client=call.client)
        call.body = body = http.parse_json(raw)
        if from_path is not None:
            body["model"], body["stream"] = from_path
        if default_model is not None and body.get("model") is None:
            body["model"] = default_model
        return await self.route(call, body)

    async def route(self, call: Call, body: dict[str, Any]) -> Route:
        """A read request's route, once its fields are checked, its key may use its model and its
        limits let it through."""
        call.model = model = _model_of(body)
        stream = body.get("stream", False)
        if not isinstance(stream, bool) and stream is not None:
            raise InvalidRequestError("stream: expected a boolean", param="stream")
        call.stream = bool(stream)
        call.surface.check(body)
        route = self.router.resolve(model)
        self._authorize(call.key, model, route)
        await self._limit(call.key)
        if call.trace is not None:
            call.trace.admitted(call)
        return route

    async def allow_model(self, call: Call, model: Any) -> Route:
        """An authenticated request whose model is not in a JSON body (a Realtime socket's
        ``?model=``, a client secret's ``session.model``): its route, if the key may use it now."""
        call.model = model = _model_of({"model": model})
        route = self.router.resolve(model)
        self._authorize(call.key, model, route)
        await self.limit(call.key)
        return route

    async def limit(self, key: ClientKey | None) -> None:
        """The key's rpm, tpm and budget, for one more request (a Realtime ``response.create``)."""
        await self._limit(key)

    async def permit(self, call: Call, scope: Scope, body: dict[str, Any]) -> None:
        """A request that goes nowhere upstream (a WebSocket warm-up) is still only for a valid key
        allowed its model."""
        await self.authenticate(call, scope)
        model = _model_of(body)
        self._authorize(call.key, model, self.router.resolve(model))

    async def authenticate(self, call: Call, scope: Scope) -> dict[bytes, bytes]:
        """Find the request's client key (``call.key``); the request headers, for the caller."""
        headers = dict(scope["headers"])
        keys = self.state.keys
        if keys.open:
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
        key = keys.lookup(secret)
        if key is None:
            await self.sync.check_for_new_key()  # a key created a moment ago works at once
            key = self.state.keys.lookup(secret)
        if key is None:
            self.lockout.failure(call.client)
            raise AuthenticationError("invalid API key", code="invalid_api_key")
        if key.expired(time.time()):
            raise AuthenticationError(f"the API key {key.name!r} has expired", code="expired_api_key")
        self.lockout.success(call.client)
        call.key = key
        return headers

    async def expand_chain(self, call: Call) -> None:
        """A ``previous_response_id`` the gateway stored: the whole input it stands for; and the
        items that ``item_reference`` inputs name, where the gateway stored them."""
        previous = call.body.get("previous_response_id")
        if previous is not None:
            await self._expand_previous(call, previous)
            if call.items is None:
                return  # a chain the upstream keeps: so are its items
        raw = call.body.get("input")
        if isinstance(raw, list) and any(type(i) is dict and i.get("type") == "item_reference" for i in raw):
            await self._resolve_references(call)

    async def _expand_previous(self, call: Call, previous: object) -> None:
        if call.socket is not None and call.socket.items is not None:  # the client socket's memory
            call.items = call.socket.items
            return
        if not isinstance(previous, str):
            raise InvalidRequestError("previous_response_id: expected a string", param="previous_response_id")
        found = await self.state.chains.get(previous)
        if found is not None and owned(found, call.key):
            call.items = [*found.history, *input_items(call.body)]

    async def _resolve_references(self, call: Call) -> None:
        """Each reference to an output item the gateway stored (for this key) becomes that item;
        the first one it holds nowhere is noted, for an upstream that cannot resolve it either."""
        items = call.items if call.items is not None else input_items(call.body)
        held: dict[str, dict[str, Any]] = {}  # a conversation's references mostly share responses
        resolved = []
        for index, item in enumerate(items):
            if item.get("type") != "item_reference":
                resolved.append(item)
                continue
            ref = item.get("id")
            if not isinstance(ref, str) or not ref:
                raise InvalidRequestError(f"input[{index}].id: expected a string", param=f"input[{index}].id")
            if ref not in held:
                found = await self.state.chains.holding(ref)
                if found is not None and owned(found, call.key):
                    held.update(found.output_items_by_id())
            if ref in held:
                resolved.append(held[ref])
            else:
                resolved.append(item)
                call.missing_item = call.missing_item or ref
        call.items = resolved

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
        refusal = await self.state.limiter.admit(key.policy)
        if refusal is not None:
            kind = ServiceUnavailableError if refusal.status == 503 else RateLimitError
            raise kind(refusal.message, retry_after=refusal.retry_after, code=refusal.code)

    async def _seed_budget(self, key: ClientKey) -> None:
        """A budget is spending across restarts: start from what the usage records say. Until the
        store can say, the key is refused rather than let it spend blind."""
        store = self.state.store
        assert store is not None
        try:
            spent = await asyncio.to_thread(store.spent_usd, key.name)
        except Exception as exc:  # whatever the database driver raises
            self.dependencies.mark("store", False, describe_error(exc))
            raise ServiceUnavailableError(
                f"the key {key.name!r} has a budget and the gateway's store is unreachable, so its "
                "spending cannot be checked; retry shortly",
                code="store_unavailable",
            ) from None
        await self.state.limiter.seed_spend(key.policy, spent)
        self._budget_seeded.add(key.name)


def _model_of(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: is required (a string naming the model)", param="model")
    return model
