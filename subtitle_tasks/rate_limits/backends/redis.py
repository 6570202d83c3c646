"""Redis backend: one budget per key shared by every process that can reach Redis.

Each call is one Lua script, so the read-decide-write of an acquire is atomic
across the fleet. Time comes from the server's ``TIME`` so workers whose clocks
disagree still share one timeline.

Keys, for a budget named ``K`` (wrapped in a ``{...}`` hash tag unless ``K``
already has one, so both land in one Redis Cluster slot):

``{K}:log``
    sorted set; member = a random id per request, score = the request's slot
    time in server microseconds. Expires ``window`` after its latest slot.
``{K}:block``
    string set by :meth:`RedisBackend.penalize`, with a ``PX`` expiry equal to
    the penalty.

Connection failures surface as ``redis.exceptions.ConnectionError`` (timeouts
are converted to it) so callers have a single "Redis is away, retry later" case.
How long a failure takes to surface is the client's business: its
``socket_connect_timeout``, ``socket_timeout`` and ``retry`` settings.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, TypeVar

import redis

from ..base import Acquisition, RateLimiterBackend

_T = TypeVar("_T")

_MICROS = 1_000_000

# Scores and arithmetic are integer microseconds of server time (~1.7e15: exact
# in a double). Numbers are formatted with %d before reaching Redis because
# Lua's default number-to-string conversion keeps only 14 significant digits.
_PREAMBLE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
"""

# KEYS: log, block.  ARGV: limit, window_us, max_wait_us, member.
# Returns {granted, wait_us, used, now_us, blocked_us}.
ACQUIRE_SCRIPT = _PREAMBLE + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
local used = redis.call('ZCARD', KEYS[1])
local blocked = 0
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 then blocked = pttl * 1000 end
local at = now + blocked
if used >= limit then
  local nth = redis.call('ZRANGE', KEYS[1], used - limit, used - limit, 'WITHSCORES')
  local free_at = tonumber(nth[2]) + window
  if free_at > at then at = free_at end
end
local wait = at - now
if wait > max_wait then
  return {0, wait, used, now, blocked}
end
redis.call('ZADD', KEYS[1], string.format('%d', at), ARGV[4])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local horizon = tonumber(last[2]) + window - now
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(horizon / 1000) + 1))
return {1, wait, used + 1, now, blocked}
"""

# KEYS: block.  ARGV: penalty_ms.  Returns the block's remaining ms afterwards.
PENALIZE_SCRIPT = """
local ms = tonumber(ARGV[1])
local current = redis.call('PTTL', KEYS[1])
if current < ms then
  redis.call('SET', KEYS[1], '1', 'PX', string.format('%d', ms))
  return ms
end
return current
"""

# KEYS: log, block.  ARGV: window_us.  Returns {now_us, used, reserved, blocked_ms}.
# Read-only: expired entries are counted out, not removed.
SNAPSHOT_SCRIPT = _PREAMBLE + """
local window = tonumber(ARGV[1])
local used = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now - window), string.format('%d', now))
local reserved = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')
local pttl = redis.call('PTTL', KEYS[2])
if pttl < 0 then pttl = 0 end
return {now, used, reserved, pttl}
"""


def _hash_tagged(key: str) -> str:
    if "{" in key and "}" in key[key.index("{") + 1:]:
        return key
    return "{" + key + "}"


def _micros(seconds: float) -> int:
    return int(round(seconds * _MICROS))


class RedisBackend(RateLimiterBackend):
    """Budgets kept in Redis through ``client`` (a ``redis.Redis``).

    ``decode_responses`` may be either; the scripts return integers only.
    """

    def __init__(self, client: redis.Redis):
        self.client = client
        # register_script keeps the SHA and falls back to loading the source
        # once per server if it was flushed or the server restarted.
        self._acquire = client.register_script(ACQUIRE_SCRIPT)
        self._penalize = client.register_script(PENALIZE_SCRIPT)
        self._snapshot = client.register_script(SNAPSHOT_SCRIPT)

    @staticmethod
    def keys_for(key: str) -> tuple[str, str]:
        """The Redis keys (log, block) backing the budget ``key``."""
        tagged = _hash_tagged(key)
        return f"{tagged}:log", f"{tagged}:block"

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except redis.exceptions.TimeoutError as exc:
            raise redis.exceptions.ConnectionError(f"rate-limit backend timed out: {exc}") from exc

    def acquire(self, key: str, *, limit: int, window: float, max_wait: float, now: float) -> Acquisition:
        log_key, block_key = self.keys_for(key)
        member = uuid.uuid4().hex
        granted, wait, used, server_now, blocked = self._call(
            lambda: self._acquire(
                keys=[log_key, block_key],
                args=[int(limit), _micros(window), _micros(max_wait), member],
            )
        )
        return Acquisition(
            granted=bool(granted),
            wait=int(wait) / _MICROS,
            used=int(used),
            blocked=int(blocked) / _MICROS,
            now=int(server_now) / _MICROS,
        )

    def penalize(self, key: str, seconds: float, *, now: float) -> float:
        _, block_key = self.keys_for(key)
        ms = max(1, int(-(-seconds * 1000 // 1)))  # ceil to whole milliseconds
        result = self._call(lambda: self._penalize(keys=[block_key], args=[ms]))
        return int(result) / 1000

    def blocked_for(self, key: str, *, now: float) -> float:
        _, block_key = self.keys_for(key)
        pttl = self._call(lambda: self.client.pttl(block_key))
        return max(int(pttl), 0) / 1000

    def snapshot(self, key: str, *, window: float, now: float) -> dict[str, Any]:
        log_key, block_key = self.keys_for(key)
        server_now, used, reserved, blocked_ms = self._call(
            lambda: self._snapshot(keys=[log_key, block_key], args=[_micros(window)])
        )
        return {
            "now": int(server_now) / _MICROS,
            "used": int(used),
            "reserved": int(reserved),
            "blocked_for": int(blocked_ms) / 1000,
        }

    def reset(self, key: str) -> None:
        self._call(lambda: self.client.delete(*self.keys_for(key)))
