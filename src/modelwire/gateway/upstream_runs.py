"""Background responses a native upstream runs: their usage, counted when they end.

A native upstream answers ``background: true`` at once, with the response queued and no usage, and
spends the tokens later. So that a key's token limits, budget and usage rows count them like any
other request, the replica that forwarded the request polls the upstream for the response (with
the upstream key that created it, as only that key's project sees it) until it ends, and only then
writes the request's one usage row. Polls start after a second and slow down to one every
:data:`MAX_POLL_SECONDS`.

When the upstream says no usage (a response cancelled early, or deleted meanwhile), or the
gateway stops or gives up first, the row counts the input offline, as for any request cut short:
a key's budget is charged its input rather than nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from ..dialects import openai_responses
from ..errors import ModelwireError, NotFoundError
from ..providers.transport import Transport
from ..providers.transport import call as upstream_call
from ..types import Usage
from .accounting import Accounting
from .call import Call
from .upstream import Backend

log = logging.getLogger("modelwire.gateway")

FIRST_POLL_SECONDS = 1.0
MAX_POLL_SECONDS = 15.0
GIVE_UP_SECONDS = 6 * 3600.0  # longer than any background response runs upstream
RUNNING = frozenset({"queued", "in_progress"})


class UpstreamRuns:
    def __init__(self, transport: Transport, accounting: Accounting) -> None:
        self.transport = transport
        self.accounting = accounting
        self._tasks: set[asyncio.Task[None]] = set()

    def settle_later(self, call: Call, backend: Backend, key_index: int, doc: dict[str, Any] | None) -> bool:
        """Whether ``doc``, a forwarded answer, is a background response still running upstream: its
        usage is then accounted when it ends (and not now)."""
        if doc is None or doc.get("background") is not True or doc.get("status") not in RUNNING:
            return False
        response_id = doc.get("id")
        if not isinstance(response_id, str) or not response_id:
            return False
        task = asyncio.ensure_future(self._settle(call, backend, key_index, response_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def stop(self) -> None:
        """At shutdown: stop polling; each request still running upstream is counted as cut."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _settle(self, call: Call, backend: Backend, key_index: int, response_id: str) -> None:
        usage: Usage | None = None
        try:
            usage = await self._final_usage(call, backend, key_index, response_id)
        except asyncio.CancelledError:
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            call.error = "shutdown"
        if usage is None or not usage.total_tokens:
            usage = await self.accounting.estimate(call)
        self.accounting.account(call, usage, call.status)

    async def _final_usage(
        self, call: Call, backend: Backend, key_index: int, response_id: str
    ) -> Usage | None:
        """The response's usage once it has ended upstream; None if it never says."""
        delay, deadline = FIRST_POLL_SECONDS, time.monotonic() + GIVE_UP_SECONDS
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, MAX_POLL_SECONDS)
            try:
                doc = await self._poll(call, backend, key_index, response_id)
            except NotFoundError:
                return None  # deleted upstream: it will not say any more
            except ModelwireError as err:  # a passing failure: ask again later
                log.debug("polling background response %s failed: %s", response_id, err)
                continue
            if doc.get("status") not in RUNNING:
                usage = doc.get("usage")
                return openai_responses.decode_usage(usage) if isinstance(usage, dict) else None
        log.warning("background response %s still runs upstream after %.0f s", response_id, GIVE_UP_SECONDS)
        return None

    async def _poll(self, call: Call, backend: Backend, key_index: int, response_id: str) -> dict[str, Any]:
        headers = backend.headers(key_index)
        headers["X-Client-Request-Id"] = call.request_id  # the request it polls for, in the upstream's logs
        reply = await upstream_call(
            self.transport,
            "GET",
            backend.host.url("response", suffix=response_id),
            headers,
            None,
            read_timeout=backend.config.timeout,
        )
        try:
            doc = orjson.loads(await reply.read())
        except orjson.JSONDecodeError:
            return {}
        return doc if isinstance(doc, dict) else {}
