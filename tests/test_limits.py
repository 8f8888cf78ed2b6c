"""Limits: sliding-window counters in memory and in a real Redis behave the same, and the limiter
admits, refuses and says when to retry from them; when Redis goes away, requests are still served
(or refused with a 503 under ``deny``) and everything returns to Redis once it is back."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from redis.asyncio import Redis

from modelwire.gateway.limits import (
    Counters,
    FallbackCounters,
    Limiter,
    MemoryCounters,
    Policy,
    RedisCounters,
    WindowState,
    seconds_until,
)
from modelwire.gateway.resp import RedisError

from .services import SHARED_REDIS_URL as REDIS_URL

START = 1_000_020.0  # a multiple of 60: tests begin at the start of a window


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def purge(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    name = f"mwtest:limits:{uuid.uuid4().hex}"
    yield name
    await purge(name)


@pytest.fixture
async def redis_client() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture(params=["memory", "redis", "fallback"])
async def counters(request: pytest.FixtureRequest, clock: FakeClock, prefix: str) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters(clock=clock)
        return
    shared = RedisCounters(REDIS_URL, prefix=prefix, clock=clock)
    if request.param == "redis":
        yield shared
        await shared.aclose()
        return
    fallback = FallbackCounters(shared)  # healthy Redis: must behave exactly like RedisCounters
    yield fallback
    assert fallback.healthy
    await fallback.aclose()


@pytest.fixture
def limiter(counters: Counters) -> Limiter:
    return Limiter(counters)


# ---------------------------------------------------------------------------------------- counters


async def test_sliding_window_weights_the_previous_bucket(counters: Counters, clock: FakeClock) -> None:
    for _ in range(3):
        await counters.hit("n", 60)
    assert await counters.total("n", 60) == pytest.approx(3)
    clock.advance(60)  # next bucket, at its start: the previous one still fully overlaps
    assert await counters.total("n", 60) == pytest.approx(3)
    clock.advance(30)  # halfway: half of the previous bucket still counts
    assert await counters.total("n", 60) == pytest.approx(1.5)
    assert await counters.hit("n", 60) == pytest.approx(2.5)
    clock.advance(30)
    assert await counters.total("n", 60) == pytest.approx(1)
    clock.advance(60)
    assert await counters.total("n", 60) == pytest.approx(0)


async def test_a_gap_longer_than_a_window_forgets_everything(counters: Counters, clock: FakeClock) -> None:
    await counters.hit("n", 60, 5)
    clock.advance(150)
    assert await counters.total("n", 60) == 0
    assert await counters.hit("n", 60) == pytest.approx(1)


async def test_state_exposes_the_buckets(counters: Counters, clock: FakeClock) -> None:
    await counters.hit("n", 60, 4)
    clock.advance(75)
    await counters.hit("n", 60, 2)
    state = await counters.state("n", 60)
    assert (state.previous, state.current, state.fraction) == pytest.approx((4, 2, 0.25))
    assert state.total == pytest.approx(5)


async def test_names_are_independent(counters: Counters) -> None:
    await counters.hit("a", 60, 7)
    assert await counters.total("b", 60) == 0


async def test_spend_accumulates_and_seed_only_sets_once(counters: Counters) -> None:
    assert await counters.spend("k") == 0
    await counters.seed_spend("k", 2.5)
    await counters.seed_spend("k", 100.0)
    assert await counters.spend("k") == pytest.approx(2.5)
    assert await counters.add_spend("k", 0.25) == pytest.approx(2.75)
    assert await counters.spend("k") == pytest.approx(2.75)


async def test_seed_after_spending_is_ignored(counters: Counters) -> None:
    await counters.add_spend("k", 1.0)
    await counters.seed_spend("k", 50.0)
    assert await counters.spend("k") == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------- rpm


async def test_leases_cap_holders_and_lapse(counters: Counters, clock: FakeClock) -> None:
    """A key's places (its open sockets): at most ``limit`` holders; renewing one is not a new
    holder; a released place is free at once, an abandoned one when its lease runs out."""
    assert await counters.lease("sockets:k", "a", 2, 60)
    assert await counters.lease("sockets:k", "b", 2, 60)
    assert not await counters.lease("sockets:k", "c", 2, 60)
    assert await counters.lease("sockets:k", "a", 2, 60)  # a renewal, still within the limit
    assert await counters.lease("sockets:other", "c", 2, 60)  # names are independent
    await counters.release("sockets:k", "b")
    assert await counters.lease("sockets:k", "c", 2, 60)
    assert not await counters.lease("sockets:k", "d", 2, 60)
    clock.advance(30)
    assert await counters.lease("sockets:k", "a", 2, 60)  # renewed: now lasts until 90
    clock.advance(31)  # c lapsed (held until 60), a has not
    assert await counters.lease("sockets:k", "d", 2, 60)
    assert not await counters.lease("sockets:k", "e", 2, 60)


async def test_leases_of_two_replicas_never_exceed_the_limit(
    prefix: str, clock: FakeClock, redis_client: Redis
) -> None:
    """Two replicas racing for the last places on one Redis: never more holders than the limit."""
    replicas = [RedisCounters(REDIS_URL, prefix=prefix, clock=clock) for _ in range(2)]
    try:
        held = await asyncio.gather(*[replicas[n % 2].lease("sockets:k", f"h{n}", 3, 60) for n in range(12)])
        assert 1 <= sum(held) <= 3
        count = await redis_client.zcard(f"{prefix}:lease:sockets:k")
        assert count == sum(held)
    finally:
        for replica in replicas:
            await replica.aclose()


async def test_rpm_refuses_with_retry_after(limiter: Limiter, counters: Counters) -> None:
    policy = Policy("dev", rpm=3)
    for _ in range(3):
        assert await limiter.admit(policy) is None
    refusal = await limiter.admit(policy)
    assert refusal is not None
    assert refusal.reason == "rpm"
    assert refusal.limit == 3
    assert refusal.current == pytest.approx(3)
    assert 1 <= refusal.retry_after <= 60
    assert "requests per minute" in refusal.message
    assert await counters.total("rpm:dev", 60) == pytest.approx(3), "a refused request is not counted"


async def test_rpm_retry_after_is_when_the_window_admits(limiter: Limiter, clock: FakeClock) -> None:
    policy = Policy("dev", rpm=2)
    assert await limiter.admit(policy) is None
    assert await limiter.admit(policy) is None
    clock.advance(90)  # half of the previous bucket's two requests still count
    assert await limiter.admit(policy) is None
    refusal = await limiter.admit(policy)
    assert refusal is not None and refusal.retry_after == 30
    clock.advance(29)
    assert await limiter.admit(policy) is not None
    clock.advance(1)
    assert await limiter.admit(policy) is None


async def test_rpm_burst_waits_at_most_a_window(limiter: Limiter, clock: FakeClock) -> None:
    policy = Policy("dev", rpm=5)
    for _ in range(5):
        assert await limiter.admit(policy) is None
    clock.advance(10)
    refusal = await limiter.admit(policy)
    assert refusal is not None and refusal.retry_after == 60


# ---------------------------------------------------------------------------------------- tpm


async def test_tpm_counts_recorded_tokens_plus_the_estimate(limiter: Limiter) -> None:
    policy = Policy("dev", tpm=1000)
    assert await limiter.admit(policy, estimated_tokens=100) is None
    await limiter.record(policy, tokens=900, cost=None)
    assert await limiter.admit(policy, estimated_tokens=50) is None
    refusal = await limiter.admit(policy, estimated_tokens=200)
    assert refusal is not None
    assert (refusal.reason, refusal.limit) == ("tpm", 1000)
    assert refusal.current == pytest.approx(900)
    assert 1 <= refusal.retry_after <= 60
    assert "tokens per minute" in refusal.message
    await limiter.record(policy, tokens=200, cost=None)
    assert await limiter.admit(policy) is not None, "over the limit refuses even without an estimate"


async def test_tpm_recovers_as_the_window_slides(limiter: Limiter, clock: FakeClock) -> None:
    policy = Policy("dev", tpm=1000)
    await limiter.record(policy, tokens=1000, cost=None)
    clock.advance(60)
    refusal = await limiter.admit(policy, estimated_tokens=500)
    assert refusal is not None and refusal.retry_after == 30
    clock.advance(30)
    assert await limiter.admit(policy, estimated_tokens=500) is None


async def test_an_estimate_larger_than_the_limit_needs_an_empty_window(limiter: Limiter) -> None:
    policy = Policy("dev", tpm=100)
    assert await limiter.admit(policy, estimated_tokens=5000) is None
    await limiter.record(policy, tokens=10, cost=None)
    assert await limiter.admit(policy, estimated_tokens=5000) is not None


async def test_a_tpm_refusal_does_not_use_a_request(limiter: Limiter, counters: Counters) -> None:
    policy = Policy("dev", rpm=1, tpm=10)
    await limiter.record(policy, tokens=20, cost=None)
    refusal = await limiter.admit(policy)
    assert refusal is not None and refusal.reason == "tpm"
    assert await counters.total("rpm:dev", 60) == 0


async def test_admission_reads_spend_and_tokens_and_counts_the_request(counters: Counters) -> None:
    await counters.seed_spend("dev", 2.5)
    await counters.hit("tpm:dev", 60, 30.0)
    await counters.hit("rpm:dev", 60, 2.0)
    reading = await counters.admission("dev", "tpm:dev", "rpm:dev", 60)
    assert reading.spent == pytest.approx(2.5)
    assert reading.tokens is not None and reading.tokens.total == pytest.approx(30)
    assert reading.requests == pytest.approx(3)
    assert await counters.total("rpm:dev", 60) == pytest.approx(3), "the request was counted"
    only_spend = await counters.admission("dev", None, None, 60)
    assert (only_spend.tokens, only_spend.requests) == (None, None)
    assert await counters.total("rpm:dev", 60) == pytest.approx(3)
    only_tokens = await counters.admission(None, "tpm:dev", None, 60)
    assert only_tokens.spent == 0.0 and only_tokens.tokens is not None


async def test_a_budget_refusal_does_not_use_a_request(limiter: Limiter, counters: Counters) -> None:
    policy = Policy("dev", rpm=1, budget_usd=1.0)
    await limiter.record(policy, tokens=0, cost=1.0)
    for _ in range(3):
        refusal = await limiter.admit(policy)
        assert refusal is not None and refusal.reason == "budget"
    assert await counters.total("rpm:dev", 60) == 0


async def test_a_metered_key_is_admitted_in_one_round_trip(prefix: str, clock: FakeClock) -> None:
    """Budget, tokens and the rpm count in one pipeline, not a round trip each; a refusal for the
    budget or tokens costs one more, to give the rpm count back."""
    counters = RedisCounters(REDIS_URL, prefix=prefix, clock=clock)
    sent: list[list[str]] = []
    pipeline, call = counters._redis.pipeline, counters._redis.call

    async def counted_pipeline(*commands: Sequence[str | float]) -> list[object]:
        sent.append([str(c[0]) for c in commands])
        return await pipeline(*commands)

    async def counted_call(*args: str | float) -> object:
        sent.append([str(args[0])])
        return await call(*args)

    counters._redis.pipeline, counters._redis.call = counted_pipeline, counted_call  # type: ignore[method-assign,assignment]
    limiter = Limiter(counters)
    policy = Policy("dev", rpm=10, tpm=100, budget_usd=1.0)
    try:
        assert await limiter.admit(policy) is None
        assert sent == [["GET", "MGET", "INCRBYFLOAT", "EXPIRE", "GET"]]
        await limiter.record(policy, tokens=100, cost=0.5)
        sent.clear()
        refusal = await limiter.admit(policy, estimated_tokens=10)
        assert refusal is not None and refusal.reason == "tpm"
        assert sent == [["GET", "MGET", "INCRBYFLOAT", "EXPIRE", "GET"], ["INCRBYFLOAT", "EXPIRE", "GET"]]
        assert await counters.total("rpm:dev", 60) == pytest.approx(1), "the refusal gave its count back"
    finally:
        await counters.aclose()


# ---------------------------------------------------------------------------------------- budget


async def test_budget_starts_from_the_store_and_refuses_when_spent(limiter: Limiter) -> None:
    policy = Policy("dev", budget_usd=10.0)
    await limiter.seed_spend(policy, 9.5)
    assert await limiter.admit(policy) is None
    await limiter.record(policy, tokens=0, cost=0.4)
    assert await limiter.admit(policy) is None
    await limiter.record(policy, tokens=0, cost=0.2)
    refusal = await limiter.admit(policy)
    assert refusal is not None
    assert (refusal.reason, refusal.limit) == ("budget", 10.0)
    assert refusal.current == pytest.approx(10.1)
    assert refusal.retry_after == 3600
    assert "budget exhausted" in refusal.message
    await limiter.seed_spend(policy, 0.0)
    assert await limiter.admit(policy) is not None, "a later seed does not reset spend"


async def test_a_zero_budget_refuses_everything(limiter: Limiter) -> None:
    refusal = await limiter.admit(Policy("dev", budget_usd=0.0))
    assert refusal is not None and refusal.reason == "budget"


async def test_only_limited_dimensions_are_counted(limiter: Limiter, counters: Counters) -> None:
    policy = Policy("dev", rpm=100)
    await limiter.record(policy, tokens=500, cost=3.0)
    await limiter.seed_spend(policy, 7.0)
    assert await counters.total("tpm:dev", 60) == 0
    assert await counters.spend("dev") == 0


class Untouchable:
    """Counters that fail the test if anything reaches them."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"counters.{name} used for an unlimited policy")


async def test_unlimited_policies_never_touch_the_counters() -> None:
    limiter = Limiter(Untouchable())  # type: ignore[arg-type]
    policy = Policy("open")
    assert await limiter.admit(policy, estimated_tokens=10**6) is None
    await limiter.record(policy, tokens=10**6, cost=99.0)


@pytest.mark.parametrize(
    ("policy", "metered"),
    [
        (Policy("open"), False),
        (Policy("dev", rpm=100), False),
        (Policy("dev", tpm=1000), True),
        (Policy("dev", budget_usd=5.0), True),
        (Policy("dev", rpm=1, tpm=1, budget_usd=1.0), True),
    ],
)
async def test_only_metered_policies_have_anything_to_record(policy: Policy, metered: bool) -> None:
    """The gateway records a served request only for a metered policy: for any other, recording
    must have had nothing to do (rpm counted the request when it was admitted)."""
    assert policy.metered is metered
    recording = Limiter(Untouchable()).record(policy, tokens=10**6, cost=99.0)  # type: ignore[arg-type]
    if metered:
        with pytest.raises(AssertionError, match="used for an unlimited policy"):
            await recording
    else:
        await recording


class Counting(MemoryCounters):
    """Memory counters that count the calls recording usage."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def hit(self, name: str, window: int, amount: float = 1.0) -> float:
        self.calls.append(f"hit {name}")
        return await super().hit(name, window, amount)

    async def add_spend(self, name: str, usd: float) -> float:
        self.calls.append(f"add_spend {name}")
        return await super().add_spend(name, usd)


async def test_the_requests_of_one_turn_are_recorded_once_per_key() -> None:
    counters = Counting()
    limiter = Limiter(counters)
    a, b = Policy("a", tpm=10**6, budget_usd=100.0), Policy("b", tpm=10**6)
    for tokens in (10, 20, 30):
        limiter.tally(a, tokens=tokens, cost=0.25)
    limiter.tally(b, tokens=7, cost=None)
    limiter.tally(b, tokens=8, cost=1.0)  # b has no budget: its cost counts nowhere
    limiter.tally(Policy("c", rpm=5), tokens=99, cost=9.0)  # rpm alone: nothing to record
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert sorted(counters.calls) == ["add_spend a", "hit tpm:a", "hit tpm:b"]
    assert await counters.total("tpm:a", 60) == 60 and await counters.spend("a") == 0.75
    assert await counters.total("tpm:b", 60) == 15 and await counters.spend("b") == 0
    assert await counters.total("tpm:c", 60) == 0 and await counters.spend("c") == 0
    limiter.tally(a, tokens=1, cost=0.5)  # a later turn: recorded on its own
    await limiter.aclose()  # which records what is still tallied
    assert await counters.total("tpm:a", 60) == 61 and await counters.spend("a") == 1.25
    assert len(counters.calls) == 5


# ---------------------------------------------------------------------------------------- Retry-After maths


@pytest.mark.parametrize(
    ("state", "limit", "need", "expected"),
    [
        (WindowState(previous=0, current=3, fraction=0.0), 3, 1, 80.0),  # 60 to roll over, then 1/3 of 60
        (WindowState(previous=2, current=1, fraction=0.5), 2, 1, 30.0),  # wait for the previous to decay
        (WindowState(previous=4, current=0, fraction=0.0), 4, 1, 15.0),
        (WindowState(previous=0, current=0, fraction=0.3), 4, 1, 0.0),
        (WindowState(previous=0, current=10, fraction=0.5), 10, 20, 90.0),  # need > limit: until empty
    ],
)
def test_seconds_until(state: WindowState, limit: float, need: float, expected: float) -> None:
    assert seconds_until(state, limit, need, 60) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------- Redis only


async def test_replicas_sharing_redis_see_the_same_counts(prefix: str, clock: FakeClock) -> None:
    first = RedisCounters(REDIS_URL, prefix=prefix, clock=clock)
    second = RedisCounters(REDIS_URL, prefix=prefix, clock=clock)
    try:
        a, b = Limiter(first), Limiter(second)
        policy = Policy("team", rpm=3, budget_usd=1.0)
        assert [await a.admit(policy), await b.admit(policy), await a.admit(policy)] == [None] * 3
        refusal = await b.admit(policy)
        assert refusal is not None and refusal.reason == "rpm"
        assert (await a.admit(policy)) is not None
        await a.record(policy, tokens=0, cost=1.5)
        assert await second.spend("team") == pytest.approx(1.5)
    finally:
        await first.aclose()
        await second.aclose()


async def test_concurrent_replicas_never_overshoot_rpm(prefix: str, clock: FakeClock) -> None:
    replicas = [RedisCounters(REDIS_URL, prefix=prefix, clock=clock) for _ in range(3)]
    try:
        limiters = [Limiter(c) for c in replicas]
        policy = Policy("burst", rpm=10)
        results = await asyncio.gather(*(limiters[i % 3].admit(policy) for i in range(30)))
        assert sum(r is None for r in results) == 10
    finally:
        for c in replicas:
            await c.aclose()


async def test_redis_key_layout_and_expiry(prefix: str, clock: FakeClock, redis_client: Redis) -> None:
    counters = RedisCounters(REDIS_URL, prefix=prefix, clock=clock)
    try:
        await counters.hit("rpm:dev", 60)
        await counters.add_spend("dev", 0.5)
    finally:
        await counters.aclose()
    bucket = f"{prefix}:rpm:dev:{int(START)}"
    assert 0 < await redis_client.ttl(bucket) <= 120
    assert await redis_client.get(bucket) == b"1"
    assert await redis_client.ttl(f"{prefix}:spend:dev") == -1, "spend is cumulative: no expiry"


async def test_redis_short_window_expires_in_real_time(prefix: str, redis_client: Redis) -> None:
    counters = RedisCounters(REDIS_URL, prefix=prefix)
    try:
        for _ in range(3):
            await counters.hit("short", 1)
        assert await counters.total("short", 1) > 0
        await asyncio.sleep(2.1)
        assert await counters.total("short", 1) == 0
        assert [key async for key in redis_client.scan_iter(match=f"{prefix}:short:*")] == []
    finally:
        await counters.aclose()


# ---------------------------------------------------------------------------------------- Redis outages
#
# Against redis-server processes of the test's own, killed and restarted on the same port.


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisProcess:
    """A private redis-server to kill and restart on one port.

    With ``persist`` it saves on SIGTERM and loads on start, like a production Redis with RDB;
    without, a restart comes back empty.
    """

    def __init__(self, workdir: Path, *, persist: bool = False, password: str | None = None) -> None:
        workdir.mkdir()
        self.port = free_port()
        self.password = password
        self._args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        self._args += ["--dir", str(workdir), "--save", "3600 1" if persist else "", "--appendonly", "no"]
        if password:
            self._args += ["--requirepass", password]
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self._process = await asyncio.create_subprocess_exec(
            *self._args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        deadline = time.monotonic() + 5.0
        while not await self._answers():
            assert time.monotonic() < deadline, "redis-server did not start"
            await asyncio.sleep(0.02)

    async def _answers(self) -> bool:
        """Whether it replies to PING (NOAUTH counts: it is up), having loaded its data."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"PING\r\n")
            reply = await reader.readline()
        finally:
            writer.close()
            await writer.wait_closed()
        return reply.startswith((b"+", b"-")) and not reply.startswith(b"-LOADING")

    async def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            await asyncio.wait_for(self._process.wait(), 5.0)
            self._process = None


@pytest.fixture
async def redis_processes(tmp_path: Path) -> AsyncIterator[Callable[..., RedisProcess]]:
    """Makes private Redis servers (not started), and kills whatever is left of them at the end."""
    made: list[RedisProcess] = []

    def make(*, persist: bool = False, password: str | None = None) -> RedisProcess:
        made.append(RedisProcess(tmp_path / f"redis{len(made)}", persist=persist, password=password))
        return made[-1]

    yield make
    for server in made:
        await server.stop()


async def wait_until(condition: Callable[[], bool], within: float) -> float:
    """Seconds until ``condition`` held, failing the test after ``within``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within, f"not within {within} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def redis_spend(url: str, name: str, *, prefix: str = "modelwire") -> float:
    client = Redis.from_url(url)
    try:
        raw = await client.get(f"{prefix}:spend:{name}")
    finally:
        await client.aclose()
    return float(raw or 0)


async def test_during_an_outage_rpm_holds_locally_and_nothing_raises(
    redis_processes: Callable[..., RedisProcess], clock: FakeClock
) -> None:
    server = redis_processes()
    await server.start()
    # No start(): no probe to notice the outage first, so the request's own failed call does.
    counters = FallbackCounters(RedisCounters(server.url), local=MemoryCounters(clock=clock))
    limiter = Limiter(counters)
    try:
        rpm = Policy("dev", rpm=3)
        assert await limiter.admit(rpm) is None and limiter.healthy
        await server.stop()
        results = [await limiter.admit(rpm) for _ in range(4)]
        assert not counters.healthy
        assert results[:3] == [None, None, None], "the call that failed was counted locally too"
        assert results[3] is not None and results[3].reason == "rpm" and results[3].status == 429
        metered = Policy("team", tpm=1000, budget_usd=5.0)
        await limiter.seed_spend(metered, 1.0)
        await limiter.record(metered, tokens=900, cost=0.5)
        refusal = await limiter.admit(metered, estimated_tokens=200)
        assert refusal is not None and refusal.reason == "tpm"
        assert await counters.spend("team") == pytest.approx(1.5)
    finally:
        await limiter.aclose()


async def test_one_warning_per_outage_and_on_change_both_ways(
    redis_processes: Callable[..., RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelwire.limits")
    server = redis_processes()
    await server.start()
    changes: list[bool] = []
    limiter = Limiter(
        FallbackCounters(RedisCounters(server.url), on_change=changes.append, probe_interval=0.2)
    )
    policy = Policy("dev", rpm=1000)
    try:
        await limiter.start()
        await server.stop()
        assert await asyncio.gather(*(limiter.admit(policy) for _ in range(10))) == [None] * 10
        await server.start()
        await wait_until(lambda: limiter.healthy, within=3.0)
        await server.stop()
        assert await limiter.admit(policy) is None
    finally:
        await limiter.aclose()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, "ten concurrent failures in the first outage, one warning"
    assert f"127.0.0.1:{server.port}" in warnings[0].getMessage()
    assert "counted per replica" in warnings[0].getMessage()
    assert sum("Redis reachable again" in r.getMessage() for r in caplog.records) == 1
    assert all(r.exc_info is None for r in caplog.records), "no tracebacks"
    assert changes == [False, True, False]


async def test_after_a_restart_counts_go_to_redis_again_within_two_seconds(
    redis_processes: Callable[..., RedisProcess],
) -> None:
    server = redis_processes()
    await server.start()
    limiter = Limiter(FallbackCounters(RedisCounters(server.url)))  # the default 1 s probe
    policy = Policy("dev", rpm=1000)
    client: Redis | None = None
    try:
        await limiter.start()
        await server.stop()
        assert await limiter.admit(policy) is None
        assert not limiter.healthy
        await server.start()
        client = Redis.from_url(server.url)
        started = time.monotonic()
        while not await client.keys("modelwire:rpm:dev:*"):
            assert time.monotonic() - started < 2.5, "requests never counted in Redis again"
            assert await limiter.admit(policy) is None
            await asyncio.sleep(0.05)
        assert limiter.healthy
    finally:
        await limiter.aclose()
        if client is not None:
            await client.aclose()


async def test_spend_during_an_outage_is_added_to_redis_on_recovery(
    redis_processes: Callable[..., RedisProcess],
) -> None:
    server = redis_processes(persist=True)
    await server.start()
    counters = FallbackCounters(RedisCounters(server.url), probe_interval=0.2)
    limiter = Limiter(counters)
    policy = Policy("dev", budget_usd=2.2)
    try:
        await limiter.start()
        await limiter.record(policy, tokens=0, cost=2.0)
        await server.stop()
        await limiter.record(policy, tokens=0, cost=0.5)
        refusal = await limiter.admit(policy)
        assert refusal is not None and refusal.reason == "budget", "the outage did not reset the budget"
        assert refusal.current == pytest.approx(2.5)
        await server.start()
        other = Redis.from_url(server.url)  # another replica spending meanwhile
        try:
            assert float(await other.incrbyfloat("modelwire:spend:dev", 1.0)) >= 3.0
        finally:
            await other.aclose()
        await wait_until(lambda: counters.healthy, within=3.0)
        assert await redis_spend(server.url, "dev") == pytest.approx(3.5)
        assert await counters.spend("dev") == pytest.approx(3.5)
    finally:
        await limiter.aclose()


async def test_spend_survives_a_redis_that_restarts_empty(
    redis_processes: Callable[..., RedisProcess],
) -> None:
    server = redis_processes()
    await server.start()
    counters = FallbackCounters(RedisCounters(server.url), probe_interval=0.2)
    limiter = Limiter(counters)
    seeded_during_outage = Policy("late", budget_usd=10.0)
    try:
        await limiter.start()
        await limiter.record(Policy("dev", budget_usd=10.0), tokens=0, cost=2.0)
        await server.stop()
        await limiter.record(Policy("dev", budget_usd=10.0), tokens=0, cost=0.5)
        await limiter.seed_spend(seeded_during_outage, 4.0)
        await server.start()
        await wait_until(lambda: counters.healthy, within=3.0)
        assert await redis_spend(server.url, "dev") == pytest.approx(2.5)
        assert await redis_spend(server.url, "late") == pytest.approx(4.0)
    finally:
        await limiter.aclose()


async def test_deny_refuses_limited_keys_with_a_503_while_redis_is_down(
    redis_processes: Callable[..., RedisProcess],
) -> None:
    server = redis_processes()
    await server.start()
    limiter = Limiter(FallbackCounters(RedisCounters(server.url), on_error="deny", probe_interval=0.2))
    limited = Policy("dev", rpm=100)
    try:
        await limiter.start()
        assert await limiter.admit(limited) is None
        await server.stop()
        refusal = await limiter.admit(limited)
        assert refusal is not None
        assert (refusal.reason, refusal.status, refusal.code) == ("unavailable", 503, "limits_unavailable")
        assert 1 <= refusal.retry_after <= 10
        assert "Redis, which is unreachable" in refusal.message
        assert await limiter.admit(Policy("open")) is None, "unlimited keys are never affected"
        await limiter.record(Policy("dev", tpm=100, budget_usd=1.0), tokens=10, cost=0.1)
        await server.start()
        await wait_until(lambda: limiter.healthy, within=3.0)
        assert await limiter.admit(limited) is None
    finally:
        await limiter.aclose()


async def test_starting_while_redis_is_down_recovers_when_it_comes_up(
    redis_processes: Callable[..., RedisProcess], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelwire.limits")
    server = redis_processes(password="s3cret")  # its port closed until started
    changes: list[bool] = []
    limiter = Limiter.create(server.url, on_change=changes.append)
    policy = Policy("dev", rpm=5)
    client = Redis.from_url(server.url)
    try:
        started = time.monotonic()
        await limiter.start()
        assert time.monotonic() - started < 1.0
        assert not limiter.healthy and changes == [False]
        assert await limiter.admit(policy) is None
        await server.start()
        await wait_until(lambda: limiter.healthy, within=3.0)
        assert changes == [False, True]
        assert await limiter.admit(policy) is None
        assert await client.keys("modelwire:rpm:dev:*")
    finally:
        await limiter.aclose()
        await client.aclose()
    assert f"127.0.0.1:{server.port}" in caplog.text
    assert "s3cret" not in caplog.text


async def test_a_black_holed_redis_fails_within_the_timeout() -> None:
    with socket.socket() as hole:  # the kernel completes the handshake; nobody ever answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"redis://127.0.0.1:{hole.getsockname()[1]}/0"
        plain = RedisCounters(url)  # the default timeouts
        started = time.monotonic()
        try:
            with pytest.raises(RedisError):
                await plain.hit("n", 60)
        finally:
            await plain.aclose()
        assert time.monotonic() - started < 2.0
        limiter = Limiter(FallbackCounters(RedisCounters(url, timeout=0.3)))
        policy = Policy("dev", rpm=100)
        try:
            started = time.monotonic()
            assert await limiter.admit(policy) is None
            assert time.monotonic() - started < 1.0
            started = time.monotonic()
            assert [await limiter.admit(policy) for _ in range(20)] == [None] * 20
            assert time.monotonic() - started < 0.2, "during an outage requests do not wait on Redis"
        finally:
            await limiter.aclose()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:pw@cache.internal:6380/2", "redis://cache.internal:6380/2"),
        ("rediss://:pw@[::1]:6379/0?password=pw", "rediss://[::1]:6379/0"),
        ("redis://localhost", "redis://localhost"),
    ],
)
def test_logged_addresses_carry_no_credentials(url: str, shown: str) -> None:
    assert RedisCounters(url).address == shown
