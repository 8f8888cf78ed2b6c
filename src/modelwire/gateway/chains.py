"""``previous_response_id`` for upstreams that keep no state.

Responses served by a stateless upstream (an OpenAI-compatible server, or a Chat upstream behind
the Responses surface) are stored by the gateway: the request's input items, already expanded,
and the output items. A later request naming one of them as ``previous_response_id`` gets its
input prefixed with that history, and an input ``{"type": "item_reference", "id": …}`` naming one
of their output items (as the Vercel AI SDK resends earlier answers) is replaced by that item.

Several replicas may share one PostgreSQL store, and a client may send its next turn to any of
them the instant it has the previous response. So the gateway awaits :meth:`Chains.put` before it
releases a response's final bytes: ``put`` returns once the response is committed. To keep that
cheap, puts are group-committed: one writer task writes everything that arrived while its previous
transaction ran, so under load the cost is one transaction per batch, and a lone request pays
about one write. Recent responses are also kept in memory (as their encoded rows, within a count
and a size), so a follow-up reaching the same replica never touches the database.

Each transaction has a price of its own beyond its rows (with two workers on one SQLite file, a
commit per handful of answers took a fifth of a Responses → Chat request's CPU), so while other
requests are in flight the writer first waits as long as their answers keep arriving (a millisecond
at a time, ``gather`` at most): one commit then settles them all, and a lone request is written at
once.

Waiting is only worth its cost when another process could serve the follow-up: with one process on
a SQLite file (``shared=False``) memory already answers every follow-up, so ``put`` returns at once
and the writer lingers to gather a batch, as it did before replicas could share a store.

When the store is down, ``put`` neither raises nor hangs: the response stays in memory (this
replica still chains it) and is retried in the background, with backoff and a bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import ServiceUnavailableError
from .database import StoreError
from .store import PackedResponse, Store, StoredResponse, describe_error

if TYPE_CHECKING:
    from .auth import ClientKey

log = logging.getLogger("modelwire.gateway")

T = TypeVar("T")

GATHER_STEP = 0.001  # seconds without a new answer that end a gather
STORE_DOWN = "the gateway's store is unreachable, so previous_response_id cannot be resolved; retry shortly"


def owned(found: StoredResponse, key: ClientKey | None) -> bool:
    """A stored response belongs to the key that made it: to another key it does not exist."""
    return found.key_name == (key.name if key else None)


def input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A request's ``input`` as a list of items (a bare string is one user message)."""
    raw = body.get("input")
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}]
    return [item for item in raw or () if isinstance(item, dict)]


@dataclass(slots=True)
class _Entry:
    """A response waiting for the store, and the puts waiting for it to be committed."""

    response: PackedResponse
    waiters: list[asyncio.Future[bool]] = field(default_factory=list)

    def settle(self, written: bool) -> None:
        for waiter in self.waiters:
            if not waiter.done():  # a put that timed out or was cancelled stopped listening
                waiter.set_result(written)
        self.waiters.clear()


class Chains:
    """Stored responses: in memory for this replica, in the store for every replica.

    ``max_wait`` bounds how long a put waits for a slow store; after that (or once a write has
    failed) the store counts as unhealthy, one warning is logged, and puts return at once until a
    write succeeds again. ``max_pending`` bounds what waits for the store; beyond it the oldest
    are dropped (and counted in ``dropped``), though memory may still hold them.

    Memory keeps the ``memory`` most recent responses, fewer when together they weigh more than
    ``memory_bytes`` encoded: a response holds its whole conversation, and an agent's turns run to
    hundreds of kB each, so a count alone would not bound it. It is a cache in front of the store
    (what waits for the store is kept apart, up to ``max_pending``): a follow-up to an older
    response costs one store read. 512 rather than 2,048: after a burst of Responses → Chat the
    larger count held ~4 MiB more of a gateway's resident memory, to spare reads of responses many
    seconds old.
    """

    def __init__(
        self,
        store: Store | None,
        *,
        memory: int = 512,
        memory_bytes: int = 32 * 1024 * 1024,
        max_pending: int = 10_000,
        max_batch: int = 500,
        max_wait: float = 1.0,
        retry_seconds: float = 0.25,
        max_backoff: float = 5.0,
        shared: bool = True,
        linger: float = 0.2,
        gather: float = 0.005,
        in_flight: Callable[[], int] = lambda: 0,
    ) -> None:
        if max_pending < 1 or max_batch < 1 or max_wait <= 0 or retry_seconds <= 0:
            raise ValueError("max_pending and max_batch must be at least 1; waits must be positive")
        self.store = store
        self.dropped = 0
        self._memory = memory
        self._memory_bytes = memory_bytes
        self._max_pending = max_pending
        self._max_wait = max_wait
        self._retry_seconds = retry_seconds
        self._max_backoff = max(max_backoff, retry_seconds)
        self._shared = shared  # another process may serve a follow-up: puts wait for the commit
        self._linger = linger
        self._gather = gather
        self._requests = in_flight  # the process's requests in flight, whose answers may join a commit
        # SQLite reads run on the loop: measured cheaper than a worker thread (see _call).
        self._on_loop = store is not None and store.dialect == "sqlite"
        self._max_batch = max_batch
        self._recent: OrderedDict[str, PackedResponse] = OrderedDict()
        self._recent_bytes = 0
        self._holders: dict[str, str] = {}  # output item id -> the recent response holding it
        self._deletions: int | None = None  # the store's deletion counter, as last seen
        self._queue: OrderedDict[str, _Entry] = OrderedDict()
        self._in_flight: dict[str, _Entry] = {}
        self._deleted_in_flight: set[str] = set()
        self._flight_done: asyncio.Event | None = None
        self._healthy = True
        self._stopping = False
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- state for metrics and readiness ----------------------------------------------------------

    @property
    def pending(self) -> int:
        """Responses not yet in the store, including a batch being written right now."""
        return len(self._queue) + len(self._in_flight)

    @property
    def healthy(self) -> bool:
        """False from a failed or overdue write until a write succeeds again."""
        return self._healthy

    @property
    def shared(self) -> bool:
        """Whether another process may serve requests on the same store (a replica, a worker)."""
        return self._shared

    # -- reading ------------------------------------------------------------------------------------

    async def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, from memory when this replica has it, else from the store.

        Raises :class:`ServiceUnavailableError` (503) when the store cannot be read: "not found"
        would be a lie the client cannot tell from a genuinely unknown id.
        """
        found = self._in_memory(response_id)
        if found is not None or self.store is None:
            return found
        return await self._read(self.store.get_response, response_id)

    async def holding(self, item_id: str) -> StoredResponse | None:
        """The stored response with an output item of id ``item_id`` (an ``item_reference``), from
        memory or the store; raises as :meth:`get` does."""
        holder = self._holders.get(item_id)
        found = self._in_memory(holder) if holder is not None else None
        if found is not None or self.store is None:
            return found
        return await self._read(self.store.get_response_holding, item_id)

    async def _read(self, read: Callable[[str], StoredResponse | None], key: str) -> StoredResponse | None:
        try:
            return await self._call(read, key)
        except StoreError as exc:
            log.debug("store read failed: %s", describe_error(exc))
            raise ServiceUnavailableError(STORE_DOWN, code="store_unavailable", retry_after=1.0) from None

    async def fresh(self, response_id: str) -> StoredResponse | None:
        """What the store itself holds now, past this replica's memory: another replica may have
        changed it since (cancelled or deleted a background response). Raises what the store raises."""
        if self.store is None:
            return self._in_memory(response_id)
        return await self._call(self.store.get_response, response_id)

    def note_deletions(self, counter: int) -> None:
        """The store's deletion counter, as the gateway polls it: when another replica deleted a
        response, what this one remembers may be stale, so it asks the store again (responses still
        waiting to be written are not forgotten). The first reading is no baseline for what memory
        took before it: a deletion may have come in between, so that is asked of the store again too."""
        if counter != self._deletions:
            self._recent.clear()
            self._recent_bytes = 0
            self._holders.clear()
            for entry in (*self._in_flight.values(), *self._queue.values()):  # found nowhere else yet
                self._remember(entry.response)
        self._deletions = counter

    def _in_memory(self, response_id: str) -> StoredResponse | None:
        """Recent responses, and every one still waiting for the store (memory may have let it go)."""
        found = self._recent.get(response_id)
        if found is None:
            entry = self._queue.get(response_id) or self._in_flight.get(response_id)
            found = entry.response if entry is not None else None
        return found.unpack() if found is not None else None

    # -- writing ------------------------------------------------------------------------------------

    async def put(self, response: StoredResponse) -> bool:
        """Remember ``response`` and return once it is committed to the store.

        True when it is in the store; False when it is kept in memory only for now (no store, the
        store is down or slower than ``max_wait``, or the response was deleted or dropped before it
        was written). Never raises for a store failure; a cancelled caller leaves the write queued.
        """
        packed = PackedResponse.pack(response)
        self._remember(packed)
        if self.store is None:
            return False
        waiter = self._enqueue(packed)
        self._wake.set()  # during an outage this does not cut the writer's backoff short
        if not self._healthy or not self._shared:
            return False  # an outage is known, or memory answers every follow-up: no wait
        try:
            async with asyncio.timeout(self._max_wait):
                return await waiter
        except TimeoutError:
            self._mark_unhealthy(f"no commit within {self._max_wait:g} s")
            return False

    def _remember(self, response: PackedResponse) -> None:
        replaced = self._recent.pop(response.id, None)
        if replaced is not None:
            self._forget(replaced)
        self._recent[response.id] = response
        self._recent_bytes += response.size
        for item_id in response.item_ids:
            self._holders[item_id] = response.id
        while self._recent and (len(self._recent) > self._memory or self._recent_bytes > self._memory_bytes):
            self._forget(self._recent.popitem(last=False)[1])

    def _forget(self, response: PackedResponse) -> None:
        self._recent_bytes -= response.size
        for item_id in response.item_ids:
            if self._holders.get(item_id) == response.id:
                del self._holders[item_id]

    def _enqueue(self, response: PackedResponse) -> asyncio.Future[bool]:
        """Queue ``response`` (a newer version replaces a queued one) and start the writer if needed."""
        entry = self._queue.get(response.id)
        if entry is None:
            entry = self._queue[response.id] = _Entry(response)
        else:
            entry.response = response
            self._queue.move_to_end(response.id)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        self._bound()
        if self._task is None or self._task.done():
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="modelwire-chains-writer")
        return waiter

    def _bound(self) -> None:
        while len(self._queue) > self._max_pending:
            _, oldest = self._queue.popitem(last=False)
            oldest.settle(False)
            self.dropped += 1

    async def _run(self) -> None:
        """The single writer: each pass commits everything queued meanwhile (group commit)."""
        delay = self._retry_seconds
        while not self._stopping:
            if not self._queue:
                await self._wake.wait()
                self._wake.clear()
                if not self._shared:
                    await self._pause(self._linger)  # nobody waits: gather a batch
                else:
                    await self._gather_puts()
            elif await self._write_batch():
                delay = self._retry_seconds
                await asyncio.sleep(0)  # the settled puts' requests go on before the next batch is built
            else:
                await self._pause(delay)
                delay = min(delay * 2, self._max_backoff)

    async def _gather_puts(self) -> None:
        """While answers keep arriving, wait for more in steps of a millisecond, up to ``gather``;
        at once when no other request is in flight to send one, or when nothing is queued (a wake
        whose put went out with the previous write)."""
        waited, seen = 0.0, len(self._queue)
        while 0 < seen < self._requests() and waited < self._gather and not self._stopping:
            await asyncio.sleep(GATHER_STEP)
            waited += GATHER_STEP
            if len(self._queue) == seen:
                return  # a lull: whoever else is in flight is not about to answer
            seen = len(self._queue)

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` (a backoff, a linger); only drain() cuts it short, so an outage is not
        hammered."""
        try:
            async with asyncio.timeout(delay):
                await self._stop.wait()
        except TimeoutError:
            pass

    async def _write_batch(self) -> bool:
        """Write the oldest queued responses in one transaction; settle their puts either way."""
        assert self.store is not None
        batch = self._take_batch()
        self._flight_done = done = asyncio.Event()
        try:
            # Built here, run in a thread with the GIL released: a write and its fsync on the loop
            # stalled every request for milliseconds.
            statements = self.store.response_statements([e.response for e in batch])
            await asyncio.to_thread(self.store.run_statements, statements)
        except Exception as exc:
            self._requeue(batch)
            self._mark_unhealthy(describe_error(exc))
            return False
        else:
            self._mark_healthy()
            for entry in batch:
                entry.settle(True)
            return True
        finally:
            self._in_flight.clear()
            self._deleted_in_flight.clear()
            done.set()

    def _take_batch(self) -> list[_Entry]:
        size = min(self._max_batch, len(self._queue))
        batch = [self._queue.popitem(last=False)[1] for _ in range(size)]
        self._in_flight = {entry.response.id: entry for entry in batch}
        return batch

    def _requeue(self, batch: list[_Entry]) -> None:
        """Put a failed batch back at the front, oldest first, unless deleted or superseded since."""
        for entry in reversed(batch):
            rid = entry.response.id
            entry.settle(False)  # its callers return now; the write is retried in the background
            if rid in self._deleted_in_flight or rid in self._queue:
                continue
            self._queue[rid] = entry
            self._queue.move_to_end(rid, last=False)
        self._bound()

    def _mark_unhealthy(self, cause: str) -> None:
        """One warning per outage; retries during it stay quiet."""
        if self._healthy:
            self._healthy = False
            log.warning(
                "store write of stored responses failed (%s); %d kept in memory and retried",
                cause,
                self.pending,
            )
        else:
            log.debug("store write of stored responses failed again: %s", cause)

    def _mark_healthy(self) -> None:
        if not self._healthy:
            self._healthy = True
            log.info(
                "store writes of stored responses recovered; %d pending, %d dropped during the outage",
                self.pending,
                self.dropped,
            )

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a store read or delete: on the loop for SQLite, in a worker thread for PostgreSQL.

        A small SQLite statement on a local file costs less than handing it to a thread (0.25-0.33 ms
        against 0.43-0.58 ms, measured on an awaited put). The price: a SQLite file locked by another
        process blocks the loop for up to sqlite3's busy timeout. A PostgreSQL round trip waits on
        the network, which the loop must not. Batched writes always go to a thread (_write_batch).
        """
        if self._on_loop:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    # -- deleting and stopping ----------------------------------------------------------------------

    async def delete(self, response_id: str) -> bool:
        """Forget a response everywhere; a write still pending for it never lands afterwards.

        Raises :class:`ServiceUnavailableError` (503) when the store cannot be reached, since the
        store may hold a copy another replica would still serve.
        """
        recent = self._recent.pop(response_id, None)
        if recent is not None:
            self._forget(recent)
        removed = recent is not None
        queued = self._queue.pop(response_id, None)
        if queued is not None:
            queued.settle(False)
            removed = True
        if response_id in self._in_flight and self._flight_done is not None:
            # It may be committing right now: let that finish (and not be retried), then delete.
            self._deleted_in_flight.add(response_id)
            removed = True
            await self._flight_done.wait()
        if self.store is None:
            return removed
        try:
            return await self._call(self.store.delete_response, response_id) or removed
        except StoreError as exc:
            log.debug("store delete failed: %s", describe_error(exc))
            raise ServiceUnavailableError(STORE_DOWN, code="store_unavailable", retry_after=1.0) from None

    async def drain(self) -> None:
        """At shutdown: stop the writer and write everything pending (a clean stop loses nothing)."""
        self._stopping = True
        self._stop.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        while self._queue and await self._write_batch():
            pass
        if self.pending:
            log.error("stopped with %d stored responses unwritten (store unreachable)", self.pending)
        self._stop.clear()


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
