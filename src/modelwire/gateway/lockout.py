"""Lock out addresses that keep presenting bad client keys, to make guessing keys slow.

Per process only: each replica (and each worker) keeps its own table. That still caps a guesser at
a handful of tries per lockout per replica, which is all this is for; a shared table would put a
Redis round trip on every failed request for little gain.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .config import LockoutConfig

MAX_ADDRESSES = 100_000


class _Record:
    __slots__ = ("failures", "lockouts", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.lockouts = 0
        self.until = 0.0


class Lockout:
    """``failures`` bad keys from one address lock it for ``first_seconds``, doubling on each further
    lockout up to ``max_seconds``. A success resets the address.

    Memory is bounded: at most ``max_addresses`` are remembered, least recently failing first to go,
    so a flood of spoofed or rotating addresses cannot grow the table (it can only evict, which at
    worst forgets an attacker's history, never locks out someone innocent).
    """

    def __init__(
        self,
        *,
        failures: int = 5,
        first_seconds: float = 30.0,
        max_seconds: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = MAX_ADDRESSES,
    ) -> None:
        self._failures = failures
        self._first = first_seconds
        self._max = max_seconds
        self._clock = clock
        self._capacity = max_addresses
        self._records: OrderedDict[str, _Record] = OrderedDict()

    @classmethod
    def from_config(cls, config: LockoutConfig, *, clock: Callable[[], float] = time.monotonic) -> Lockout:
        return cls(
            failures=config.failures,
            first_seconds=config.first_seconds,
            max_seconds=config.max_seconds,
            clock=clock,
        )

    def __len__(self) -> int:
        return len(self._records)

    def locked(self, address: str) -> float | None:
        """Seconds left on the address's lockout, or ``None`` when it may try."""
        record = self._records.get(address)
        if record is None:
            return None
        left = record.until - self._clock()
        return left if left > 0 else None

    def failure(self, address: str) -> float | None:
        """Count a bad key; return the lockout's length if this failure started one."""
        record = self._touch(address)
        now = self._clock()
        if record.until > now:
            return None  # already locked: the caller should not have checked a key at all
        record.failures += 1
        if record.failures < self._failures:
            return None
        seconds = min(self._first * 2.0**record.lockouts, self._max)
        record.failures = 0
        if seconds < self._max:  # past the cap the count no longer matters; keep it from growing
            record.lockouts += 1
        record.until = now + seconds
        return seconds

    def success(self, address: str) -> None:
        self._records.pop(address, None)

    def _touch(self, address: str) -> _Record:
        """The address's record, marked most recent; the oldest is forgotten when over capacity."""
        record = self._records.get(address)
        if record is not None:
            self._records.move_to_end(address)
            return record
        record = self._records[address] = _Record()
        if len(self._records) > self._capacity:
            self._records.popitem(last=False)
        return record
