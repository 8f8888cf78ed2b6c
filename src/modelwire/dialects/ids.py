"""Random ids for the answers the gateway names itself: a Responses ``resp_…`` and its items, an
Anthropic ``msg_…`` when the upstream gave no id, a Gemini ``responseId``.

``uuid.uuid4()`` reads the OS's random source once per id: a system call that, on a loaded gateway
with a writer thread, gives up the GIL and queues to get it back (tens of µs per id in profiles).
These come from one read per batch instead, just as unpredictable; a forked worker starts afresh
so that no two processes hand out the same ids.
"""

from __future__ import annotations

import os

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


os.register_at_fork(after_in_child=_pool.clear)
