"""Per-client-key limits: requests per minute, tokens per minute and a spend budget.

Rates use the sliding-window counter: two fixed buckets (the current and the previous window), with
the previous one weighted by how much of it still overlaps a window ending now. It needs O(1) state
and O(1) work per request, unlike a log of timestamps, and is within a few percent of an exact
sliding window for traffic that is not pathologically bursty at bucket edges.

Counts live behind :class:`Counters`: :class:`MemoryCounters` for one process, or
:class:`RedisCounters` when several replicas must share one set of counts. The :class:`Limiter`
turns a :class:`Policy` and those counts into admit-or-refuse decisions with a Retry-After.

Redis outages. A gateway must not fail its requests because the place where it counts them is
down, so shared counts go through :class:`FallbackCounters` (``Limiter.create`` builds it from the
``redis`` URL). The first Redis call that fails (connection refused, a timeout after about a
second, any Redis error) starts an outage: one warning, ``on_change(False)``, and from then on no
request touches Redis until a background probe, pinging it every second, gets an answer. Then the
spend counted during the outage is added to Redis, one info line says Redis is reachable again,
``on_change(True)`` fires and requests are counted in Redis again. What requests get meanwhile is
the ``limits.on_shared_error`` policy:

``local`` (the default)
    Each replica counts in its own memory: rpm and tpm hold per replica, so across N replicas a
    key may get up to N times its rate for the length of the outage. A budget continues from the
    spend last read from Redis, and what is spent meanwhile is added to Redis on recovery, so an
    outage neither resets a budget nor loses spending.
``deny``
    Requests of keys with any limit are refused with a :class:`Refusal` whose reason is
    ``"unavailable"`` (HTTP 503, a few seconds' Retry-After): no limited request is admitted on
    counts Redis has not seen. Keys without limits never touch the counters and are served.

The gateway starts even while Redis is down: it starts inside an outage, and the probe ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol, TypeVar

from modelwire.gateway.resp import RedisError, Reply, RespClient, redacted

log = logging.getLogger("modelwire.limits")

WINDOW = 60
"""Seconds in a rate window: the "minute" of rpm and tpm."""

BUDGET_RETRY_AFTER = 3600.0
"""Retry-After for an exhausted budget: nothing changes by waiting, so tell clients to back off long."""

UNAVAILABLE_RETRY_AFTER = 5.0
"""Retry-After while shared counts are unreachable under ``deny``: the probe runs every second."""

PROBE_INTERVAL = 1.0
"""Seconds between pings of Redis, during an outage and outside one."""

Clock = Callable[[], float]
OnSharedError = Literal["local", "deny"]
"""What limited requests get while Redis is unreachable: per-replica counts, or a 503."""


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

    @property
    def metered(self) -> bool:
        """Whether a served request's tokens or cost count against a limit (rpm counts it before)."""
        return self.tpm is not None or self.budget_usd is not None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request was refused, with the numbers a client needs to understand and back off."""

    reason: Literal["rpm", "tpm", "budget", "unavailable"]
    retry_after: float
    limit: float
    current: float

    @property
    def status(self) -> int:
        """503 when the limits could not be checked (the client did nothing wrong), else 429."""
        return 503 if self.reason == "unavailable" else 429

    @property
    def code(self) -> str:
        """A stable error code for the response body."""
        return "limits_unavailable" if self.reason == "unavailable" else f"{self.reason}_exceeded"

    @property
    def message(self) -> str:
        if self.reason == "unavailable":
            return "rate limits are shared through Redis, which is unreachable; retry shortly"
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


@dataclass(frozen=True, slots=True)
class Reading:
    """What admitting a request whose key has a budget or a tpm limit needs, read in one go."""

    spent: float
    """The key's cumulative spend (0.0 when not asked)."""
    tokens: WindowState | None
    """The tpm buckets (None when not asked)."""
    requests: float | None
    """The rpm total with this request counted (None when not counted)."""


UNAVAILABLE = Refusal("unavailable", UNAVAILABLE_RETRY_AFTER, 0.0, 0.0)
"""The refusal of a limited request while Redis is unreachable under ``deny``."""


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

    async def admission(
        self, spend: str | None, tokens: str | None, requests: str | None, window: int
    ) -> Reading:
        """In one call (one round trip to Redis): the spend of ``spend``, the buckets of ``tokens``,
        and ``requests`` hit once. A name that is None is not asked."""
        ...

    async def lease(self, name: str, holder: str, limit: int, ttl: float) -> bool:
        """Hold (or renew) one of ``limit`` places under ``name`` for ``ttl`` seconds; False when
        every place is held by others. Leases expire, so a replica that dies frees its places."""
        ...

    async def release(self, name: str, holder: str) -> None: ...


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
        self._leases: dict[str, dict[str, float]] = {}  # name -> holder -> expiry

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

    async def admission(
        self, spend: str | None, tokens: str | None, requests: str | None, window: int
    ) -> Reading:
        return Reading(
            self._spend.get(spend, 0.0) if spend is not None else 0.0,
            await self.state(tokens, window) if tokens is not None else None,
            await self.hit(requests, window) if requests is not None else None,
        )

    async def lease(self, name: str, holder: str, limit: int, ttl: float) -> bool:
        now = self._clock()
        held = {h: until for h, until in self._leases.get(name, {}).items() if until > now}
        if holder not in held and len(held) >= limit:
            self._leases[name] = held
            return False
        held[holder] = now + ttl
        self._leases[name] = held
        return True

    async def release(self, name: str, holder: str) -> None:
        held = self._leases.get(name)
        if held is not None:
            held.pop(holder, None)
            if not held:
                del self._leases[name]


def _number(reply: Reply) -> float:
    """A counter's value from its reply: a missing key counts as zero."""
    if reply is None:
        return 0.0
    if isinstance(reply, bytes | str | int):
        return float(reply)
    raise RedisError(f"Redis sent {type(reply).__name__} where a number was expected")


def _window_state(reply: Reply, fraction: float) -> WindowState:
    """An ``MGET`` of the current and previous buckets."""
    if not isinstance(reply, list) or len(reply) != 2:
        raise RedisError("Redis sent an unexpected reply to MGET")
    now, before = reply
    return WindowState(_number(before), _number(now), fraction)


_Command = tuple[str | float, ...]


def _hit_total(replies: list[Reply], fraction: float) -> float:
    """The sliding-window total from the replies to a hit's ``INCRBYFLOAT``, ``EXPIRE`` and ``GET``."""
    now, _, before = replies
    return sliding_total(_number(before), _number(now), fraction)


def _integer(reply: Reply) -> int:
    if not isinstance(reply, int):
        raise RedisError(f"Redis sent {type(reply).__name__} where an integer was expected")
    return reply


class Unsynced(NamedTuple):
    """Spend added while Redis was unreachable, and the total it was added to."""

    baseline: float
    added: float


class RedisCounters:
    """The same sliding-window counter in Redis, so every replica sees one count per key.

    Bucket keys are ``{prefix}:{name}:{window_start}`` (window start in Unix seconds), expiring after
    two windows, which is exactly as long as a bucket is needed: first as current, then as previous.
    Each call is one round trip (a pipeline without MULTI: each command is atomic on its own, which
    is all the algorithm needs). Bucket boundaries come from this process's wall clock, so replicas
    should run NTP; a skew of a second shifts a little count between buckets, nothing more.
    Spend lives in ``{prefix}:spend:{name}`` without expiry: a budget is cumulative.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modelwire",
        clock: Clock = time.time,
        connect_timeout: float = 0.5,
        timeout: float = 1.0,
    ) -> None:
        # Short timeouts: a request waits for its limits, so a hung Redis must fail fast rather
        # than hold every request for seconds.
        self._redis = RespClient(url, connect_timeout=connect_timeout, timeout=timeout)
        self._prefix = prefix
        self._clock = clock
        self.address = redacted(url)
        """Where Redis is, fit for a log line: no credentials."""

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def ping(self) -> None:
        """Raise unless Redis answers."""
        await self._redis.call("PING")

    def _keys(self, name: str, window: int) -> tuple[str, str, float]:
        """The current and previous bucket keys, and the elapsed fraction of the current bucket."""
        position = self._clock() / window
        index = int(position)
        base = f"{self._prefix}:{name}:"
        return f"{base}{index * window}", f"{base}{(index - 1) * window}", position - index

    def _hit(self, name: str, window: int, amount: float) -> tuple[list[_Command], float]:
        """:meth:`hit`'s three commands (read by :func:`_hit_total`), and the elapsed fraction of
        the current bucket."""
        current, previous, fraction = self._keys(name, window)
        commands = [("INCRBYFLOAT", current, amount), ("EXPIRE", current, 2 * window), ("GET", previous)]
        return commands, fraction

    async def hit(self, name: str, window: int, amount: float = 1.0) -> float:
        commands, fraction = self._hit(name, window, amount)
        return _hit_total(await self._redis.pipeline(*commands), fraction)

    async def total(self, name: str, window: int) -> float:
        return (await self.state(name, window)).total

    async def state(self, name: str, window: int) -> WindowState:
        current, previous, fraction = self._keys(name, window)
        return _window_state(await self._redis.call("MGET", current, previous), fraction)

    def _spend_key(self, name: str) -> str:
        return f"{self._prefix}:spend:{name}"

    async def add_spend(self, name: str, usd: float) -> float:
        return _number(await self._redis.call("INCRBYFLOAT", self._spend_key(name), usd))

    async def spend(self, name: str) -> float:
        return _number(await self._redis.call("GET", self._spend_key(name)))

    async def seed_spend(self, name: str, usd: float) -> None:
        await self._redis.call("SET", self._spend_key(name), float(usd), "NX")

    async def admission(
        self, spend: str | None, tokens: str | None, requests: str | None, window: int
    ) -> Reading:
        """One pipeline: ``GET`` of the spend, ``MGET`` of the tpm buckets, then :meth:`hit`'s
        three commands for the rpm bucket."""
        commands: list[_Command] = []
        if spend is not None:
            commands.append(("GET", self._spend_key(spend)))
        if tokens is not None:
            tokens_now, tokens_before, tokens_fraction = self._keys(tokens, window)
            commands.append(("MGET", tokens_now, tokens_before))
        if requests is not None:
            hit, fraction = self._hit(requests, window, 1.0)
            commands += hit
        replies = iter(await self._redis.pipeline(*commands))
        spent = _number(next(replies)) if spend is not None else 0.0
        state = _window_state(next(replies), tokens_fraction) if tokens is not None else None
        return Reading(spent, state, _hit_total(list(replies), fraction) if requests is not None else None)

    async def lease(self, name: str, holder: str, limit: int, ttl: float) -> bool:
        """A sorted set of holders scored by expiry: expired ones dropped, this one added, the
        rest counted, in one MULTI. A new holder over the limit takes itself out again; two
        replicas racing for the last place may then both be refused, never both admitted."""
        key, now = f"{self._prefix}:lease:{name}", self._clock()
        _, added, held, _ = await self._redis.transaction(
            ("ZREMRANGEBYSCORE", key, "-inf", now),
            ("ZADD", key, now + ttl, holder),
            ("ZCARD", key),
            ("EXPIRE", key, math.ceil(ttl) + 1),
        )
        if _integer(added) and _integer(held) > limit:
            await self._redis.call("ZREM", key, holder)
            return False
        return True

    async def release(self, name: str, holder: str) -> None:
        await self._redis.call("ZREM", f"{self._prefix}:lease:{name}", holder)

    async def merge_spend(self, batch: Mapping[str, Unsynced]) -> dict[str, float]:
        """Add spend counted elsewhere; return the new totals.

        A key Redis no longer has (it restarted without persistence) first gets the baseline the
        spend was added to, so the budget continues rather than restarting from zero. MULTI/EXEC
        makes the batch all or nothing, so a retry after a failure cannot count part of it twice.
        """
        commands: list[_Command] = []
        for name, unsynced in batch.items():
            key = self._spend_key(name)
            commands += [("SET", key, unsynced.baseline, "NX"), ("INCRBYFLOAT", key, unsynced.added)]
        replies = await self._redis.transaction(*commands)
        return {name: _number(total) for name, total in zip(batch, replies[1::2], strict=True)}


def shared_failures() -> tuple[type[BaseException], ...]:
    """What an unreachable, hung or refusing Redis raises: :class:`RedisError` (error replies,
    timeouts, lost connections, malformed replies) and whatever OSError a socket may still raise
    (OSError covers the builtin ConnectionError and TimeoutError; they are listed to say so)."""
    return (RedisError, OSError, TimeoutError, ConnectionError)


T = TypeVar("T")


class _Down(enum.Enum):
    """The answer of a Redis call that did not get one."""

    DOWN = enum.auto()


_DOWN = _Down.DOWN


class _SpendLedger:
    """Spend as last seen in Redis, and what was added while Redis could not be told.

    During an outage a key's spend is its last known Redis total plus the local additions, so an
    outage does not reset a budget; the additions (and seeds Redis missed) wait here for recovery.
    """

    def __init__(self) -> None:
        self._known: dict[str, float] = {}
        self._seeds: dict[str, float] = {}
        self._added: dict[str, float] = {}

    @property
    def pending(self) -> bool:
        return bool(self._added or self._seeds)

    def remember(self, name: str, total: float) -> None:
        self._known[name] = total

    def seeded(self, name: str, usd: float) -> None:
        """A seed reached Redis: until a read says better, it is the spend."""
        self._known.setdefault(name, usd)

    def seed_locally(self, name: str, usd: float) -> None:
        self._seeds.setdefault(name, usd)

    def _baseline(self, name: str) -> float:
        known = self._known.get(name)
        return self._seeds.get(name, 0.0) if known is None else known

    def total(self, name: str) -> float:
        return self._baseline(name) + self._added.get(name, 0.0)

    def add(self, name: str, usd: float) -> float:
        self._added[name] = self._added.get(name, 0.0) + usd
        return self.total(name)

    def take(self) -> dict[str, Unsynced]:
        """Everything Redis has yet to be told, removed from here."""
        names = self._added.keys() | self._seeds.keys()
        batch = {name: Unsynced(self._baseline(name), self._added.get(name, 0.0)) for name in names}
        self._added.clear()
        self._seeds.clear()
        return batch

    def give_back(self, batch: Mapping[str, Unsynced]) -> None:
        """Undo :meth:`take` after Redis failed to take the batch."""
        for name, unsynced in batch.items():
            self._seeds.setdefault(name, unsynced.baseline)
            self._added[name] = self._added.get(name, 0.0) + unsynced.added


class FallbackCounters:
    """:class:`RedisCounters` that fall back to process memory while Redis is unreachable.

    Healthy, every call goes to Redis. A failed call starts an outage (one warning, ``on_change
    (False)``) and is answered from the local counters, as is every call after it without trying
    Redis, so a dead or hung Redis costs requests nothing. A background probe (:meth:`start`)
    pings Redis every ``probe_interval`` seconds, which also notices an outage with no traffic;
    once Redis answers, the spend counted locally is added to it and calls go to Redis again
    (one info line, ``on_change(True)``). Under ``on_error="deny"``, :attr:`refusing` tells the
    :class:`Limiter` to refuse limited keys meanwhile; the local counts then only keep spend.

    Owns ``shared``: :meth:`aclose` closes it.
    """

    def __init__(
        self,
        shared: RedisCounters,
        *,
        on_error: OnSharedError = "local",
        on_change: Callable[[bool], None] | None = None,
        local: MemoryCounters | None = None,
        probe_interval: float = PROBE_INTERVAL,
        probe_timeout: float = 2.0,
    ) -> None:
        self._shared = shared
        self._failures = shared_failures()
        self._local = local if local is not None else MemoryCounters()
        self._ledger = _SpendLedger()
        self._on_error: OnSharedError = on_error
        self._on_change = on_change
        self._interval = probe_interval
        self._probe_timeout = probe_timeout
        self._healthy = True
        self._probe: asyncio.Task[None] | None = None

    @property
    def healthy(self) -> bool:
        """False during an outage: for /readyz and a gauge."""
        return self._healthy

    @property
    def refusing(self) -> bool:
        """Whether limited requests must be refused now (``deny`` during an outage)."""
        return self._on_error == "deny" and not self._healthy

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Find out whether Redis answers (a bounded wait), then keep probing in the background.

        Never raises for an unreachable Redis: the gateway then starts inside an outage.
        """
        await self.check()
        self._start_probe()

    async def aclose(self) -> None:
        """Stop probing; tell Redis what it missed if it is back; close the connections."""
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
            self._probe = None
        if not self._healthy and self._ledger.pending:
            await self.check()
        await self._shared.aclose()

    async def check(self) -> bool:
        """One probe: ping Redis and, if that ends an outage, add the local spend to Redis first."""
        try:
            async with asyncio.timeout(self._probe_timeout):
                await self._shared.ping()
                if not self._healthy:
                    await self._push_spend()
        except self._failures as exc:
            self._fail(exc)
            return False
        self._recover()
        return True

    def _start_probe(self) -> None:
        if self._probe is None:
            self._probe = asyncio.get_running_loop().create_task(
                self._probe_forever(), name="modelwire-redis-probe"
            )

    async def _probe_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.check()
            except Exception:
                # A bug here must not end the probing, or an outage would never end.
                log.exception("Redis probe failed unexpectedly")

    async def _push_spend(self) -> None:
        """Add the outage's spend to Redis; whatever fails to get there stays for the next probe.

        Loops because requests keep adding locally while a batch is on its way; the last check
        for more and the switch back to Redis happen without an await in between.
        """
        while batch := self._ledger.take():
            try:
                totals = await self._shared.merge_spend(batch)
            except BaseException:
                self._ledger.give_back(batch)
                raise
            for name, total in totals.items():
                self._ledger.remember(name, total)

    def _fail(self, exc: BaseException) -> None:
        if not self._healthy:
            return
        self._healthy = False
        meanwhile = (
            "limited keys are refused (503)" if self._on_error == "deny" else "limits are counted per replica"
        )
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        log.warning(
            "Redis at %s is unreachable (%s); %s until it answers again",
            self._shared.address,
            detail,
            meanwhile,
        )
        self._notify(False)
        self._start_probe()  # in case start() was never called: an outage must end by itself

    def _recover(self) -> None:
        if self._healthy:
            return
        self._healthy = True
        log.info("Redis reachable again at %s; limits are shared again", self._shared.address)
        self._notify(True)

    def _notify(self, up: bool) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(up)
        except Exception:
            log.exception("the Redis on_change callback failed")

    async def _shared_call(self, call: Callable[[RedisCounters], Awaitable[T]]) -> T | _Down:
        """Redis's answer, or ``_DOWN`` during an outage or when this very call starts one."""
        if not self._healthy:
            return _DOWN
        try:
            return await call(self._shared)
        except self._failures as exc:
            self._fail(exc)
            return _DOWN

    # ------------------------------------------------------------------------------ Counters

    async def hit(self, name: str, window: int, amount: float = 1.0) -> float:
        total = await self._shared_call(lambda redis: redis.hit(name, window, amount))
        if total is _DOWN:
            return await self._local.hit(name, window, amount)
        return total

    async def total(self, name: str, window: int) -> float:
        return (await self.state(name, window)).total

    async def state(self, name: str, window: int) -> WindowState:
        state = await self._shared_call(lambda redis: redis.state(name, window))
        if state is _DOWN:
            return await self._local.state(name, window)
        return state

    async def add_spend(self, name: str, usd: float) -> float:
        spent = await self._shared_call(lambda redis: redis.add_spend(name, usd))
        if spent is _DOWN:
            return self._ledger.add(name, usd)
        self._ledger.remember(name, spent)
        return spent

    async def spend(self, name: str) -> float:
        spent = await self._shared_call(lambda redis: redis.spend(name))
        if spent is _DOWN:
            return self._ledger.total(name)
        self._ledger.remember(name, spent)
        return spent

    async def admission(
        self, spend: str | None, tokens: str | None, requests: str | None, window: int
    ) -> Reading:
        reading = await self._shared_call(lambda redis: redis.admission(spend, tokens, requests, window))
        if reading is _DOWN:
            local = await self._local.admission(None, tokens, requests, window)
            spent = self._ledger.total(spend) if spend is not None else 0.0
            return Reading(spent, local.tokens, local.requests)
        if spend is not None:
            self._ledger.remember(spend, reading.spent)
        return reading

    async def lease(self, name: str, holder: str, limit: int, ttl: float) -> bool:
        """During an outage places are counted per replica (whatever ``on_error`` says: a lease
        limits a key's open sockets, which must not all be refused because Redis is down)."""
        held = await self._shared_call(lambda redis: redis.lease(name, holder, limit, ttl))
        if held is _DOWN:
            return await self._local.lease(name, holder, limit, ttl)
        return held

    async def release(self, name: str, holder: str) -> None:
        await self._local.release(name, holder)
        await self._shared_call(lambda redis: redis.release(name, holder))

    async def seed_spend(self, name: str, usd: float) -> None:
        if await self._shared_call(lambda redis: redis.seed_spend(name, usd)) is _DOWN:
            self._ledger.seed_locally(name, usd)
        else:
            self._ledger.seeded(name, usd)


class Limiter:
    """Admits or refuses requests for a client key's :class:`Policy`.

    The limits are checked in order: budget, tokens, then requests. A key with a budget or a tpm
    limit has all three read (and the request counted against rpm) in one round trip to Redis,
    not one each; a request refused for any reason gives its rpm count back at once, so it never
    keeps a request slot.
    """

    def __init__(self, counters: Counters, *, window: int = WINDOW) -> None:
        self._counters = counters
        self._window = window
        self._fallback = counters if isinstance(counters, FallbackCounters) else None
        self._tallied: dict[str, tuple[Policy, int, float]] = {}  # per key: its policy, tokens, cost
        self._recording: set[asyncio.Task[None]] = set()

    @classmethod
    def create(
        cls,
        redis_url: str | None,
        *,
        on_shared_error: OnSharedError = "local",
        on_change: Callable[[bool], None] | None = None,
        window: int = WINDOW,
    ) -> Limiter:
        """The gateway's limiter: shared through Redis when there is a URL, else in memory.

        Cheap and never fails for an unreachable Redis; :meth:`start` then finds out.
        """
        if redis_url is None:
            return cls(MemoryCounters(), window=window)
        shared = RedisCounters(redis_url)
        return cls(FallbackCounters(shared, on_error=on_shared_error, on_change=on_change), window=window)

    @property
    def healthy(self) -> bool:
        """False while the shared counts are unreachable; always True for memory counts."""
        return self._fallback is None or self._fallback.healthy

    async def start(self) -> None:
        """Check Redis (at most a couple of seconds) and start probing it; never raises for it."""
        if self._fallback is not None:
            await self._fallback.start()

    async def aclose(self) -> None:
        """Record what is tallied, stop probing and close Redis, for :class:`FallbackCounters`
        (which own their Redis).

        Plain :class:`RedisCounters` passed to the constructor stay the caller's to close.
        """
        await asyncio.gather(*self._recording, return_exceptions=True)  # (bounded by Redis's timeout)
        if self._fallback is not None:
            await self._fallback.aclose()

    async def admit(self, policy: Policy, *, estimated_tokens: int = 0) -> Refusal | None:
        """Before a request: ``None`` when it may proceed, else why not and when to retry.

        Counts the request against rpm when admitted. Checks tpm against the tokens already
        recorded in the window plus the estimate, and the budget against cumulative spend.
        Under ``deny``, refuses while Redis is unreachable, including when it became so during
        these very checks: nothing limited is admitted on counts Redis has not seen.
        """
        if policy.unlimited:
            return None
        if self._refusing():
            return UNAVAILABLE
        refusal = await self._check(policy, estimated_tokens)
        return UNAVAILABLE if self._refusing() else refusal

    def _refusing(self) -> bool:
        return self._fallback is not None and self._fallback.refusing

    async def _check(self, policy: Policy, estimated_tokens: int) -> Refusal | None:
        """Budget, tokens, then requests; a key with only an rpm limit has nothing to read."""
        rpm, requests = policy.rpm, f"rpm:{policy.name}"
        if not policy.metered:
            return None if rpm is None else await self._count_request(requests, rpm)
        reading = await self._counters.admission(
            policy.name if policy.budget_usd is not None else None,
            f"tpm:{policy.name}" if policy.tpm is not None else None,
            requests if rpm is not None else None,
            self._window,
        )
        refusal = _over_budget(policy, reading.spent) or _over_tpm(
            policy, reading.tokens, estimated_tokens, self._window
        )
        if rpm is None or reading.requests is None:
            return refusal
        if refusal is not None:
            await self._counters.hit(requests, self._window, -1.0)  # counted with the reads: given back
            return refusal
        return None if reading.requests <= rpm else await self._refuse_request(requests, rpm)

    async def record(self, policy: Policy, *, tokens: int, cost: float | None) -> None:
        """After a request: add its tokens to the tpm window and its cost to the spend.

        Only what a limit needs is counted: usage accounting proper lives in the store.
        """
        if policy.tpm is not None and tokens > 0:
            await self._counters.hit(f"tpm:{policy.name}", self._window, float(tokens))
        if policy.budget_usd is not None and cost:
            await self._counters.add_spend(policy.name, cost)

    def tally(self, policy: Policy, *, tokens: int, cost: float | None) -> None:
        """:meth:`record` without waiting for it: what the requests served in one turn of the event
        loop used is added up per key and recorded by one task (a task per request cost ~9 µs of
        CPU, and its Redis round trips as much again)."""
        if not policy.metered:
            return
        if not self._tallied:
            task = asyncio.get_running_loop().create_task(self._record_tallied())
            self._recording.add(task)
            task.add_done_callback(self._recording.discard)
        _, tallied_tokens, tallied_cost = self._tallied.get(policy.name, (policy, 0, 0.0))
        self._tallied[policy.name] = (policy, tallied_tokens + tokens, tallied_cost + (cost or 0.0))

    async def _record_tallied(self) -> None:
        tallied, self._tallied = self._tallied, {}
        for policy, tokens, cost in tallied.values():
            await self.record(policy, tokens=tokens, cost=cost)

    async def lease(self, name: str, holder: str, limit: int, ttl: float) -> bool:
        """One of ``limit`` places under ``name`` (a key's open sockets), shared across replicas."""
        return await self._counters.lease(name, holder, limit, ttl)

    async def release(self, name: str, holder: str) -> None:
        await self._counters.release(name, holder)

    async def seed_spend(self, policy: Policy, usd: float) -> None:
        """Start the budget from what the store has recorded, unless the counters already know."""
        if policy.budget_usd is not None:
            await self._counters.seed_spend(policy.name, usd)

    async def _count_request(self, key: str, rpm: int) -> Refusal | None:
        """Count first, then check, so concurrent replicas cannot both take the last slot."""
        if await self._counters.hit(key, self._window) <= rpm:
            return None
        return await self._refuse_request(key, rpm)

    async def _refuse_request(self, key: str, rpm: int) -> Refusal:
        """Give back the request just counted over ``rpm``, and say when the window admits again."""
        await self._counters.hit(key, self._window, -1.0)
        state = await self._counters.state(key, self._window)
        wait = seconds_until(state, rpm, 1.0, self._window)
        return Refusal("rpm", _retry_after(wait, self._window), rpm, state.total)


def _over_budget(policy: Policy, spent: float) -> Refusal | None:
    if policy.budget_usd is None or spent < policy.budget_usd:
        return None
    return Refusal("budget", BUDGET_RETRY_AFTER, policy.budget_usd, spent)


def _over_tpm(policy: Policy, state: WindowState | None, estimated: int, window: int) -> Refusal | None:
    """Refuse when the estimate does not fit; one larger than the whole limit needs an empty window."""
    if policy.tpm is None or state is None:
        return None
    need = float(min(max(estimated, 1), policy.tpm))
    used = state.total
    if used + need <= policy.tpm:
        return None
    wait = seconds_until(state, policy.tpm, need, window)
    return Refusal("tpm", _retry_after(wait, window), policy.tpm, used)
