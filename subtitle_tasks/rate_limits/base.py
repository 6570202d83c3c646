"""One DatoCMS request budget shared by every worker process.

DatoCMS allows a fixed number of requests per API token in any rolling
window (60 every 3 seconds at the time of writing). Each official client
enforces that for its own process only; a fleet of Celery workers using the
same token would overrun it together. :class:`SharedRateLimiter` keeps one
budget per token in a backend that every process can see (Redis in
production, :class:`~subtitle_tasks.rate_limits.backends.stub.StubBackend`
in unit tests and single-process runs).

The algorithm is a *sliding-window log with reservations*:

* The backend keeps the times at which requests were (or will be) allowed to
  start, for the last ``window`` seconds and any reserved future.
* A new request is given the earliest time ``at`` such that ``at`` is not
  before now, not before the end of a 429 penalty, and not before the
  ``limit``-th most recent recorded time plus ``window``. With the times
  sorted ``e[0] <= ... <= e[n-1]`` that last bound is ``e[n-limit] + window``.
* If ``at - now <= max_wait`` the time is written to the log (the slot is
  reserved, so nobody else can take it while this caller sleeps) and the
  caller sleeps until ``at``. Otherwise nothing is written and the caller is
  told to come back after ``at - now`` seconds.

Why this never lets more than ``limit`` requests through in *any*
half-open interval ``(a - window, a]``: the new time ``at`` satisfies
``at - window >= e[n-limit]``, so every interval of length ``window`` that
contains ``at`` contains at most the ``limit - 1`` recorded times after
``e[n-limit]`` besides ``at`` itself. By induction over insertions the whole
log (and so the fleet) stays within the limit. A fixed-window counter would
let ``2 * limit`` through around a boundary; GCRA with a burst of ``limit``
allows a burst followed by a steady drip, which can exceed ``limit`` in some
window of the server's own sliding count. The log costs one sorted-set entry
per request in the window (at most ``limit`` plus reservations), which is
tiny at 60 requests.

Times are the backend's: the Redis backend reads ``TIME`` on the server, so
workers with skewed clocks agree. The limiter's ``clock`` only feeds the stub.
"""

from __future__ import annotations

import hashlib
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

DEFAULT_PREFIX = "subtitle_tasks:ratelimit"

#: Hex digits of the token's SHA-256 kept in the key (96 bits: no collisions
#: between the handful of tokens one deployment uses, and nothing reversible).
KEY_DIGEST_LENGTH = 24


def key_for_token(token: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The backend key of the budget belonging to ``token``.

    Only a truncated SHA-256 of the token goes into the key, so the token never
    reaches Redis (``KEYS *``, ``MONITOR``, RDB dumps). The key does not depend
    on the host, process or environment: every worker using the same token
    computes the same key and so shares the same budget.
    """
    if not token:
        raise ValueError("an API token is required to derive a rate-limit key")
    digest = hashlib.sha256(token.encode("utf-8")).hexdigest()[:KEY_DIGEST_LENGTH]
    return f"{prefix}:{digest}"


@dataclass(frozen=True)
class Acquisition:
    """What a backend decided for one request.

    Attributes:
      granted: whether a slot was taken (possibly in the future, see ``wait``).
      wait: seconds from ``now`` until the slot; when not granted, the seconds
        until the earliest slot at the time of asking.
      used: entries in the log after the decision (reservations included).
      blocked: seconds of 429 penalty still left when deciding (0 if none).
      now: the backend's time of the decision (Unix seconds; Redis server time
        for the Redis backend).
    """

    granted: bool
    wait: float
    used: int
    blocked: float
    now: float

    @property
    def at(self) -> float:
        """Backend time at which the request may start (or could have started)."""
        return self.now + self.wait


class RateLimiterBackend(ABC):
    """Storage for shared budgets. Every method is atomic with respect to ``key``.

    ``now`` is the caller's clock; a backend with its own notion of time (Redis)
    ignores it.
    """

    @abstractmethod
    def acquire(self, key: str, *, limit: int, window: float, max_wait: float, now: float) -> Acquisition:
        """Reserve the earliest slot for ``key`` if it is at most ``max_wait`` away."""

    @abstractmethod
    def penalize(self, key: str, seconds: float, *, now: float) -> float:
        """Block ``key`` for ``seconds`` unless it is already blocked longer.

        Returns the seconds the block now lasts.
        """

    @abstractmethod
    def blocked_for(self, key: str, *, now: float) -> float:
        """Seconds of penalty left on ``key`` (0 when not blocked)."""

    @abstractmethod
    def snapshot(self, key: str, *, window: float, now: float) -> dict[str, Any]:
        """``{"now", "used", "reserved", "blocked_for"}`` for ``key``.

        ``used`` counts log entries inside ``(now - window, now]``; ``reserved``
        counts entries after ``now`` (slots promised to sleeping callers).
        """

    @abstractmethod
    def reset(self, key: str) -> None:
        """Forget the log and any penalty of ``key``."""


def _raise_rate_limited(message: str, retry_after: float) -> None:
    # Imported here: the HTTP client imports this package, and this package
    # only needs the exception at the moment it raises it.
    from subtitle_tasks.datocms.exceptions import RateLimited

    raise RateLimited(message, retry_after=retry_after)


def _round_up(seconds: float) -> float:
    """Seconds rounded up to the millisecond, so a retry never comes early."""
    return math.ceil(max(seconds, 0.0) * 1000 - 1e-6) / 1000


class SharedRateLimiter:
    """A fleet-wide request budget for one API token.

    Parameters:
      backend: where the budget lives (``RedisBackend`` for a fleet).
      key: the budget's name; derive it with :func:`key_for_token`.
      limit: requests allowed in any ``window``-second interval. Pass less than
        the server's limit (say 55 of 60) to leave headroom for network jitter
        and for requests made outside this limiter.
      window: length of the interval in seconds.
      max_wait: longest this process will sleep for a slot inside
        :meth:`acquire`; beyond it ``RateLimited`` is raised instead, so a
        Celery worker can retry the task later instead of idling.
      sleep, clock: injectable for tests. ``clock`` is only used by backends
        without their own time source (the stub).
    """

    def __init__(
        self,
        backend: RateLimiterBackend,
        key: str,
        *,
        limit: int = 60,
        window: float = 3.0,
        max_wait: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        if not window > 0:
            raise ValueError(f"window must be positive, not {window!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be zero or positive, not {max_wait!r}")
        if not key:
            raise ValueError("key must not be empty")
        self.backend = backend
        self.key = key
        self.limit = limit
        self.window = float(window)
        self.max_wait = float(max_wait)
        self.sleep = sleep
        self.clock = clock

    def __repr__(self) -> str:
        return f"<SharedRateLimiter {self.key} {self.limit}/{self.window:g}s max_wait={self.max_wait:g}s>"

    def acquire(self) -> None:
        """Take one request slot, sleeping up to ``max_wait`` seconds for it.

        Raises ``subtitle_tasks.datocms.exceptions.RateLimited`` (with
        ``retry_after`` in seconds) when no slot frees in time or the fleet is
        blocked by a 429. Backend errors propagate (``redis.ConnectionError``
        when Redis is unreachable).
        """
        self.acquire_slot()

    def acquire_slot(self) -> Acquisition:
        """:meth:`acquire`, returning the backend's decision (for tests and metrics)."""
        decision = self.backend.acquire(
            self.key, limit=self.limit, window=self.window, max_wait=self.max_wait, now=self.clock()
        )
        if not decision.granted:
            if decision.blocked > 0 and decision.blocked >= decision.wait:
                message = f"DatoCMS answered 429 recently; the whole fleet waits {decision.wait:.3f}s more"
            else:
                message = (
                    f"shared DatoCMS budget of {self.limit} requests per {self.window:g}s is used up; "
                    f"next free slot in {decision.wait:.3f}s"
                )
            _raise_rate_limited(message, _round_up(decision.wait))
        if decision.wait > 0:
            self.sleep(decision.wait)
            # A 429 may have arrived while we slept on a reserved slot: the
            # reservation predates it, but the request must not go out now.
            remaining = self.backend.blocked_for(self.key, now=self.clock())
            if remaining > 0:
                _raise_rate_limited(
                    f"DatoCMS answered 429 while waiting for a slot; the whole fleet waits {remaining:.3f}s more",
                    _round_up(remaining),
                )
        return decision

    def penalize(self, seconds: float) -> None:
        """Block every process using this key for ``seconds`` (a 429's reset).

        An existing longer block is kept; zero, negative or missing values do nothing.
        """
        if seconds is None or not seconds > 0:
            return
        self.backend.penalize(self.key, float(seconds), now=self.clock())

    def snapshot(self) -> dict[str, Any]:
        """The budget as the backend sees it now, for status pages and tests.

        Keys: ``key``, ``limit``, ``window``, ``used`` (requests in the current
        window), ``reserved`` (slots promised to sleeping callers), ``remaining``,
        ``blocked_until`` (backend Unix time or ``None``), ``blocked_for``
        (seconds) and ``now`` (backend Unix time).
        """
        state = self.backend.snapshot(self.key, window=self.window, now=self.clock())
        blocked_for = state["blocked_for"]
        return {
            "key": self.key,
            "limit": self.limit,
            "window": self.window,
            "used": state["used"],
            "reserved": state["reserved"],
            "remaining": max(0, self.limit - state["used"] - state["reserved"]),
            "blocked_until": state["now"] + blocked_for if blocked_for > 0 else None,
            "blocked_for": blocked_for,
            "now": state["now"],
        }

    def reset(self) -> None:
        """Forget this key's log and penalty (tests, operator tools)."""
        self.backend.reset(self.key)
