"""A DatoCMS request budget shared by the whole worker fleet.

    from subtitle_tasks.rate_limits import SharedRateLimiter, key_for_token
    from subtitle_tasks.rate_limits.backends import RedisBackend

    limiter = SharedRateLimiter(RedisBackend(client), key_for_token(token), limit=55, window=3.0, share=0.8)
    limiter.acquire()                   # before each request; may sleep up to max_wait or raise RateLimited
    limiter.observe(limit, remaining)   # after each answer: X-RateLimit-Limit and -Remaining
    limiter.penalize(reset)             # after a 429, with X-RateLimit-Reset

See :mod:`subtitle_tasks.rate_limits.base` for the algorithm.
"""

from __future__ import annotations

from .backends import RedisBackend, StubBackend
from .base import (
    DEFAULT_PREFIX,
    Acquisition,
    RateLimiterBackend,
    SharedRateLimiter,
    key_for_token,
)

__all__ = [
    "DEFAULT_PREFIX",
    "Acquisition",
    "RateLimiterBackend",
    "RedisBackend",
    "SharedRateLimiter",
    "StubBackend",
    "key_for_token",
]

