"""Lockout: repeated bad keys from one address lock it, doubling up to a cap; success forgives."""

from __future__ import annotations

import pytest

from modelwire.gateway.config import LockoutConfig
from modelwire.gateway.lockout import Lockout


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def lockout(clock: FakeClock) -> Lockout:
    return Lockout(clock=clock)


def fail(lockout: Lockout, address: str, times: int) -> list[float | None]:
    return [lockout.failure(address) for _ in range(times)]


def test_five_failures_lock_for_thirty_seconds(lockout: Lockout, clock: FakeClock) -> None:
    assert fail(lockout, "10.0.0.1", 4) == [None] * 4
    assert lockout.locked("10.0.0.1") is None
    assert lockout.failure("10.0.0.1") == 30.0
    assert lockout.locked("10.0.0.1") == pytest.approx(30.0)
    clock.advance(10)
    assert lockout.locked("10.0.0.1") == pytest.approx(20.0)
    clock.advance(20)
    assert lockout.locked("10.0.0.1") is None


def test_each_further_lockout_doubles_up_to_an_hour(lockout: Lockout, clock: FakeClock) -> None:
    lengths = []
    for _ in range(9):
        lengths.append(fail(lockout, "a", 5)[-1])
        clock.advance(3600)
    assert lengths == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_failures_while_locked_do_not_count(lockout: Lockout, clock: FakeClock) -> None:
    fail(lockout, "a", 5)
    assert fail(lockout, "a", 10) == [None] * 10
    clock.advance(30)
    assert fail(lockout, "a", 4) == [None] * 4, "a fresh count starts after the lockout"
    assert lockout.failure("a") == 60


def test_success_resets_the_count(lockout: Lockout) -> None:
    fail(lockout, "a", 4)
    lockout.success("a")
    assert fail(lockout, "a", 4) == [None] * 4
    assert lockout.locked("a") is None


def test_success_resets_the_doubling(lockout: Lockout, clock: FakeClock) -> None:
    fail(lockout, "a", 5)
    clock.advance(30)
    lockout.success("a")
    assert fail(lockout, "a", 5)[-1] == 30


def test_addresses_are_independent(lockout: Lockout) -> None:
    fail(lockout, "a", 5)
    assert lockout.locked("a") is not None
    assert lockout.locked("b") is None
    assert lockout.failure("b") is None


def test_thresholds_are_configurable(clock: FakeClock) -> None:
    config = LockoutConfig(failures=2, first_seconds=5, max_seconds=12)
    lockout = Lockout.from_config(config, clock=clock)
    lengths = []
    for _ in range(4):
        lengths.append(fail(lockout, "a", 2)[-1])
        clock.advance(100)
    assert lengths == [5, 10, 12, 12]


def test_memory_is_bounded_least_recent_first(clock: FakeClock) -> None:
    lockout = Lockout(clock=clock, max_addresses=3)
    for address in ("a", "b", "c"):
        fail(lockout, address, 4)
    lockout.failure("a")  # locks a, and makes it the most recent
    lockout.failure("d")  # evicts b, the least recent
    assert len(lockout) == 3
    assert lockout.locked("a") is not None
    assert lockout.failure("b") is None, "b was forgotten: its count starts over"
    assert fail(lockout, "c", 1) == [None]  # c was evicted by b's return; starting over too
    assert len(lockout) == 3


def test_default_capacity_is_one_hundred_thousand(clock: FakeClock) -> None:
    lockout = Lockout(clock=clock)
    for n in range(100_050):
        lockout.failure(f"10.{n}")
    assert len(lockout) == 100_000
