"""The rate limit: a per-token sliding window.

``rate_limit`` requests per ``rate_window`` seconds for each token, counted
over a *sliding* window (a request is allowed when fewer than ``rate_limit``
accepted requests happened in the last ``rate_window`` seconds). Every API
answer has ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``; a 429
``RATE_LIMIT_EXCEEDED`` also has ``X-RateLimit-Reset`` (whole seconds, >= 1)
and never ``Retry-After``. Control endpoints are not limited.
"""

from __future__ import annotations

import math
from collections import deque


class _SlidingWindowLimiter:
    """Per-key sliding log of accepted request times. Callers hold the lock."""

    def __init__(self) -> None:
        self._log: dict[str, deque[float]] = {}

    def clear(self) -> None:
        self._log.clear()

    def _recent(self, key: str, window: float, now: float) -> deque[float]:
        times = self._log.setdefault(key, deque())
        while times and times[0] <= now - window:
            times.popleft()
        return times

    def remaining(self, key: str, limit: int, window: float, now: float) -> int:
        return max(0, limit - len(self._recent(key, window, now)))

    def acquire(self, key: str, limit: int, window: float, now: float) -> tuple[bool, int, int]:
        """Take one request slot: (allowed, remaining, whole seconds until a slot frees)."""
        times = self._recent(key, window, now)
        if len(times) < limit:
            times.append(now)
            return True, limit - len(times), 0
        # The oldest request that still counts must leave the window first.
        oldest_that_blocks = times[len(times) - limit]
        reset = max(1, math.ceil(oldest_that_blocks + window - now))
        return False, 0, reset
