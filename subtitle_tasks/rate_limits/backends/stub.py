"""In-process backend: the Redis backend's rules, kept in dicts behind a lock.

For unit tests (drive it with a fake clock through ``SharedRateLimiter(clock=...)``)
and for a single process that wants the limiter without Redis. Threads of one
process share it; separate processes do not.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from ..base import Acquisition, RateLimiterBackend


class StubBackend(RateLimiterBackend):
    """Sliding-window log with reservations, in memory. Time is the caller's ``now``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, list[float]] = {}
        self._blocked_until: dict[str, float] = {}

    def _prune(self, key: str, window: float, now: float) -> list[float]:
        log = self._logs.setdefault(key, [])
        # Entries at or before now - window are outside every window that
        # contains now or any later time.
        cut = bisect.bisect_right(log, now - window)
        if cut:
            del log[:cut]
        return log

    def _blocked(self, key: str, now: float) -> float:
        until = self._blocked_until.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked_until[key]
            return 0.0
        return until - now

    def acquire(self, key: str, *, limit: int, window: float, max_wait: float, now: float) -> Acquisition:
        with self._lock:
            log = self._prune(key, window, now)
            used = len(log)
            blocked = self._blocked(key, now)
            at = now + blocked
            if used >= limit:
                at = max(at, log[used - limit] + window)
            wait = at - now
            if wait > max_wait:
                return Acquisition(granted=False, wait=wait, used=used, blocked=blocked, now=now)
            bisect.insort(log, at)
            return Acquisition(granted=True, wait=wait, used=used + 1, blocked=blocked, now=now)

    def penalize(self, key: str, seconds: float, *, now: float) -> float:
        with self._lock:
            current = self._blocked(key, now)
            if seconds > current:
                self._blocked_until[key] = now + seconds
                return seconds
            return current

    def blocked_for(self, key: str, *, now: float) -> float:
        with self._lock:
            return self._blocked(key, now)

    def snapshot(self, key: str, *, window: float, now: float) -> dict[str, Any]:
        with self._lock:
            log = self._prune(key, window, now)
            reserved = len(log) - bisect.bisect_right(log, now)
            return {
                "now": now,
                "used": len(log) - reserved,
                "reserved": reserved,
                "blocked_for": self._blocked(key, now),
            }

    def reset(self, key: str) -> None:
        with self._lock:
            self._logs.pop(key, None)
            self._blocked_until.pop(key, None)
