"""Stored responses for ``previous_response_id`` across replicas, on a SQLite file and PostgreSQL.

Two :class:`Chains` over two :class:`Store` objects on one database stand for two gateway replicas.
PostgreSQL tests isolate themselves with a fresh schema per test, dropped afterwards (the same
pattern as tests/test_store.py, repeated here so the files stay independent).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelwire.errors import ServiceUnavailableError
from modelwire.gateway import chains as chains_module
from modelwire.gateway.chains import GATHER_STEP, Chains
from modelwire.gateway.database import StoreError
from modelwire.gateway.store import Statements, Store, StoredResponse

from .services import shared_stores

GATEWAY_LOG = "modelwire.gateway"

StoreFactory = Callable[..., Store]
ChainsFactory = Callable[..., Chains]


# ----------------------------------------------------------------------------------------------
# Stores that misbehave on demand
# ----------------------------------------------------------------------------------------------


def _down() -> StoreError:
    """What the store raises when the database refuses connections; a driver's text may go on to
    quote the statement."""
    return StoreError(sqlite3.OperationalError("refused\nLINE 1: INSERT INTO mw_responses (id) VALUES (?)"))


class FlakyStore(Store):
    """A real store that counts response writes, fails every call while ``failing``, and can hold
    a write mid-flight until ``release`` is set (writes run in a thread, on either database)."""

    failing = False
    hold = False
    failing_writes = 0  # fail only this many more writes, reads and deletes unaffected

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[int] = []
        self.reads = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def response_statements(self, responses: list[StoredResponse]) -> Statements:
        self.batches.append(len(responses))
        return super().response_statements(responses)

    def run_statements(self, statements: Statements) -> None:
        if self.hold:
            self.entered.set()
            self.release.wait(10)
        if self.failing or self.failing_writes:
            self.failing_writes = max(0, self.failing_writes - 1)
            raise _down()
        super().run_statements(statements)

    def get_response(self, id: str) -> StoredResponse | None:
        self.reads += 1
        if self.failing:
            raise _down()
        return super().get_response(id)

    def get_response_holding(self, item_id: str) -> StoredResponse | None:
        self.reads += 1
        if self.failing:
            raise _down()
        return super().get_response_holding(item_id)

    def delete_response(self, id: str) -> bool:
        if self.failing:
            raise _down()
        return super().delete_response(id)


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores over one shared database, like several gateway replicas."""
    opened: list[FlakyStore] = []
    stores = shared_stores(request.param, tmp_path, FlakyStore)
    make = next(stores)

    def factory(cls: type[Store] = FlakyStore) -> Store:
        store = make(cls)
        if isinstance(store, FlakyStore):
            opened.append(store)
        return store

    try:
        yield factory
    finally:
        for store in opened:
            store.release.set()  # no write may stay held when its store closes
        stores.close()


@pytest.fixture
async def replica(open_store: StoreFactory) -> AsyncIterator[ChainsFactory]:
    """Opens a replica (a Chains on its own store); each is drained at the end of the test."""
    made: list[Chains] = []

    def factory(**kwargs: Any) -> Chains:
        made.append(Chains(open_store(), **kwargs))
        return made[-1]

    yield factory
    for chains in made:
        if isinstance(chains.store, FlakyStore):
            chains.store.failing = chains.store.hold = False
            chains.store.release.set()
        await chains.drain()


def flaky(chains: Chains) -> FlakyStore:
    assert isinstance(chains.store, FlakyStore)
    return chains.store


def response(n: int = 0, **overrides: Any) -> StoredResponse:
    rid = overrides.pop("id", f"resp_{uuid.uuid4().hex}")
    fields: dict[str, Any] = {
        "id": rid,
        "key_name": "alice",
        "model": "gpt-a",
        "created_at": 1_700_000_000.0 + n,
        "previous_response_id": None,
        "input_items": [{"type": "message", "role": "user", "content": f"question {n}"}],
        "output_items": [{"type": "message", "role": "assistant", "content": f"answer {n}"}],
        "response": {"id": rid, "object": "response", "output": []},
    }
    return StoredResponse(**{**fields, **overrides})


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll until true; the generous bound only matters when something is broken."""
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 - waiting on a background writer's retries
            await asyncio.sleep(0.01)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == GATEWAY_LOG and r.levelno == logging.WARNING]


# ----------------------------------------------------------------------------------------------
# Across replicas
# ----------------------------------------------------------------------------------------------


async def test_another_replica_finds_a_response_the_moment_put_returns(replica: ChainsFactory) -> None:
    a, b = replica(), replica()
    for n in range(50):
        r = response(n)
        assert await a.put(r) is True
        found = await b.get(r.id)  # no sleep: put returned, so the commit happened
        assert found is not None and found.output_items == r.output_items
    assert a.pending == 0 and a.healthy


async def test_history_is_the_input_then_the_output(replica: ChainsFactory) -> None:
    a, b = replica(), replica()
    r = response(7)
    await a.put(r)
    found = await b.get(r.id)
    assert found is not None and found.history == [*r.input_items, *r.output_items]
    assert await b.get("resp_unknown") is None


async def test_a_newer_version_replaces_the_stored_one(replica: ChainsFactory) -> None:
    a, b = replica(), replica()
    first = response(1)
    await a.put(first)
    await a.put(response(2, id=first.id))
    found = await b.get(first.id)
    assert found is not None and found.output_items[0]["content"] == "answer 2"


async def test_the_same_replica_answers_from_memory(replica: ChainsFactory) -> None:
    a = replica()
    r = response()
    await a.put(r)
    assert await a.get(r.id) == r
    assert flaky(a).reads == 0


async def test_a_response_is_found_by_an_output_item_here_and_on_another_replica(
    replica: ChainsFactory,
) -> None:
    a, b = replica(), replica()
    r = response(3, output_items=[{"id": "msg_3", "type": "message"}, {"id": "rs_3", "type": "reasoning"}])
    await a.put(r)
    assert await a.holding("rs_3") == r and flaky(a).reads == 0  # from memory
    found = await b.holding("msg_3")
    assert found is not None and found.id == r.id
    assert await b.holding("msg_unknown") is None
    flaky(b).failing = True
    with pytest.raises(ServiceUnavailableError):  # "no such item" would be a lie
        await b.holding("rs_3")
    flaky(b).failing = False
    await b.delete(r.id)
    assert await b.holding("msg_3") is None


async def test_memory_lets_go_of_the_items_of_responses_it_forgets() -> None:
    chains = Chains(None, memory=2)
    rs = [response(n, output_items=[{"id": f"msg_{n}", "type": "message"}]) for n in range(3)]
    for r in rs:
        await chains.put(r)
    assert await chains.holding("msg_0") is None
    assert await chains.holding("msg_2") == rs[2]
    assert await chains.delete(rs[2].id) and await chains.holding("msg_2") is None
    assert list(chains._holders) == ["msg_1"]  # bounded with the responses it remembers
    await chains.drain()


async def test_memory_is_bounded_by_size_as_well_as_count() -> None:
    """A response holds its whole conversation: a few long ones fill the memory a count allows."""
    chains = Chains(None, memory=100, memory_bytes=350_000)
    turn = [{"type": "message", "role": "user", "content": "x" * 100_000}]
    long = [response(n, input_items=turn, output_items=[{"id": f"msg_{n}"}]) for n in range(4)]
    for r in long:
        await chains.put(r)
    assert [await chains.get(r.id) is not None for r in long] == [False, True, True, True]
    assert await chains.holding("msg_0") is None and await chains.holding("msg_1") == long[1]
    short = [response(n) for n in range(100)]
    for r in short:
        await chains.put(r)
    assert [await chains.get(r.id) for r in short] == short  # the count binds before the size


async def test_memory_hands_out_copies() -> None:
    chains = Chains(None)
    r = response(1)
    await chains.put(r)
    r.output_items.append({"type": "message", "content": "changed after the put"})
    found = await chains.get(r.id)
    assert found is not None and len(found.output_items) == 1
    found.input_items.clear()  # as a caller prefixing history may change what it was given
    again = await chains.get(r.id)
    assert again is not None and again.input_items == response(1).input_items


# ----------------------------------------------------------------------------------------------
# Group commit
# ----------------------------------------------------------------------------------------------


async def test_concurrent_puts_share_transactions(replica: ChainsFactory) -> None:
    a, b = replica(), replica()
    rs = [response(n) for n in range(100)]
    assert await asyncio.gather(*(a.put(r) for r in rs)) == [True] * 100
    batches = flaky(a).batches
    assert sum(batches) == 100 and len(batches) <= 5, batches
    for r in rs:
        assert await b.get(r.id) is not None


async def test_puts_arriving_during_a_write_go_in_the_next_one(replica: ChainsFactory) -> None:
    a = replica()
    store = flaky(a)
    store.hold = True
    first = asyncio.create_task(a.put(response(0)))
    await asyncio.to_thread(store.entered.wait, 5)
    store.hold = False
    rest = [asyncio.create_task(a.put(response(n))) for n in range(1, 31)]
    await asyncio.sleep(0.01)
    store.release.set()
    assert await first is True and await asyncio.gather(*rest) == [True] * 30
    assert store.batches == [1, 30]


async def put_staggered(chains: Chains, count: int, gap: float) -> list[bool]:
    """``count`` puts, one every ``gap`` seconds, as answers finishing one after another."""

    async def put_after(n: int) -> bool:
        await asyncio.sleep(n * gap)
        return await chains.put(response(n))

    return await asyncio.gather(*(put_after(n) for n in range(count)))


async def test_answers_arriving_while_requests_are_in_flight_share_a_commit(replica: ChainsFactory) -> None:
    """Each transaction costs beyond its rows: while other requests are in flight, the writer
    waits as long as their answers keep arriving, and one commit settles them all."""
    a = replica(gather=0.5, in_flight=lambda: 100)
    assert await a.put(response(99)) is True  # the first wakes the writer at once
    assert await put_staggered(a, 10, GATHER_STEP / 4) == [True] * 10
    assert flaky(a).batches == [1, 10]


async def test_a_gather_ends_at_a_lull_and_is_skipped_with_no_other_request_in_flight(
    replica: ChainsFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(chains_module, "GATHER_STEP", 0.2)  # a lull now takes 0.2 s to notice
    alone, busy = replica(gather=5.0, in_flight=lambda: 1), replica(gather=5.0, in_flight=lambda: 2)
    for chains in (alone, busy):
        assert await chains.put(response(99)) is True  # the first wakes the writer at once
    start = time.perf_counter()
    assert await alone.put(response(1)) is True
    assert time.perf_counter() - start < 0.15
    start = time.perf_counter()
    assert await busy.put(response(2)) is True  # the other request in flight never answers
    assert 0.2 <= time.perf_counter() - start < 2.0


async def test_a_steady_flow_of_answers_is_committed_at_least_every_gather(replica: ChainsFactory) -> None:
    a = replica(gather=GATHER_STEP * 3, in_flight=lambda: 100)
    assert await a.put(response(99)) is True
    start = time.perf_counter()
    assert await put_staggered(a, 40, GATHER_STEP / 2) == [True] * 40  # 20 ms of answers
    assert len(flaky(a).batches) >= 4, flaky(a).batches
    assert time.perf_counter() - start < 0.5


async def test_a_cancelled_put_is_still_written(replica: ChainsFactory) -> None:
    a, b = replica(), replica()
    r = response()
    task = asyncio.create_task(a.put(r))
    await asyncio.sleep(0)
    task.cancel()
    await eventually(lambda: a.pending == 0)
    assert await b.get(r.id) is not None


# ----------------------------------------------------------------------------------------------
# Outages
# ----------------------------------------------------------------------------------------------


async def test_an_outage_neither_raises_nor_hangs_and_heals(
    replica: ChainsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replica(retry_seconds=0.02, max_backoff=0.05), replica()
    flaky(a).failing = True
    rs = [response(n) for n in range(5)]
    with caplog.at_level(logging.DEBUG, logger=GATEWAY_LOG):
        for r in rs:
            start = time.perf_counter()
            assert await a.put(r) is False
            assert time.perf_counter() - start < 1.5
        await eventually(lambda: len(flaky(a).batches) >= 4)  # retried in the background meanwhile
    assert not a.healthy and a.pending == 5
    [warning] = warnings_of(caplog)
    assert "OperationalError: refused" in warning.getMessage() and warning.exc_info is None
    assert "INSERT" not in caplog.text and "Traceback" not in caplog.text
    for r in rs:
        assert await a.get(r.id) == r  # this replica still chains them
    flaky(a).failing = False
    await eventually(lambda: a.pending == 0)
    assert (a.healthy, a.dropped) == (True, 0)
    for r in rs:
        assert await b.get(r.id) is not None
    assert len(warnings_of(caplog)) == 1


async def test_a_second_outage_warns_again(replica: ChainsFactory, caplog: pytest.LogCaptureFixture) -> None:
    a = replica(retry_seconds=0.02, max_backoff=0.05)
    with caplog.at_level(logging.WARNING, logger=GATEWAY_LOG):
        for _ in range(2):
            flaky(a).failing = True
            await a.put(response())
            await a.put(response())
            flaky(a).failing = False
            await eventually(lambda: a.healthy and a.pending == 0)
    assert len(warnings_of(caplog)) == 2


async def test_a_stalled_write_is_waited_for_within_the_bound(
    replica: ChainsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = replica(max_wait=0.5), replica()
    store = flaky(a)
    store.hold = True
    first = response(0)
    with caplog.at_level(logging.WARNING, logger=GATEWAY_LOG):
        start = time.perf_counter()
        assert await a.put(first) is False
        assert 0.5 <= time.perf_counter() - start < 2.0
        assert not a.healthy
        start = time.perf_counter()
        second = response(1)
        assert await a.put(second) is False  # the outage is known: no second wait
        assert time.perf_counter() - start < 0.25
    assert "no commit within 0.5 s" in caplog.text and len(warnings_of(caplog)) == 1
    store.hold = False
    store.release.set()
    await eventually(lambda: a.pending == 0 and a.healthy)
    assert await b.get(first.id) is not None and await b.get(second.id) is not None


async def test_pending_responses_outlive_the_memory_cache(replica: ChainsFactory) -> None:
    a = replica(memory=2, retry_seconds=60)
    flaky(a).failing = True
    rs = [response(n) for n in range(5)]
    for r in rs:
        await a.put(r)
    for r in rs:
        assert await a.get(r.id) == r
    assert flaky(a).reads == 0


async def test_the_backlog_is_bounded_dropping_the_oldest(replica: ChainsFactory) -> None:
    a, b = replica(max_pending=3, retry_seconds=60), replica()
    flaky(a).failing = True
    rs = [response(n) for n in range(5)]
    for r in rs:
        await a.put(r)
    assert (a.pending, a.dropped) == (3, 2)
    assert await a.get(rs[0].id) == rs[0]  # dropped from the backlog, not from memory
    flaky(a).failing = False
    await a.drain()
    assert [await b.get(r.id) is not None for r in rs] == [False, False, True, True, True]


async def test_a_read_with_the_store_down_is_a_503_unless_in_memory(replica: ChainsFactory) -> None:
    a, b = replica(retry_seconds=60), replica()
    kept, elsewhere = response(0), response(1)
    await b.put(elsewhere)
    flaky(a).failing = True
    await a.put(kept)
    assert await a.get(kept.id) == kept
    with pytest.raises(ServiceUnavailableError) as info:
        await a.get(elsewhere.id)
    assert info.value.status == 503 and "store is unreachable" in info.value.message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    with pytest.raises(ServiceUnavailableError):
        await a.get("resp_unknown")


# ----------------------------------------------------------------------------------------------
# Delete and drain
# ----------------------------------------------------------------------------------------------


async def test_a_response_deleted_while_its_write_is_queued_never_lands(replica: ChainsFactory) -> None:
    a, b = replica(retry_seconds=60), replica()
    flaky(a).failing = True
    gone, kept = response(0), response(1)
    await a.put(gone)
    await a.put(kept)
    flaky(a).failing = False
    assert await a.delete(gone.id) is True
    assert a.pending == 1 and await a.get(gone.id) is None
    await a.drain()
    assert await b.get(gone.id) is None and await b.get(kept.id) is not None


@pytest.mark.parametrize("commits", [True, False], ids=["write-commits", "write-fails"])
async def test_a_response_deleted_mid_write_never_reappears(replica: ChainsFactory, commits: bool) -> None:
    a, b = replica(retry_seconds=0.02), replica()
    store = flaky(a)
    store.hold = True
    r = response()
    put = asyncio.create_task(a.put(r))
    await asyncio.to_thread(store.entered.wait, 5)
    store.failing_writes = 0 if commits else 1
    delete = asyncio.create_task(a.delete(r.id))
    await asyncio.sleep(0.01)
    assert not delete.done()  # it waits for the write in flight
    store.hold = False
    store.release.set()
    await put
    assert await delete is True
    await a.drain()
    assert await a.get(r.id) is None and await b.get(r.id) is None


async def test_delete_of_a_stored_response_from_another_replica(replica: ChainsFactory) -> None:
    a, b = replica(), replica()
    r = response()
    await a.put(r)
    assert await b.delete(r.id) is True
    assert await b.get(r.id) is None
    assert await b.delete(r.id) is False


async def test_delete_with_the_store_down_is_a_503(replica: ChainsFactory) -> None:
    a = replica()
    flaky(a).failing = True
    with pytest.raises(ServiceUnavailableError):
        await a.delete("resp_x")


async def test_drain_writes_everything_pending(replica: ChainsFactory) -> None:
    a, b = replica(retry_seconds=60), replica()
    flaky(a).failing = True
    rs = [response(n) for n in range(1234)]
    for r in rs:
        await a.put(r)
    assert a.pending == 1234
    flaky(a).failing = False
    await a.drain()  # long before the 60 s retry
    assert a.pending == 0
    for r in rs[::100]:
        assert await b.get(r.id) is not None


async def test_drain_with_the_store_down_logs_and_returns(
    replica: ChainsFactory, caplog: pytest.LogCaptureFixture
) -> None:
    a = replica(retry_seconds=60)
    flaky(a).failing = True
    await a.put(response())
    with caplog.at_level(logging.ERROR, logger=GATEWAY_LOG):
        async with asyncio.timeout(10):  # far below the 60 s retry: drain tries once and gives up
            await a.drain()
    assert a.pending == 1 and "1 stored responses unwritten" in caplog.text


async def test_without_a_store_responses_live_in_memory() -> None:
    chains = Chains(None)
    r = response()
    assert await chains.put(r) is False
    assert await chains.get(r.id) == r and chains.pending == 0
    assert await chains.delete(r.id) is True and await chains.get(r.id) is None
    await chains.drain()


async def test_a_deletion_elsewhere_makes_a_replica_ask_the_store_again(replica: ChainsFactory) -> None:
    a, b = replica(), replica()
    r = response(0)
    store = a.store
    assert store is not None
    a.note_deletions(store.versions()["responses"])  # its first reading: the baseline
    await a.put(r)
    assert await b.delete(r.id)
    assert await a.get(r.id) == r, "until the counter is read, memory answers"
    a.note_deletions(store.versions()["responses"])
    assert await a.get(r.id) is None


async def test_what_memory_took_before_the_first_reading_is_asked_again(replica: ChainsFactory) -> None:
    """A replica just started serves before its first poll of the counter: a deletion elsewhere in
    that window must not leave it serving its copy for good."""
    a, b = replica(), replica()
    r = response(0)
    await a.put(r)  # before a's first reading
    assert await b.delete(r.id)
    store = a.store
    assert store is not None
    a.note_deletions(store.versions()["responses"])  # its first reading
    assert await a.get(r.id) is None


async def test_a_deletion_elsewhere_keeps_what_waits_for_the_store_findable(replica: ChainsFactory) -> None:
    """Memory is dropped when the deletion counter moves, but a response not yet written is found
    nowhere else: by its id and by its items' ids it is still answered from memory."""
    a = replica(shared=False, linger=5.0)  # the writer holds it back for the test's length
    r = response(4, output_items=[{"id": "msg_4", "type": "message"}])
    store = a.store
    assert store is not None
    a.note_deletions(store.versions()["responses"])
    assert await a.put(r) is False and a.pending == 1
    a.note_deletions(store.versions()["responses"] + 1)  # another process deleted something
    assert await a.holding("msg_4") == r and await a.get(r.id) == r
    assert flaky(a).reads == 0


async def test_with_no_other_process_puts_do_not_wait(replica: ChainsFactory) -> None:
    """One process on its own store answers every follow-up from memory: the commit is not awaited,
    and the writer gathers a batch instead of writing per response."""
    a, b = replica(shared=False, linger=0.2), replica()
    rs = [response(n) for n in range(20)]
    start = time.perf_counter()
    assert await asyncio.gather(*(a.put(r) for r in rs)) == [False] * 20
    assert time.perf_counter() - start < 0.1
    assert await a.get(rs[0].id) == rs[0]
    await eventually(lambda: a.pending == 0)
    assert flaky(a).batches == [20]
    assert await b.get(rs[-1].id) is not None


def test_rejects_bad_settings() -> None:
    for kwargs in ({"max_pending": 0}, {"max_batch": 0}, {"max_wait": 0}, {"retry_seconds": 0}):
        with pytest.raises(ValueError):
            Chains(None, **kwargs)
