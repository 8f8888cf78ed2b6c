#!/usr/bin/env python3
"""Where the gateway's time goes under load: one scenario of ``compare.py`` driven by wrk while
py-spy samples the gateway, printed as the functions with the most samples (self and total).

    .venv/bin/python bench/profile.py chat_stream --seconds 15 --top 40
    .venv/bin/python bench/profile.py chat --svg /tmp/chat.svg       # also a flame graph

Sampling (py-spy, ``pip install py-spy``) leaves the gateway's own speed as it is, where cProfile
would double the cost of every small call and skew the picture toward them.
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import compare  # noqa: E402  (the same upstream, config, bodies and wrk driver)


def collapsed(path: str) -> collections.Counter[str]:
    """py-spy's raw output: one ``frame;frame;... count`` line per distinct stack."""
    stacks: collections.Counter[str] = collections.Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if stack:
                stacks[stack] += int(count)
    return stacks


def tables(
    stacks: collections.Counter[str],
) -> tuple[collections.Counter[str], collections.Counter[str], int]:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    return own, total, sum(stacks.values())


def by_file(own: collections.Counter[str]) -> collections.Counter[str]:
    """Self samples summed per source file: which layer the time is spent in."""
    files: collections.Counter[str] = collections.Counter()
    for frame, count in own.items():
        files[frame.rpartition("(")[2].split(":")[0]] += count
    return files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(compare.SCENARIOS))
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--svg", default="", help="also write a flame graph here")
    ap.add_argument("--config-extra", default="", help="YAML appended to the gateway's config")
    args = ap.parse_args()

    with compare.canned_upstream("modelwire-profile-") as (root, up):
        _profile(args, root, up)
    return 0


def _profile(args: argparse.Namespace, root: str, up: int) -> None:
    port = compare.free_port()
    config = compare.modelwire_config(root, port, up)
    if args.config_extra:
        with open(config, "a") as f:
            f.write(args.config_extra + "\n")
    modelwire = os.path.join(compare.ROOT, ".venv/bin/modelwire")
    log = open(os.path.join(root, "modelwire.log"), "w")  # noqa: SIM115  (open while the gateway runs)
    gateway = subprocess.Popen([modelwire, "serve", "--config", config], stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        auth = f"Authorization: Bearer {compare.CLIENT_KEY}"
        if not compare.wait_http(
            base + "/v1/models", headers={"Authorization": f"Bearer {compare.CLIENT_KEY}"}
        ):
            raise SystemExit(f"the gateway did not start; see {log.name}")
        path, body, conns = compare.SCENARIOS[args.scenario]
        compare.run_wrk(base + path, body, conns, 2, auth)  # warm up
        raw = os.path.join(root, "stacks.txt")
        spy = os.path.join(compare.ROOT, ".venv/bin/py-spy")
        sampler = threading.Thread(
            target=subprocess.run,
            args=(
                [
                    spy,
                    "record",
                    "-r",
                    "250",
                    "-d",
                    str(args.seconds),
                    "-f",
                    "raw",
                    "-o",
                    raw,
                    "-p",
                    str(gateway.pid),
                ],
            ),
            kwargs={"capture_output": True},
        )
        sampler.start()
        result = compare.run_wrk(base + path, body, conns, args.seconds, auth)
        sampler.join()
        if args.svg:
            subprocess.run(
                [spy, "record", "-r", "250", "-d", "5", "-o", args.svg, "-p", str(gateway.pid)],
                capture_output=True,
                check=False,
            )
        own, total, samples = tables(collapsed(raw))
        print(f"{args.scenario}: {result.get('rps', 0):.0f} rps, {samples} samples")
        print("\n  self%  total%  function")
        for frame, count in own.most_common(args.top):
            print(f"  {100 * count / samples:5.1f}  {100 * total[frame] / samples:6.1f}  {frame}")
        print("\n  self%  file")
        for where, count in by_file(own).most_common(args.top):
            print(f"  {100 * count / samples:5.1f}  {where}")
        print("\n  total%  function (inclusive, modelwire only)")
        ours = [(f, c) for f, c in total.most_common() if "modelwire" in f]
        for frame, count in ours[: args.top]:
            print(f"  {100 * count / samples:6.1f}  {frame}")
    finally:
        gateway.terminate()
        gateway.wait()


if __name__ == "__main__":
    raise SystemExit(main())
