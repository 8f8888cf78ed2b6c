"""What the gateway depends on, and whether each dependency answered last time it was asked.

The store is watched by the key sync, four times a second (see :mod:`.auth`); Redis by the limit
counters' own probe. Each change is said once in the log (a warning when a dependency goes, one line
when it is back), reported to the metrics, and read by ``/readyz``, which answers 503 naming what is
down while the gateway keeps serving under its documented fallbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("modelwire.gateway")

UP, DOWN = "up", "down"


class Dependencies:
    """The last known state of each named dependency."""

    def __init__(self, on_change: Callable[[str, bool], None] = lambda name, up: None) -> None:
        self._up: dict[str, bool] = {}
        self._on_change = on_change

    def watch(self, name: str) -> None:
        """Start reporting ``name`` (as up until it is seen failing)."""
        self._up.setdefault(name, True)
        self._on_change(name, True)

    def mark(self, name: str, up: bool, detail: str = "", *, announce: bool = True) -> None:
        """Record a reading; a change is logged (unless the caller logs it itself) and reported."""
        if self._up.get(name) == up:
            return
        self._up[name] = up
        if announce and up:
            log.info("%s reachable again", name)
        elif announce:
            log.warning("%s unreachable%s; serving in degraded mode", name, f": {detail}" if detail else "")
        self._on_change(name, up)

    @property
    def healthy(self) -> bool:
        return all(self._up.values())

    def report(self) -> dict[str, str]:
        return {name: UP if up else DOWN for name, up in sorted(self._up.items())}
