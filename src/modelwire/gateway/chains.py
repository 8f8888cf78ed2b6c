"""``previous_response_id`` for upstreams that keep no state.

Responses served by a stateless upstream (an OpenAI-compatible server, or a Chat upstream behind
the Responses surface) are stored by the gateway: the request's input items, already expanded,
and the output items. A later request naming one of them as ``previous_response_id`` gets its
input prefixed with that history. Recent responses are also kept in memory, so a client that
sends the next turn the instant a stream ends never races the database write, and writes go to
the store in batches, off the request path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from .store import Store, StoredResponse

log = logging.getLogger("modelwire.gateway")


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A request's ``input`` as a list of items (a bare string is one user message)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    return [item for item in raw or () if isinstance(item, dict)]


class Chains:
    def __init__(self, store: Store | None, *, memory: int = 2048, flush_seconds: float = 0.2) -> None:
        self.store = store
        self._recent: OrderedDict[str, StoredResponse] = OrderedDict()
        self._memory = memory
        self._unwritten: list[StoredResponse] = []
        self._flush_seconds = flush_seconds
        self._task: asyncio.Task[None] | None = None

    async def get(self, response_id: str) -> StoredResponse | None:
        found = self._recent.get(response_id)
        if found is None and self.store is not None:
            found = await asyncio.to_thread(self.store.get_response, response_id)
        return found

    async def history(self, response_id: str) -> list[dict[str, Any]] | None:
        """Every item of the conversation up to and including ``response_id``'s output."""
        stored = await self.get(response_id)
        if stored is None:
            return None
        return [*stored.input_items, *stored.output_items]

    def put(self, response: StoredResponse) -> None:
        """Remember ``response`` now, in memory; it reaches the store with the next batch."""
        self._recent[response.id] = response
        self._recent.move_to_end(response.id)
        while len(self._recent) > self._memory:
            self._recent.popitem(last=False)
        if self.store is not None:
            self._unwritten.append(response)
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._write_soon())

    async def _write_soon(self) -> None:
        await asyncio.sleep(self._flush_seconds)
        await self._write()

    async def _write(self) -> None:
        batch, self._unwritten = self._unwritten, []
        if not batch or self.store is None:
            return
        try:
            await asyncio.to_thread(self.store.put_responses, batch)
        except Exception:
            log.exception("could not store %d responses", len(batch))

    async def delete(self, response_id: str) -> bool:
        removed = self._recent.pop(response_id, None) is not None
        self._unwritten = [r for r in self._unwritten if r.id != response_id]
        if self.store is not None:
            removed = await asyncio.to_thread(self.store.delete_response, response_id) or removed
        return removed

    async def drain(self) -> None:
        """Write what is waiting (at shutdown: a clean stop loses nothing)."""
        if self._task is not None:
            self._task.cancel()
        await self._write()


def stored(
    body: dict[str, Any], items: list[dict[str, Any]], response: dict[str, Any], key_name: str | None
) -> StoredResponse:
    """What to keep of a served Responses request."""
    output = response.get("output")
    return StoredResponse(
        id=str(response.get("id")),
        key_name=key_name,
        model=str(response.get("model") or body.get("model") or ""),
        created_at=float(response.get("created_at") or time.time()),
        previous_response_id=body.get("previous_response_id"),
        input_items=items,
        output_items=[o for o in output if isinstance(o, dict)] if isinstance(output, list) else [],
        response=response,
        instructions=body.get("instructions") if isinstance(body.get("instructions"), str) else None,
    )
