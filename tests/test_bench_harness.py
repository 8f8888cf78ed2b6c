"""The side-by-side benchmark's own machinery: a harness that measured the wrong thing would put
wrong figures in the README."""

from __future__ import annotations

import asyncio
import functools
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import compare
import inprocess


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _settled(pid: int, want: str) -> str:
    for _ in range(50):
        if (state := _state(pid)) == want:
            return state
        time.sleep(0.02)
    return _state(pid)


def test_isolate_freezes_every_target_but_the_measured_one_and_never_the_upstream() -> None:
    names = ("upstream", "modelwire", "litellm", "portkey")
    procs = {n: subprocess.Popen(["sleep", "60"], start_new_session=True) for n in names}
    try:
        compare.isolate(procs, "modelwire")
        running = ("upstream", "modelwire")
        assert {n: _settled(p.pid, "S" if n in running else "T") for n, p in procs.items()} == {
            "upstream": "S",
            "modelwire": "S",
            "litellm": "T",
            "portkey": "T",
        }
        compare.isolate(procs, "litellm")
        assert _settled(procs["modelwire"].pid, "T") == "T"
        assert _settled(procs["litellm"].pid, "S") == "S"
        compare.isolate(procs, None)
        assert all(_settled(p.pid, "S") == "S" for p in procs.values())
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_translated_paths_are_reported_against_chat_passthrough_in_rps_and_in_cpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rounds = {
        "chat": [{"rps": 6000.0, "cpu_us_per_req": 150.0}, {"rps": 5000.0, "cpu_us_per_req": 170.0}],
        "messages_to_chat": [
            {"rps": 4500.0, "cpu_us_per_req": 200.0},
            {"rps": 4000.0, "cpu_us_per_req": 200.0},
        ],
    }
    compare.print_ratios({"modelwire": rounds}, list(rounds), _median)
    lines = capsys.readouterr().out.splitlines()
    # medians: rps 4,250 / 5,500; CPU 160 / 200
    assert "  messages_to_chat: rps ÷ chat passthrough = 0.77 (CPU/req: chat's ÷ this one's = 0.80)" in lines


def test_worker_scaling_is_reported_as_a_ratio_of_medians_and_round_by_round(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = {
        "modelwire-1w": {"chat": [{"rps": 3000.0}, {"rps": 2000.0}, {"rps": 2500.0}]},
        "modelwire-2w": {"chat": [{"rps": 6300.0}, {"rps": 3800.0}, {"rps": 5000.0}]},
    }
    compare.print_ratios(results, ["chat"], _median)
    lines = capsys.readouterr().out.splitlines()
    # medians 5,000 / 2,500; rounds paired in the order they ran
    assert "  chat: modelwire-2w rps ÷ modelwire-1w's = 2.00 (rounds: 2.10, 1.90, 2.00)" in lines


@dataclass
class _Point:
    x: int
    y: int


async def _make_points(n: int) -> None:
    for _ in range(n):
        _Point(1, 2)
        await asyncio.sleep(0)


def test_bytecode_counts_follow_the_work_and_name_a_dataclass_init_by_its_class() -> None:
    few = asyncio.run(inprocess.count_bytecodes(functools.partial(_make_points, 10)))
    many = asyncio.run(inprocess.count_bytecodes(functools.partial(_make_points, 30)))
    init = "<string>:__init__ (_Point)"
    assert few[init] > 0
    assert many[init] == 3 * few[init]  # the same three assignments per point, every time
    loop = next(where for where in few if where.endswith("test_bench_harness.py:_make_points"))
    assert many[loop] > 2 * few[loop]
    assert not any("count_bytecodes" in where for where in few)  # tracing starts inside the work


def _median(rows: list[dict[str, float]], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else None


def test_quiesce_waits_out_a_target_still_busy_after_its_turn() -> None:
    """A gateway still working for clients wrk has gone from (LiteLLM after 1,024 paced streams)
    is waited for before the next turn, else the freeze carries its backlog into that turn."""
    busy = "import time\nend = time.monotonic() + 1.5\nwhile time.monotonic() < end: pass\ntime.sleep(60)"
    worker = subprocess.Popen([sys.executable, "-c", busy])
    idle = subprocess.Popen(["sleep", "60"])
    try:
        time.sleep(0.2)  # the interpreter is up and spinning
        waited = compare.quiesce(worker.pid, step=0.25)
        assert 1.0 <= waited < 5.0
        cpu = compare.cpu_seconds(worker.pid)
        time.sleep(0.5)
        assert compare.cpu_seconds(worker.pid) - cpu < 0.05  # it was done when quiesce returned
        assert compare.quiesce(idle.pid, step=0.25) <= 0.5
    finally:
        worker.kill()
        idle.kill()
        worker.wait()
        idle.wait()
