"""Keeping a replica's key table in step with the store: a key made on another replica works on
its first request here, whenever that request comes, and unknown keys cannot make the replica
hammer the store."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelwire.gateway.auth import KeyBook
from modelwire.gateway.health import Dependencies
from modelwire.gateway.state import State
from modelwire.gateway.store import Store
from modelwire.gateway.sync import MISS_CHECK_SECONDS, StoreSync


class CountedStore:
    """The replica's view of the store: counts reads of the change counters, and when ``hold`` is
    set, returns each read only once ``release`` is set (the read itself done before that)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0
        self.hold = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def versions(self) -> dict[str, int]:
        self.reads += 1
        found = self.store.versions()
        if self.hold:
            self.entered.set()
            self.release.wait(5)
        return found

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[Store, CountedStore]]:
    """Another replica's store and this one's, on one database."""
    url = f"sqlite:///{tmp_path}/state.db"
    with Store(url) as elsewhere, Store(url) as here:
        yield elsewhere, CountedStore(here)


def replica(store: CountedStore) -> tuple[KeyBook, StoreSync]:
    keys = KeyBook([], store, loopback=False)  # type: ignore[arg-type]
    state = State.in_memory(keys)
    state.store = store  # type: ignore[assignment]
    return keys, StoreSync(state, Dependencies())


async def test_a_key_made_just_after_a_read_works_on_its_first_request(
    stores: tuple[Store, CountedStore],
) -> None:
    """The last read ended a moment before the key was made elsewhere: a read that recent is no
    reason not to look again (it is only a reason to wait out the rest of the period)."""
    elsewhere, here = stores
    keys, sync = replica(here)
    await sync.check()
    secret, _ = elsewhere.create_key(name="fresh")
    assert keys.lookup(secret) is None
    started = time.monotonic()
    await sync.check_for_new_key()
    assert keys.lookup(secret) is not None
    assert time.monotonic() - started < 1.0


async def test_a_read_under_way_when_the_key_came_is_not_the_answer(
    stores: tuple[Store, CountedStore],
) -> None:
    """The periodic read had fetched the counters before the key was made, and was still returning
    when the key's first request came: the request waits for a read of its own."""
    elsewhere, here = stores
    keys, sync = replica(here)
    await sync.check()
    here.hold = True
    stale = asyncio.create_task(sync.check())
    await asyncio.to_thread(here.entered.wait, 5)
    secret, _ = elsewhere.create_key(name="made-mid-read")
    first_request = asyncio.create_task(sync.check_for_new_key())
    await asyncio.sleep(0.01)
    here.hold = False
    here.release.set()
    await stale
    assert keys.lookup(secret) is None  # what the stale read saw
    await first_request
    assert keys.lookup(secret) is not None


async def test_unknown_keys_share_reads_and_wait_little(stores: tuple[Store, CountedStore]) -> None:
    """A burst of bad keys shares one read; a steady stream of them reads at most once per
    MISS_CHECK_SECONDS (plus the first), and none waits much longer than that period."""
    _, here = stores
    _, sync = replica(here)
    await sync.check()
    here.reads = 0
    await asyncio.gather(*(sync.check_for_new_key() for _ in range(50)))
    assert here.reads == 1

    here.reads = 0
    waits: list[float] = []

    async def bad_key() -> None:
        started = time.monotonic()
        await sync.check_for_new_key()
        waits.append(time.monotonic() - started)

    began = time.monotonic()
    misses = []
    while time.monotonic() - began < 0.5:
        misses.append(asyncio.create_task(bad_key()))
        await asyncio.sleep(0.005)
    await asyncio.gather(*misses)
    spent = time.monotonic() - began
    assert len(misses) >= 40
    assert here.reads <= spent / MISS_CHECK_SECONDS + 2, (here.reads, spent)
    assert max(waits) < 4 * MISS_CHECK_SECONDS + 0.2, max(waits)
