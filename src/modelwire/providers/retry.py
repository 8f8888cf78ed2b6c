"""When and how long to wait before trying an upstream again."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ModelwireError


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The wait the server asked for, in seconds: ``retry-after-ms``, ``x-ms-retry-after-ms``,
    then ``retry-after`` as seconds or an HTTP date."""
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / 1000)
            except ValueError:
                pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    """``x-should-retry: true|false`` overrides the status-based choice when present."""
    value = headers.get("x-should-retry")
    if value == "true":
        return True
    if value == "false":
        return False
    return None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``initial_delay`` doubling up to ``max_delay``, ``max_retries`` times.

    Jitter only ever lengthens a wait the server asked for, and a server wait longer than
    ``max_delay`` means give up at once rather than sit out an hour-long quota reset.
    """

    max_retries: int = 5
    initial_delay: float = 1.0
    max_delay: float = 60.0

    def delay(self, retry: int, error: ModelwireError) -> float | None:
        """Seconds to wait before retry number ``retry`` (0-based), or None to give up."""
        if retry >= self.max_retries or not error.retryable:
            return None
        wait = error.retry_after
        if wait is not None:
            if wait > self.max_delay:
                return None
            return wait + random.uniform(0, min(1.0, wait * 0.1))
        base = min(self.max_delay, self.initial_delay * 2.0**retry)
        return base * random.uniform(0.75, 1.0)
