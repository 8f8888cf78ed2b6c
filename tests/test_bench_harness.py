"""The side-by-side benchmark's own machinery: a harness that measured the wrong thing would put
wrong figures in the README."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import compare


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
