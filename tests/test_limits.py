"""Limits: sliding-window counters in memory and in a real Redis behave the same, and the limiter
admits, refuses and says when to retry from them."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from modelwire.gateway.limits import (
    Counters,
    Limiter,
    MemoryCounters,
    Policy,
    RedisCounters,
    WindowState,
    seconds_until,
)

REDIS_URL = os.environ.get("MODELWIRE_TEST_REDIS", "redis://127.0.0.1:6379/0")
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


@pytest.fixture(params=["memory", "redis"])
async def counters(request: pytest.FixtureRequest, clock: FakeClock, prefix: str) -> AsyncIterator[Counters]:
    if request.param == "memory":
        yield MemoryCounters(clock=clock)
        return
    shared = RedisCounters(REDIS_URL, prefix=prefix, clock=clock)
    yield shared
    await shared.aclose()


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
