"""Random ids for the answers the gateway names itself: a Responses ``resp_…`` and its items, an
Anthropic ``msg_…`` when the upstream gave no id, a Gemini ``responseId``.

``uuid.uuid4()`` reads the OS's random source once per id: a system call that, on a loaded gateway
with a writer thread, gives up the GIL and queues to get it back (tens of µs per id in profiles).
These come from one read per batch instead, just as unpredictable; a forked worker starts afresh
so that no two processes hand out the same ids.

Ids the store keys its rows by (a response's, its output items') start with the time they were
minted, as OpenAI's own ``resp_…`` ids do: each new row then lands at the end of the store's
indexes, on the few pages a transaction already touches, where a random key dirtied a page of its
own in each index (SQLite spent 3.6-7.8x the CPU per stored response: bench/store_writes.py).
"""

from __future__ import annotations

import os
import time

_BATCH = 256  # ids per read of the random source
_HEX_DIGITS = 32  # 128 bits, as long as ``uuid4().hex``

_pool: list[str] = []


def random_hex() -> str:
    """32 random hex digits."""
    try:
        return _pool.pop()
    except IndexError:
        digits = os.urandom(_BATCH * _HEX_DIGITS // 2).hex()
        _pool.extend(digits[i : i + _HEX_DIGITS] for i in range(0, len(digits), _HEX_DIGITS))
        return _pool.pop()


def ordered_hex() -> str:
    """12 hex digits of the Unix time in milliseconds, then 32 random ones: ids minted later sort
    after (to the millisecond)."""
    return f"{time.time_ns() // 1_000_000:012x}{random_hex()}"


os.register_at_fork(after_in_child=_pool.clear)
