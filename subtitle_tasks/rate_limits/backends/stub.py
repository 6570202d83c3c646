"""In-process backend: the Redis backend's rules, kept in dicts behind a lock.

For unit tests (drive it with a fake clock through ``SharedRateLimiter(clock=...)``)
and for a single process that wants the limiter without Redis. Threads of one
process share it; separate processes do not.
"""

from __future__ import annotations

import bisect
import threading
from typing import Any

from ..base import HISTORY_WINDOWS, SHARE_SCALE, Acquisition, RateLimiterBackend, burst_size, effective_limit


class StubBackend(RateLimiterBackend):
    """Sliding-window log with reservations, in memory. Time is the caller's ``now``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logs: dict[str, list[float]] = {}
        # Times of the foreign entries, each also in _logs (only snapshot tells them apart).
        self._foreign: dict[str, list[float]] = {}
        self._plans: dict[str, tuple[int, float]] = {}  # key -> (plan, expires at)
        self._blocked_until: dict[str, float] = {}

    @staticmethod
    def _cut(times: list[float], before: float) -> None:
        cut = bisect.bisect_right(times, before)
        if cut:
            del times[:cut]

    def _prune(self, key: str, window: float, now: float) -> list[float]:
        log = self._logs.setdefault(key, [])
        # Entries at or before now - window are outside every window that
        # contains now or any later time; observe() reads one window further back.
        horizon = now - HISTORY_WINDOWS * window
        self._cut(log, horizon)
        self._cut(self._foreign.setdefault(key, []), horizon)
        return log

    def _plan(self, key: str, now: float) -> int | None:
        entry = self._plans.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._plans[key]
            return None
        return entry[0]

    def _blocked(self, key: str, now: float) -> float:
        until = self._blocked_until.get(key)
        if until is None:
            return 0.0
        if until <= now:
            del self._blocked_until[key]
            return 0.0
        return until - now

    def acquire(
        self,
        key: str,
        *,
        limit: int,
        window: float,
        max_wait: float,
        now: float,
        share_ppm: int = SHARE_SCALE,
        burst_ppm: int = SHARE_SCALE,
    ) -> Acquisition:
        with self._lock:
            plan = self._plan(key, now)
            limit = effective_limit(limit, plan, share_ppm)
            burst = burst_size(limit, plan, burst_ppm)
            log = self._prune(key, window, now)
            # Entries older than the window may remain; they never decide the
            # slot (e[n-limit] + window <= now for them) but are not "used".
            used = len(log) - bisect.bisect_right(log, now - window)
            blocked = self._blocked(key, now)
            at = now + blocked
            if len(log) >= limit:
                at = max(at, log[len(log) - limit] + window)
            if burst < limit and len(log) >= burst:
                at = max(at, log[len(log) - burst] + window * burst / limit)
            wait = at - now
            if wait > max_wait:
                return Acquisition(granted=False, wait=wait, used=used, blocked=blocked, now=now, limit=limit)
            bisect.insort(log, at)
            return Acquisition(granted=True, wait=wait, used=used + 1, blocked=blocked, now=now, limit=limit)

    def observe(
        self,
        key: str,
        *,
        plan: int,
        remaining: int | None,
        window: float,
        since: float | None,
        slack: float,
        plan_ttl: float,
        max_foreign: int,
        now: float,
    ) -> int:
        with self._lock:
            self._plans[key] = (plan, now + plan_ttl)
            if remaining is None:
                return 0
            counted = plan - remaining
            start = (now if since is None else min(since, now)) - window - slack
            if counted <= 0 or start < now - HISTORY_WINDOWS * window:
                return 0  # nothing counted, or an answer too old to compare with the log
            log = self._prune(key, window, now)
            held = bisect.bisect_right(log, now) - bisect.bisect_right(log, start)
            foreign = min(counted - held, max_foreign)
            if foreign <= 0:
                return 0
            at = bisect.bisect_right(log, now)
            log[at:at] = [now] * foreign
            phantoms = self._foreign.setdefault(key, [])
            at = bisect.bisect_right(phantoms, now)
            phantoms[at:at] = [now] * foreign
            return foreign

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
            start, end = bisect.bisect_right(log, now - window), bisect.bisect_right(log, now)
            phantoms = self._foreign[key]
            return {
                "now": now,
                "used": end - start,
                "reserved": len(log) - end,
                "foreign": bisect.bisect_right(phantoms, now) - bisect.bisect_right(phantoms, now - window),
                "plan": self._plan(key, now),
                "blocked_for": self._blocked(key, now),
            }

    def reset(self, key: str) -> None:
        with self._lock:
            self._logs.pop(key, None)
            self._foreign.pop(key, None)
            self._plans.pop(key, None)
            self._blocked_until.pop(key, None)
