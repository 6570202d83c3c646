"""One DatoCMS request budget shared by every worker process.

DatoCMS allows a fixed number of requests per API token in any rolling
window (60 every 3 seconds at the time of writing; plans differ). Each official
client enforces that for its own process only; a fleet of Celery workers using
the same token would overrun it together. :class:`SharedRateLimiter` keeps one
budget per token in a backend that every process can see (Redis in
production, :class:`~subtitle_tasks.rate_limits.backends.stub.StubBackend`
in unit tests and single-process runs).

The algorithm is a *sliding-window log with reservations*:

* The backend keeps the times at which requests were (or will be) allowed to
  start, for the last ``window`` seconds and any reserved future (plus one more
  window of history, which only :meth:`~SharedRateLimiter.observe` reads).
* A new request is given the earliest time ``at`` such that ``at`` is not
  before now, not before the end of a 429 penalty, and not before the
  ``L``-th most recent recorded time plus ``window``. With the times
  sorted ``e[0] <= ... <= e[n-1]`` that last bound is ``e[n-L] + window``.
* If ``at - now <= max_wait`` the time is written to the log (the slot is
  reserved, so nobody else can take it while this caller sleeps) and the
  caller sleeps until ``at``. Otherwise nothing is written and the caller is
  told to come back after ``at - now`` seconds.

``L``, the *effective limit*, is read by the same atomic backend call:
``min(limit, max(1, floor(plan * share)))``, where ``plan`` is the last
``X-RateLimit-Limit`` the server announced for this key (remembered for
``plan_ttl`` seconds, so a plan change is followed) and ``share`` the part of
it the fleet may use (the rest is headroom for the customer's editors). Until
an answer has been seen ``L = limit``: that lasts one round trip, during which
each worker has at most one request in flight.

Once the plan is known the slot is also *paced*: not before
``e[n-B] + window * B / L``, with ``B = ceil(L * burst)``, i.e. at most ``B``
requests in any ``B / L`` of a window. A backlog then goes out in small bursts
spread over the window instead of all of it at the window's start; without
that, the fleet would sit idle for most of each window, hear nothing of other
tools' traffic meanwhile (only answers tell), and meet it all at once with its
next full burst. A lone request after a quiet spell still goes out at once.

The log also holds *foreign* entries. Each answer says how many requests the
server counted in its window (``X-RateLimit-Limit - X-RateLimit-Remaining``).
If that is more than the log holds for the same window, the difference was
spent by other tools on the same token (editors, builds), and
:meth:`~SharedRateLimiter.observe` adds that many entries stamped "now", in
one atomic call. They take slots like our own requests and leave with the
window. Foreign entries already in the log count as "held", so repeated
answers about the same foreign traffic do not add it twice. The log's side of
the comparison counts from ``slack`` seconds before the observing request's
own slot minus ``window``: the server counted at some moment after that slot,
so every request of ours it could still count has a slot after that start
(if none took ``slack`` longer than the observing one from slot to server).
The log's count is then an upper bound and the foreign count a lower bound:
the estimate never invents traffic, it may miss some (ours sent around the
window's edges), and ``share``'s headroom absorbs what it misses.

Why no window ever holds more than ``L`` requests of ours (pacing only ever
delays ``at``, so it takes nothing from this): the new time
``at`` satisfies ``at - window >= e[n-L]``, so the log held at most ``L - 1``
entries after ``at - window`` when ``at`` was granted, and every interval
``(a - window, a]`` containing ``at`` lies after ``at - window``. Take any such
interval and the request in it that was granted *last*: every other request
of ours in it was already in the log then (pruning drops only entries older
than ``now - window``, outside every interval containing a later ``at``).
So each interval holds at most ``L`` of our requests, ``L`` being the
effective limit in force at that last grant, and never more than ``limit``.
The same count includes every foreign entry known at that grant, so our
requests plus the foreign traffic reported before them stay within ``L``.
Foreign traffic reported *after* a slot was reserved cannot take it back;
reservations reach at most ``max_wait`` ahead. A fixed-window counter would
let ``2 * limit`` through around a boundary; GCRA with a burst of ``limit``
allows a burst followed by a steady drip, which can exceed ``limit`` in some
window of the server's own sliding count. The log costs one sorted-set entry
per request (ours or foreign) in two windows, tiny at 60 requests.

Times are the backend's: the Redis backend reads ``TIME`` on the server, so
workers with skewed clocks agree. The limiter's ``clock`` only feeds the stub.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_PREFIX = "subtitle_tasks:ratelimit"

#: Hex digits of the token's SHA-256 kept in the key (96 bits: no collisions
#: between the handful of tokens one deployment uses, and nothing reversible).
KEY_DIGEST_LENGTH = 24

#: ``share`` travels to the backends as an integer number of millionths, so
#: ``floor(plan * share)`` is exact in Python and in Lua (0.7 * 30 is 20.99... in floats).
SHARE_SCALE = 1_000_000

#: Largest plan and foreign count taken from a header: anything bigger is garbage,
#: and capping bounds the work of one observe (one sorted-set entry per request).
MAX_PLAN = 1_000_000
MAX_FOREIGN_PER_ANSWER = 1_000

#: Log entries are kept this many windows back (one is what ``acquire`` needs;
#: ``observe`` compares with a window that may start up to one window earlier).
HISTORY_WINDOWS = 2


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


def share_millionths(share: float) -> int:
    """A fraction (``share``, ``burst``) as the integer the backends work with (see :data:`SHARE_SCALE`)."""
    return max(1, min(SHARE_SCALE, round(share * SHARE_SCALE)))


def effective_limit(limit: int, plan: int | None, share_ppm: int) -> int:
    """``min(limit, max(1, floor(plan * share)))``, or ``limit`` while the plan is unknown.

    The Redis script computes the same in Lua; keep the two in step.
    """
    if not plan or plan < 1:
        return limit
    return min(limit, max(1, plan * share_ppm // SHARE_SCALE))


def burst_size(limit: int, plan: int | None, burst_ppm: int) -> int:
    """Requests that may go out back to back under the effective ``limit``.

    ``ceil(limit * burst)`` once a plan is known, else the whole ``limit``.
    The Redis script computes the same in Lua; keep the two in step.
    """
    if not plan or plan < 1:
        return limit
    return max(1, min(limit, -(-limit * burst_ppm // SHARE_SCALE)))


def _count(value: Any, minimum: int) -> int | None:
    """A header count as an int, or ``None`` for anything missing or unusable."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        value = value.strip()
        if not value.isdigit() or not value.isascii():
            return None
        value = int(value)
    if not isinstance(value, int) or not minimum <= value <= MAX_PLAN:
        return None
    return value


@dataclass(frozen=True)
class Acquisition:
    """What a backend decided for one request.

    Attributes:
      granted: whether a slot was taken (possibly in the future, see ``wait``).
      wait: seconds from ``now`` until the slot; when not granted, the seconds
        until the earliest slot at the time of asking.
      used: entries in the current window and reserved future after the
        decision (foreign entries included).
      blocked: seconds of 429 penalty still left when deciding (0 if none).
      now: the backend's time of the decision (Unix seconds; Redis server time
        for the Redis backend).
      limit: the effective limit the decision applied (``None`` from a backend
        that does not say).
    """

    granted: bool
    wait: float
    used: int
    blocked: float
    now: float
    limit: int | None = None

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
        """Reserve the earliest slot for ``key`` if it is at most ``max_wait`` away.

        The limit applied is ``L = effective_limit(limit, plan, share_ppm)`` with
        the plan last recorded by :meth:`observe`, read in the same atomic step;
        with ``B = burst_size(L, plan, burst_ppm)`` the slot is also at least
        ``window * B / L`` after the ``B``-th most recent entry.
        """

    @abstractmethod
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
        """Learn from one answer's headers, atomically. Returns the foreign entries added.

        Records ``plan`` for ``plan_ttl`` seconds. With ``remaining``, compares
        ``plan - remaining`` with the log's entries in
        ``(min(since, now) - window - slack, now]`` and adds the excess (at most
        ``max_foreign``) as foreign entries at ``now``. ``since`` is the
        observing request's slot (``None``: unknown); a start older than
        :data:`HISTORY_WINDOWS` windows means the answer is too old to compare,
        and only the plan is recorded.
        """

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
        """``{"now", "used", "reserved", "foreign", "plan", "blocked_for"}`` for ``key``.

        ``used`` counts log entries inside ``(now - window, now]``, ``foreign``
        the foreign ones among them; ``reserved`` counts entries after ``now``
        (slots promised to sleeping callers); ``plan`` is the recorded plan or
        ``None``.
        """

    @abstractmethod
    def reset(self, key: str) -> None:
        """Forget the log, the plan and any penalty of ``key``."""


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
      limit: the most requests allowed in any ``window``-second interval, and
        the limit used until the server has announced its plan. Pass less
        than the server's limit (say 55 of 60) to leave headroom for network
        jitter and for requests made outside this limiter.
      window: length of the interval in seconds.
      max_wait: longest this process will sleep for a slot inside
        :meth:`acquire`; beyond it ``RateLimited`` is raised instead, so a
        Celery worker can retry the task later instead of idling.
      share: fraction (0 < share <= 1) of the plan announced by the server
        (``X-RateLimit-Limit``, see :meth:`observe`) the fleet may use.
      burst: once the plan is known, the fraction (0 < burst <= 1) of the
        effective limit that may go out back to back; the rest is spread over
        the window (see the module docstring). 1 turns pacing off.
      plan_ttl: seconds an announced plan is remembered after the last answer
        that announced it.
      slack: seconds of slot-to-server delay tolerated between two of our
        requests when counting foreign traffic (see the module docstring).
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
        share: float = 0.8,
        burst: float = 0.125,
        plan_ttl: float = 3600.0,
        slack: float = 0.05,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        if not window > 0:
            raise ValueError(f"window must be positive, not {window!r}")
        if not max_wait >= 0:
            raise ValueError(f"max_wait must be zero or positive, not {max_wait!r}")
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ValueError(f"share must be a fraction in (0, 1], not {share!r}")
        if isinstance(burst, bool) or not isinstance(burst, (int, float)) or not 0 < burst <= 1:
            raise ValueError(f"burst must be a fraction in (0, 1], not {burst!r}")
        if not plan_ttl > 0:
            raise ValueError(f"plan_ttl must be positive, not {plan_ttl!r}")
        if not 0 <= slack < window:
            raise ValueError(f"slack must be zero or positive and less than the window, not {slack!r}")
        if not key:
            raise ValueError("key must not be empty")
        self.backend = backend
        self.key = key
        self.limit = limit
        self.window = float(window)
        self.max_wait = float(max_wait)
        self.share = float(share)
        self.share_ppm = share_millionths(self.share)
        self.burst = float(burst)
        self.burst_ppm = share_millionths(self.burst)
        self.plan_ttl = float(plan_ttl)
        self.slack = float(slack)
        self.sleep = sleep
        self.clock = clock
        # The slot of this thread's latest request: observe() compares the
        # server's count with the log as of that slot (the client calls
        # acquire, sends, then observe, all in one thread).
        self._local = threading.local()

    def __repr__(self) -> str:
        return (
            f"<SharedRateLimiter {self.key} {self.limit}/{self.window:g}s share={self.share:g} "
            f"max_wait={self.max_wait:g}s>"
        )

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
        self._local.slot = None
        decision = self.backend.acquire(
            self.key,
            limit=self.limit,
            window=self.window,
            max_wait=self.max_wait,
            now=self.clock(),
            share_ppm=self.share_ppm,
            burst_ppm=self.burst_ppm,
        )
        if not decision.granted:
            if decision.blocked > 0 and decision.blocked >= decision.wait:
                message = f"DatoCMS answered 429 recently; the whole fleet waits {decision.wait:.3f}s more"
            else:
                limit = decision.limit if decision.limit is not None else self.limit
                message = (
                    f"shared DatoCMS budget of {limit} requests per {self.window:g}s is used up; "
                    f"next free slot in {decision.wait:.3f}s"
                )
            _raise_rate_limited(message, _round_up(decision.wait))
        self._local.slot = decision.at
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

    def observe(self, limit: Any, remaining: Any) -> int:
        """Learn from an answer's ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``.

        Call it after every answer (429s included), in the thread that made the
        request. ``limit`` becomes the key's plan (the effective limit follows
        it, see the module docstring); with ``remaining`` too, requests the
        server counted beyond the log's own are recorded as foreign traffic
        for one window. Missing or unusable values (``None``, negative, not a
        whole number) are ignored. Never raises: like :meth:`penalize` in the
        client, the limiter is advisory once the request has been answered, so
        a backend failure is logged and ``0`` returned.

        Returns the number of foreign entries added.
        """
        plan = _count(limit, 1)
        if plan is None:
            return 0  # remaining alone says nothing: its window size is unknown
        left = _count(remaining, 0)
        if left is not None and left > plan:
            left = None
        try:
            return self.backend.observe(
                self.key,
                plan=plan,
                remaining=left,
                window=self.window,
                since=getattr(self._local, "slot", None),
                slack=self.slack,
                plan_ttl=self.plan_ttl,
                max_foreign=min(MAX_FOREIGN_PER_ANSWER, self.limit),
                now=self.clock(),
            )
        except Exception:
            logger.warning("rate limiter observe(%s, %s) failed", plan, left, exc_info=True)
            return 0

    def penalize(self, seconds: float) -> None:
        """Block every process using this key for ``seconds`` (a 429's reset).

        An existing longer block is kept; zero, negative or missing values do nothing.
        """
        if seconds is None or not seconds > 0:
            return
        self.backend.penalize(self.key, float(seconds), now=self.clock())

    def snapshot(self) -> dict[str, Any]:
        """The budget as the backend sees it now, for status pages and tests.

        Keys: ``key``, ``limit`` (configured), ``plan`` (announced by the
        server, or ``None``), ``share``, ``effective_limit``, ``window``,
        ``used`` (entries in the current window, foreign ones included),
        ``foreign``, ``reserved`` (slots promised to sleeping callers),
        ``remaining`` (of the effective limit), ``blocked_until`` (backend Unix
        time or ``None``), ``blocked_for`` (seconds) and ``now`` (backend Unix time).
        """
        state = self.backend.snapshot(self.key, window=self.window, now=self.clock())
        blocked_for = state["blocked_for"]
        plan = state.get("plan")
        effective = effective_limit(self.limit, plan, self.share_ppm)
        return {
            "key": self.key,
            "limit": self.limit,
            "plan": plan,
            "share": self.share,
            "effective_limit": effective,
            "window": self.window,
            "used": state["used"],
            "foreign": state.get("foreign", 0),
            "reserved": state["reserved"],
            "remaining": max(0, effective - state["used"] - state["reserved"]),
            "blocked_until": state["now"] + blocked_for if blocked_for > 0 else None,
            "blocked_for": blocked_for,
            "now": state["now"],
        }

    def reset(self) -> None:
        """Forget this key's log, plan and penalty (tests, operator tools)."""
        self.backend.reset(self.key)
