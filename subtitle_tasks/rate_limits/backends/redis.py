"""Redis backend: one budget per key shared by every process that can reach Redis.

Each call is one Lua script, so the read-decide-write of an acquire is atomic
across the fleet. Time comes from the server's ``TIME`` so workers whose clocks
disagree still share one timeline.

Keys, for a budget named ``K`` (wrapped in a ``{...}`` hash tag unless ``K``
already has one, so all three land in one Redis Cluster slot):

``{K}:log``
    sorted set; member = a random id per request (``foreign:<id>:<n>`` for
    foreign entries), score = the request's slot time in server microseconds.
    Entries older than two windows are dropped; the key expires ``window``
    after its latest entry.
``{K}:block``
    string set by :meth:`RedisBackend.penalize`, with a ``PX`` expiry equal to
    the penalty.
``{K}:plan``
    the last ``X-RateLimit-Limit`` seen, set by :meth:`RedisBackend.observe`
    with a ``PX`` expiry of ``plan_ttl``.

Connection failures surface as ``redis.exceptions.ConnectionError`` (timeouts
are converted to it) so callers have a single "Redis is away, retry later" case.
How long a failure takes to surface is the client's business: its
``socket_connect_timeout``, ``socket_timeout`` and ``retry`` settings.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from ..base import HISTORY_WINDOWS, SHARE_SCALE, Acquisition, RateLimiterBackend

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

# Keeps the log's key alive until the latest entry leaves the window.
_EXPIRE_LOG = """
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local horizon = tonumber(last[2]) + window - now
redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(horizon / 1000) + 1))
"""

# KEYS: log, block, plan.  ARGV: limit, window_us, max_wait_us, member, share_ppm, burst_ppm.
# Returns {granted, wait_us, used, now_us, blocked_us, effective_limit}.
# limit and burst mirror base.effective_limit and base.burst_size; entries
# older than the window stay (observe reads them) but never decide the slot.
ACQUIRE_SCRIPT = (_PREAMBLE + """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local plan = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
local burst = limit
if plan >= 1 then
  local allowed = math.floor(plan * tonumber(ARGV[5]) / %(scale)d)
  if allowed < 1 then allowed = 1 end
  if allowed < limit then limit = allowed end
  burst = math.ceil(limit * tonumber(ARGV[6]) / %(scale)d)
  if burst < 1 then burst = 1 end
  if burst > limit then burst = limit end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%%d', now - %(history)d * window))
local n = redis.call('ZCARD', KEYS[1])
local used = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%%d', now - window), '+inf')
local blocked = 0
local pttl = redis.call('PTTL', KEYS[2])
if pttl > 0 then blocked = pttl * 1000 end
local at = now + blocked
if n >= limit then
  local nth = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
  local free_at = tonumber(nth[2]) + window
  if free_at > at then at = free_at end
end
if burst < limit and n >= burst then
  local nth = redis.call('ZRANGE', KEYS[1], n - burst, n - burst, 'WITHSCORES')
  local paced_at = tonumber(nth[2]) + math.floor(window * burst / limit)
  if paced_at > at then at = paced_at end
end
local wait = at - now
if wait > max_wait then
  return {0, wait, used, now, blocked, limit}
end
redis.call('ZADD', KEYS[1], string.format('%%d', at), ARGV[4])
""" % {"scale": SHARE_SCALE, "history": HISTORY_WINDOWS}  # noqa: UP031  Lua: str.format would double its {}
    + _EXPIRE_LOG + """
return {1, wait, used + 1, now, blocked, limit}
""")

# KEYS: log, plan.  ARGV: plan, remaining (-1: none), window_us, since_us (-1: none),
# slack_us, plan_ttl_ms, max_foreign, member prefix.  Returns the foreign entries added.
OBSERVE_SCRIPT = (_PREAMBLE + """
local plan = tonumber(ARGV[1])
local remaining = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local since = tonumber(ARGV[4])
redis.call('SET', KEYS[2], string.format('%%d', plan), 'PX', ARGV[6])
if remaining < 0 then return 0 end
local counted = plan - remaining
local start = now
if since >= 0 and since < now then start = since end
start = start - window - tonumber(ARGV[5])
if counted <= 0 or start < now - %(history)d * window then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%%d', now - %(history)d * window))
local held = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%%d', start), string.format('%%d', now))
local foreign = counted - held
if foreign > tonumber(ARGV[7]) then foreign = tonumber(ARGV[7]) end
if foreign <= 0 then return 0 end
local args = {}
local score = string.format('%%d', now)
for i = 1, foreign do
  args[2 * i - 1] = score
  args[2 * i] = ARGV[8] .. i
end
redis.call('ZADD', KEYS[1], unpack(args))
""" % {"history": HISTORY_WINDOWS}  # noqa: UP031  Lua: str.format would double its {}
    + _EXPIRE_LOG + """
return foreign
""")

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

# KEYS: log, block, plan.  ARGV: window_us.
# Returns {now_us, used, reserved, blocked_ms, foreign, plan (0: none)}.
# Read-only: expired entries are counted out, not removed.
SNAPSHOT_SCRIPT = _PREAMBLE + """
local window = tonumber(ARGV[1])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. string.format('%d', now - window), string.format('%d', now))
local foreign = 0
for _, member in ipairs(members) do
  if string.sub(member, 1, 8) == 'foreign:' then foreign = foreign + 1 end
end
local reserved = redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%d', now), '+inf')
local pttl = redis.call('PTTL', KEYS[2])
if pttl < 0 then pttl = 0 end
local plan = tonumber(redis.call('GET', KEYS[3]) or '0') or 0
return {now, #members, reserved, pttl, foreign, plan}
"""


def _hash_tagged(key: str) -> str:
    if "{" in key and "}" in key[key.index("{") + 1:]:
        return key
    return "{" + key + "}"


def _micros(seconds: float) -> int:
    return round(seconds * _MICROS)


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
        self._observe = client.register_script(OBSERVE_SCRIPT)

    @staticmethod
    def keys_for(key: str) -> tuple[str, str]:
        """The Redis keys (log, block) backing the budget ``key``."""
        tagged = _hash_tagged(key)
        return f"{tagged}:log", f"{tagged}:block"

    @staticmethod
    def plan_key_for(key: str) -> str:
        """The Redis key holding the plan the server announced for ``key``."""
        return f"{_hash_tagged(key)}:plan"

    def _call(self, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except redis.exceptions.TimeoutError as exc:
            raise redis.exceptions.ConnectionError(f"rate-limit backend timed out: {exc}") from exc

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
        log_key, block_key = self.keys_for(key)
        member = uuid.uuid4().hex
        granted, wait, used, server_now, blocked, effective = self._call(
            lambda: self._acquire(
                keys=[log_key, block_key, self.plan_key_for(key)],
                args=[int(limit), _micros(window), _micros(max_wait), member, int(share_ppm), int(burst_ppm)],
            )
        )
        return Acquisition(
            granted=bool(granted),
            wait=int(wait) / _MICROS,
            used=int(used),
            blocked=int(blocked) / _MICROS,
            now=int(server_now) / _MICROS,
            limit=int(effective),
        )

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
        log_key, _ = self.keys_for(key)
        prefix = f"foreign:{uuid.uuid4().hex}:"
        added = self._call(
            lambda: self._observe(
                keys=[log_key, self.plan_key_for(key)],
                args=[
                    int(plan),
                    -1 if remaining is None else int(remaining),
                    _micros(window),
                    -1 if since is None else _micros(since),
                    _micros(slack),
                    max(1, round(plan_ttl * 1000)),
                    int(max_foreign),
                    prefix,
                ],
            )
        )
        return int(added)

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
        server_now, used, reserved, blocked_ms, foreign, plan = self._call(
            lambda: self._snapshot(keys=[log_key, block_key, self.plan_key_for(key)], args=[_micros(window)])
        )
        return {
            "now": int(server_now) / _MICROS,
            "used": int(used),
            "reserved": int(reserved),
            "foreign": int(foreign),
            "plan": int(plan) or None,
            "blocked_for": int(blocked_ms) / 1000,
        }

    def reset(self, key: str) -> None:
        self._call(lambda: self.client.delete(*self.keys_for(key), self.plan_key_for(key)))
