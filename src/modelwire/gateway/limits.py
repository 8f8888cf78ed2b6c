"""Per-client-key limits: requests per minute, tokens per minute and a spend budget.

Rates use the sliding-window counter: two fixed buckets (the current and the previous window), with
the previous one weighted by how much of it still overlaps a window ending now. It needs O(1) state
and O(1) work per request, unlike a log of timestamps, and is within a few percent of an exact
sliding window for traffic that is not pathologically bursty at bucket edges.

Counts live behind :class:`Counters`: :class:`MemoryCounters` for one process, or
:class:`RedisCounters` when several replicas must share one set of counts. The :class:`Limiter`
turns a :class:`Policy` and those counts into admit-or-refuse decisions with a Retry-After.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from redis.asyncio import Redis

WINDOW = 60
"""Seconds in a rate window: the "minute" of rpm and tpm."""

BUDGET_RETRY_AFTER = 3600.0
"""Retry-After for an exhausted budget: nothing changes by waiting, so tell clients to back off long."""

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Policy:
    """What one client key may do; ``None`` means unlimited."""

    name: str
    rpm: int | None = None
    tpm: int | None = None
    budget_usd: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.rpm is None and self.tpm is None and self.budget_usd is None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused, with the numbers a client needs to understand and back off."""

    reason: Literal["rpm", "tpm", "budget"]
    retry_after: float
    limit: float
    current: float

    @property
    def message(self) -> str:
        if self.reason == "budget":
            return (
                f"budget exhausted: spent ${self.current:.4f} of ${self.limit:.2f}; "
                "ask an administrator to raise the key's budget"
            )
        unit = "requests" if self.reason == "rpm" else "tokens"
        return (
            f"rate limit reached: {self.current:.0f} of {self.limit:.0f} {unit} per minute; "
            f"retry in {self.retry_after:.0f} s"
        )


@dataclass(frozen=True, slots=True)
class WindowState:
    """The two buckets behind a sliding-window count, and how far into the current one we are."""

    previous: float
    current: float
    fraction: float

    @property
    def total(self) -> float:
        return sliding_total(self.previous, self.current, self.fraction)


class Counters(Protocol):
    """Where counts live: process memory, or Redis shared across replicas."""

    async def hit(self, name: str, window: int, amount: float = 1.0) -> float:
        """Add ``amount`` to the current bucket; return the sliding-window total including it."""
        ...

    async def total(self, name: str, window: int) -> float: ...

    async def state(self, name: str, window: int) -> WindowState:
        """The buckets themselves, so a refusal can say exactly when the window will admit again."""
        ...

    async def add_spend(self, name: str, usd: float) -> float:
        """Add to the cumulative spend; return the new total."""
        ...

    async def spend(self, name: str) -> float: ...

    async def seed_spend(self, name: str, usd: float) -> None:
        """Set the starting spend (from the usage store) unless a value is already counted."""
        ...


def sliding_total(previous: float, current: float, fraction: float) -> float:
    """The previous bucket weighted by its overlap with a window ending now, plus the current one."""
    return previous * (1.0 - fraction) + current


def seconds_until(state: WindowState, limit: float, need: float, window: int) -> float:
    """Seconds until ``need`` more fits under ``limit``, assuming no further traffic.

    Within the current bucket only the previous bucket's weight decays; if the current bucket alone
    leaves no room, wait for it to become the previous bucket and decay in turn.
    """
    room = max(limit - need, 0.0)
    rest = window * (1.0 - state.fraction)
    if state.current <= room:
        if state.previous <= 0.0:
            return 0.0
        return max(rest - window * (room - state.current) / state.previous, 0.0)
    return rest + window * (1.0 - room / state.current)


def _retry_after(seconds: float, window: int) -> float:
    """Whole seconds for a Retry-After header, at least 1 and at most one window."""
    return float(min(max(math.ceil(seconds), 1), window))


class _Buckets:
    __slots__ = ("current", "index", "previous")

    def __init__(self, index: int) -> None:
        self.index = index
        self.previous = 0.0
        self.current = 0.0


class MemoryCounters:
    """Counts in this process: exact for one replica, invisible to others.

    Nothing here awaits, so a check followed by a hit cannot interleave with another request.
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, _Buckets] = {}
        self._spend: dict[str, float] = {}

    def _roll(self, name: str, window: int) -> tuple[_Buckets, float]:
        """The name's buckets moved forward to now, and the elapsed fraction of the current one."""
        position = self._clock() / window
        index = int(position)
        buckets = self._windows.get(name)
        if buckets is None:
            buckets = self._windows[name] = _Buckets(index)
        elif buckets.index != index:
            buckets.previous = buckets.current if index == buckets.index + 1 else 0.0
            buckets.current = 0.0
            buckets.index = index
        return buckets, position - index

    async def hit(self, name: str, window: int, amount: float = 1.0) -> float:
        buckets, fraction = self._roll(name, window)
        buckets.current += amount
        return sliding_total(buckets.previous, buckets.current, fraction)

    async def total(self, name: str, window: int) -> float:
        buckets, fraction = self._roll(name, window)
        return sliding_total(buckets.previous, buckets.current, fraction)

    async def state(self, name: str, window: int) -> WindowState:
        buckets, fraction = self._roll(name, window)
        return WindowState(buckets.previous, buckets.current, fraction)

    async def add_spend(self, name: str, usd: float) -> float:
        spent = self._spend.get(name, 0.0) + usd
        self._spend[name] = spent
        return spent

    async def spend(self, name: str) -> float:
        return self._spend.get(name, 0.0)

    async def seed_spend(self, name: str, usd: float) -> None:
        self._spend.setdefault(name, usd)


def _number(raw: bytes | str | float | None) -> float:
    return 0.0 if raw is None else float(raw)


class RedisCounters:
    """The same sliding-window counter in Redis, so every replica sees one count per key.

    Bucket keys are ``{prefix}:{name}:{window_start}`` (window start in Unix seconds), expiring after
    two windows, which is exactly as long as a bucket is needed: first as current, then as previous.
    Each call is one round trip (a pipeline without MULTI: each command is atomic on its own, which
    is all the algorithm needs). Bucket boundaries come from this process's wall clock, so replicas
    should run NTP; a skew of a second shifts a little count between buckets, nothing more.
    Spend lives in ``{prefix}:spend:{name}`` without expiry: a budget is cumulative.
    """

    def __init__(self, url: str, *, prefix: str = "modelwire", clock: Clock = time.time) -> None:
        self._redis: Redis = Redis.from_url(url)
        self._prefix = prefix
        self._clock = clock

    async def aclose(self) -> None:
        await self._redis.aclose()

    def _keys(self, name: str, window: int) -> tuple[str, str, float]:
        """The current and previous bucket keys, and the elapsed fraction of the current bucket."""
        position = self._clock() / window
        index = int(position)
        base = f"{self._prefix}:{name}:"
        return f"{base}{index * window}", f"{base}{(index - 1) * window}", position - index

    async def hit(self, name: str, window: int, amount: float = 1.0) -> float:
        current, previous, fraction = self._keys(name, window)
        pipe = self._redis.pipeline(transaction=False)
        pipe.incrbyfloat(current, amount)
        pipe.expire(current, 2 * window)
        pipe.get(previous)
        now, _, before = await pipe.execute()
        return sliding_total(_number(before), _number(now), fraction)

    async def total(self, name: str, window: int) -> float:
        return (await self.state(name, window)).total

    async def state(self, name: str, window: int) -> WindowState:
        current, previous, fraction = self._keys(name, window)
        now, before = await self._redis.mget(current, previous)
        return WindowState(_number(before), _number(now), fraction)

    def _spend_key(self, name: str) -> str:
        return f"{self._prefix}:spend:{name}"

    async def add_spend(self, name: str, usd: float) -> float:
        return _number(await self._redis.incrbyfloat(self._spend_key(name), usd))

    async def spend(self, name: str) -> float:
        return _number(await self._redis.get(self._spend_key(name)))

    async def seed_spend(self, name: str, usd: float) -> None:
        await self._redis.set(self._spend_key(name), repr(float(usd)), nx=True)


class Limiter:
    """Admits or refuses requests for a client key's :class:`Policy`.

    Reads come first (budget, then tokens); the request is counted against rpm last, so a request
    refused for any reason never uses up a request slot.
    """

    def __init__(self, counters: Counters, *, window: int = WINDOW) -> None:
        self._counters = counters
        self._window = window

    async def admit(self, policy: Policy, *, estimated_tokens: int = 0) -> Refusal | None:
        """Before a request: ``None`` when it may proceed, else why not and when to retry.

        Counts the request against rpm when admitted. Checks tpm against the tokens already
        recorded in the window plus the estimate, and the budget against cumulative spend.
        """
        if policy.unlimited:
            return None
        if policy.budget_usd is not None:
            refusal = await self._check_budget(policy.name, policy.budget_usd)
            if refusal is not None:
                return refusal
        if policy.tpm is not None:
            refusal = await self._check_tpm(policy.name, policy.tpm, estimated_tokens)
            if refusal is not None:
                return refusal
        if policy.rpm is not None:
            return await self._count_request(policy.name, policy.rpm)
        return None

    async def record(self, policy: Policy, *, tokens: int, cost: float | None) -> None:
        """After a request: add its tokens to the tpm window and its cost to the spend.

        Only what a limit needs is counted: usage accounting proper lives in the store.
        """
        if policy.tpm is not None and tokens > 0:
            await self._counters.hit(f"tpm:{policy.name}", self._window, float(tokens))
        if policy.budget_usd is not None and cost:
            await self._counters.add_spend(policy.name, cost)

    async def seed_spend(self, policy: Policy, usd: float) -> None:
        """Start the budget from what the store has recorded, unless the counters already know."""
        if policy.budget_usd is not None:
            await self._counters.seed_spend(policy.name, usd)

    async def _check_budget(self, name: str, budget: float) -> Refusal | None:
        spent = await self._counters.spend(name)
        if spent < budget:
            return None
        return Refusal("budget", BUDGET_RETRY_AFTER, budget, spent)

    async def _check_tpm(self, name: str, tpm: int, estimated: int) -> Refusal | None:
        """Refuse when the estimate does not fit; one larger than the whole limit needs an empty window."""
        need = float(min(max(estimated, 1), tpm))
        state = await self._counters.state(f"tpm:{name}", self._window)
        used = state.total
        if used + need <= tpm:
            return None
        wait = seconds_until(state, tpm, need, self._window)
        return Refusal("tpm", _retry_after(wait, self._window), tpm, used)

    async def _count_request(self, name: str, rpm: int) -> Refusal | None:
        """Count first, then check, so concurrent replicas cannot both take the last slot."""
        key = f"rpm:{name}"
        if await self._counters.hit(key, self._window) <= rpm:
            return None
        await self._counters.hit(key, self._window, -1.0)
        state = await self._counters.state(key, self._window)
        wait = seconds_until(state, rpm, 1.0, self._window)
        return Refusal("rpm", _retry_after(wait, self._window), rpm, state.total)
