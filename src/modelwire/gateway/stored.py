"""``/v1/responses/{id}[/input_items]``: stored responses, from the gateway's store, or else from
the upstreams that store what they served themselves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ModelwireError, NotFoundError
from ..providers.transport import Transport
from ..providers.transport import call as upstream_call
from .accounting import Accounting
from .admission import Admission
from .call import Call
from .chains import owned
from .http import Receive, Scope, Send
from .state import State
from .store import StoredResponse
from .upstream import Backend


@dataclass(eq=False)
class StoredResponses:
    backends: dict[str, Backend]
    transport: Transport
    state: State
    admission: Admission
    accounting: Accounting

    async def serve(self, call: Call, scope: Scope, receive: Receive, send: Send) -> None:
        rest = scope["path"].removeprefix("/v1").removeprefix("/responses/")
        response_id, _, tail = rest.partition("/")
        await self.admission.authenticate(call, scope)
        found = await self.state.chains.get(response_id)
        if found is None or not owned(found, call.key):
            status, payload = await self._ask_upstreams(scope, rest)
            headers = [(b"x-request-id", call.request_id.encode())]
            await self.accounting.respond(call, send, status, payload, headers)
            return
        doc = await self._document(found, scope["method"], tail, scope["path"])
        await self.accounting.answer(call, send, doc)

    async def _document(self, found: StoredResponse, method: str, tail: str, path: str) -> dict[str, Any]:
        if method == "DELETE" and not tail:
            await self.state.chains.delete(found.id)
            return {"id": found.id, "object": "response", "deleted": True}
        if method == "GET" and tail == "input_items":
            items = [{"id": i.get("id") or f"item_{n}", **i} for n, i in enumerate(found.input_items)]
            first, last = (items[0]["id"], items[-1]["id"]) if items else (None, None)
            return {"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": False}
        if method == "GET" and not tail:
            return found.response
        raise NotFoundError(f"no route for {method} {path}", code="unknown_url")

    async def _ask_upstreams(self, scope: Scope, rest: str) -> tuple[int, bytes]:
        """The first storing upstream's answer about a response it stored (GET, DELETE, cancel)."""
        query = scope.get("query_string", b"").decode("latin-1")
        for backend in self.backends.values():
            if not (backend.chains and backend.passthrough):
                continue
            url = backend.host.url("response", suffix=rest)
            if query:
                url += ("&" if "?" in url else "?") + query
            try:
                reply = await upstream_call(
                    self.transport,
                    scope["method"],
                    url,
                    backend.headers(0),
                    None,
                    read_timeout=backend.config.timeout,
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
