"""Ids the gateway mints: 128 random bits, never repeated, not even across a fork."""

from __future__ import annotations

import os
import re

from modelwire.dialects.ids import random_hex


def test_ids_are_32_hex_digits_and_do_not_repeat() -> None:
    ids = [random_hex() for _ in range(2000)]  # several batches
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_a_forked_child_draws_ids_of_its_own() -> None:
    random_hex()  # the parent holds a batch the child must not reuse
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids and leave at once
        os.write(write, "".join(random_hex() for _ in range(8)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 1024).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(random_hex() for _ in range(8))
    assert len(child) == len(parent) == 256
    assert {child[i : i + 32] for i in range(0, 256, 32)}.isdisjoint(
        parent[i : i + 32] for i in range(0, 256, 32)
    )
