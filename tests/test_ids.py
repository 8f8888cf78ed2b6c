"""Ids the gateway mints: 128 random bits, never repeated, not even across a fork; those the store
keys rows by led by their minting time."""

from __future__ import annotations

import os
import re
import time

from modelwire.dialects.ids import random_hex
from modelwire.dialects.openai_responses import new_id


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


def test_ids_the_store_keys_rows_by_sort_by_minting_time() -> None:
    """A response's and its items' ids start with the minting millisecond: new rows append to the
    store's indexes instead of landing on a random page of each."""
    first = new_id("resp")
    time.sleep(0.002)
    later = [new_id("msg") for _ in range(300)]  # across pool refills
    assert re.fullmatch(r"resp_[0-9a-f]{44}", first)
    assert all(re.fullmatch(r"msg_[0-9a-f]{44}", i) for i in later)
    minted = int(first[5:17], 16)
    assert abs(minted - time.time_ns() // 1_000_000) < 5_000  # the Unix time in ms, not a counter
    stamps = [i[4:16] for i in later]
    assert stamps == sorted(stamps) and first[5:17] < stamps[0]
    assert len({i[16:] for i in later}) == len(later)  # the random part still differs
