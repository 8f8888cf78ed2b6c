"""The keep-alive schedule of streams waiting for their first answer (generation.LateAnswers):
one timer for all, ticking only while a stream waits, every waiting stream told once its wait
reached the period, and none told once its answer came."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from modelwire.gateway.call import Call
from modelwire.gateway.generation import LateAnswers
from modelwire.gateway.surfaces import CHAT


def waiting(name: str) -> Call:
    return Call(name, CHAT, time.monotonic())


async def test_each_waiting_stream_is_told_once_within_a_slice_of_the_period() -> None:
    late = LateAnswers(0.4)
    loop = asyncio.get_running_loop()
    told: dict[str, float] = {}
    began: dict[str, float] = {}

    def teller(name: str) -> Callable[[], None]:
        return lambda: told.__setitem__(name, loop.time())

    for name in ("a", "b", "c"):
        began[name] = loop.time()
        late.add(waiting(name), teller(name))
        await asyncio.sleep(0.03)
    await asyncio.sleep(0.6)
    assert set(told) == {"a", "b", "c"}
    for name, at in told.items():
        assert 0.4 <= at - began[name] <= 0.4 + 0.05 + 0.05  # the period, a tick, the loop's lag
    assert late._waiting == {} and late._timer is None  # nothing waits: the timer stopped


async def test_a_stream_answered_in_time_is_not_told_and_one_timer_serves_all() -> None:
    late = LateAnswers(0.4)
    told: list[str] = []
    answered, slow = waiting("answered"), waiting("slow")
    late.add(answered, lambda: told.append("answered"))
    late.add(slow, lambda: told.append("slow"))
    timer = late._timer
    assert timer is not None
    late.add(waiting("third"), lambda: told.append("third"))
    assert late._timer is timer  # one timer for every waiting stream
    late.discard(answered)
    await asyncio.sleep(0.6)
    assert sorted(told) == ["slow", "third"]
    late.discard(slow)  # after it was told: nothing left to remove, and no error
    assert late._waiting == {} and late._timer is None
