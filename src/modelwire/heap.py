"""The process's glibc heap: what modelwire asks of it to keep RSS near what is in use. Elsewhere
(musl, macOS, Windows) there is no such libc and each call does nothing."""

from __future__ import annotations

import contextlib
import ctypes

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def limit_arenas(count: int) -> None:
    """At most ``count`` malloc heaps (glibc otherwise gives each allocating thread its own, kept
    at its peak)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, count)


def give_back() -> None:
    """Return freed heap memory to the system (glibc keeps it mapped otherwise, and RSS stays at
    its peak)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
