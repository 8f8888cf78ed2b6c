"""Keeping each process in step with the store: the key table and the remembered responses follow
the store's change counters, read every :data:`~modelwire.gateway.auth.SYNC_SECONDS`, and the
store's health is what the last read found."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from .auth import SYNC_SECONDS
from .health import Dependencies
from .state import State
from .store import KEYS_COUNTER, RESPONSES_COUNTER, describe_error

log = logging.getLogger("modelwire.gateway")

MISS_CHECK_SECONDS = 0.05
"""An unknown key makes the gateway read the store's key counter, at most this long after the last
read ended: a key just created works on its first request, and a flood of bad keys costs at most 20
reads a second."""


class StoreSync:
    def __init__(self, state: State, dependencies: Dependencies) -> None:
        self.state = state
        self.dependencies = dependencies
        self._reading: asyncio.Future[None] | None = None
        self._started_at = 0.0  # when the last read began
        self._read_at = 0.0  # when it ended

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(SYNC_SECONDS)
            await self.check()

    async def check(self) -> None:
        """Read the store's change counters: reload the key table, or forget remembered responses,
        when one moved. Concurrent callers share one read."""
        if self._reading is None:
            self._started_at = time.monotonic()
            self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(self._reading)

    async def check_for_new_key(self) -> None:
        """An unknown key came: wait for a read begun after it came, never more than a second on a
        hung store. A read under way, or one that ended a moment ago, may have looked before the key
        was made (on another replica); a new one waits out the rest of :data:`MISS_CHECK_SECONDS`,
        and every request waiting meanwhile shares it."""
        if self.state.store is None:
            return
        came = time.monotonic()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                while self._started_at < came:
                    if self._reading is not None:
                        await asyncio.shield(self._reading)
                    elif (wait := self._read_at + MISS_CHECK_SECONDS - time.monotonic()) > 0:
                        await asyncio.sleep(wait)
                    else:
                        await self.check()
                if self._reading is not None:  # begun since, by another request: not over yet
                    await asyncio.shield(self._reading)

    async def _read(self) -> None:
        state = self.state
        assert state.store is not None
        try:
            versions = await asyncio.to_thread(state.store.versions)
            keys = versions[KEYS_COUNTER]
            if state.keys.outdated(keys) and await asyncio.to_thread(state.keys.sync, keys):
                log.info("client keys reloaded (%d in force)", len(state.keys.in_force()))
        except Exception as exc:  # whatever the database driver raises
            self.dependencies.mark("store", False, describe_error(exc))
        else:
            state.chains.note_deletions(versions[RESPONSES_COUNTER])
            self.dependencies.mark("store", True)
        finally:
            self._read_at, self._reading = time.monotonic(), None
