"""The Redis store: hashes per request and generation, sorted sets of due steps per site.

Keys (``P`` is ``SUBTITLE_TASKS_KEY_PREFIX``; ``[:{site}]`` is absent for the default
site, ``:alias`` for a named one)::

    P:req:{request_id}    hash   one caller's request
    P:gen:{gen_id}        hash   one DatoCMS generation, shared by its subscribers
    P:active              hash   "env|upload|language" -> generation in flight (dedup)
    P:submit[:{site}]     zset   generation still in phase submit -> when its next step is due
    P:due[:{site}]        zset   generation being polled -> when its next step is due
    P:sites               set    named sites with entries in their schedule sets
    P:finishing           zset   request -> when its callbacks started being sent
    P:recent              list   the newest 10,000 settled requests (``list``)
    P:metrics             hash   fleet-wide counters and histograms (metrics.py)
    P:timing:{phase}[:{site}] string learned phase durations, a decayed histogram (schedule.py)
    P:timing:points[:{site}]  list   the last generations' (shown, ready) times (unseen.py)
    P:outcomes:{minute}   hash   requests ended that minute, by outcome (two hours)
    P:lock:{name}         string who is working on a generation (or notifying a request)
    P:body_type[:{site}]  string the request body type the API accepted last (per site)
    P:dispatched[:{site}] string steps handed out in the site's current pacing window
    P:claim_turn          string which site claims first (claim_due.lua's rotation)

Due times are the server's clock. ``P:due`` held every generation before schedules
were kept per site; it is the default site's poll set now, so entries written by
an older version are still handed out and move to their own set at their next step.

Every multi-key change is one Lua script, so a worker killed at any instant leaves
either the state before or the state after, never a mix. Times come from the Redis
server's clock.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from typing import Any

import redis

from .base import (
    BrokerWrites,
    Created,
    Generation,
    RequestRecord,
    RequestRow,
    dedup_field,
    encode_generation_fields,
    lock_millis,
    sizes_by_site,
    split_field,
    writes_groups,
)
from .base import encode_value as _encode

# Functions some scripts share, loaded in front of them (Lua scripts cannot include).
_PREAMBLES = {"finish": "_generation_end.lua", "cancel": "_generation_end.lua"}
_SCRIPTS = ("create", "claim_due", "load", "advance", "finish", "cancel", "settle", "claim_finishing", "unlock",
            "extend_lock")

_REPAIR = """
-- Re-add to its schedule set every generation in flight that is in none (a lost
-- write, a manual edit). ARGV: prefix, (site hint, gid)...  The hint is the site named
-- in the generation's P:active field; a wrong one only costs a hash read.
-- Returns how many were repaired.
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function sets_of(site)
  local suffix = site == '' and '' or ':' .. site
  return prefix .. ':submit' .. suffix, prefix .. ':due' .. suffix
end
local function scheduled_in(site, gid)
  local submits, polls = sets_of(site)
  return redis.call('ZSCORE', polls, gid) or redis.call('ZSCORE', submits, gid)
end
local repaired = 0
for i = 2, #ARGV - 1, 2 do
  local hint, gid = ARGV[i], ARGV[i + 1]
  -- Schedule checks first (polls first: most generations in flight are polling; P:due
  -- also holds entries an older version filed there), so the hash is read only for
  -- the rare generation that has no entry.
  if not scheduled_in(hint, gid) and not (hint ~= '' and redis.call('ZSCORE', prefix .. ':due', gid)) then
    local gen = redis.call('HMGET', prefix .. ':gen:' .. gid, 'phase', 'site')
    local phase, site = gen[1], gen[2] or ''
    if phase and phase ~= 'done' and (site == hint or not scheduled_in(site, gid)) then
      local submits, polls = sets_of(site)
      redis.call('ZADD', phase == 'submit' and submits or polls, now, gid)
      if site ~= '' then redis.call('SADD', prefix .. ':sites', site) end
      repaired = repaired + 1
    end
  end
end
return repaired
"""

_COUNT_OUTCOMES = """
-- ARGV: prefix, (outcome, n)...  Per-minute buckets on the server's clock, kept 2 hours.
local t = redis.call('TIME')
local key = ARGV[1] .. ':outcomes:' .. math.floor(tonumber(t[1]) / 60)
for i = 2, #ARGV, 2 do redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1]) end
redis.call('EXPIRE', key, 7200)
return 1
"""

_RECENT_OUTCOMES = """
-- ARGV: prefix, minutes.  Returns {outcome, n, ...} summed over the last `minutes`.
local t = redis.call('TIME')
local minute = math.floor(tonumber(t[1]) / 60)
local sums, order = {}, {}
for m = minute - tonumber(ARGV[2]) + 1, minute do
  local flat = redis.call('HGETALL', ARGV[1] .. ':outcomes:' .. m)
  for i = 1, #flat, 2 do
    if not sums[flat[i]] then sums[flat[i]] = 0; order[#order + 1] = flat[i] end
    sums[flat[i]] = sums[flat[i]] + tonumber(flat[i + 1])
  end
end
local out = {}
for _, k in ipairs(order) do out[#out + 1] = k; out[#out + 1] = sums[k] end
return out
"""

_SCHEDULE_STATS = """
-- ARGV: prefix, overdue_after.  Returns {now, then per site and kind: site, kind,
-- scheduled, due, overdue, oldest score ('' when empty)}. Times are strings: a Lua
-- number returned to Redis loses its fraction.
local prefix = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local late = now - tonumber(ARGV[2])
local out = {string.format('%.6f', now)}
local sites = redis.call('SMEMBERS', prefix .. ':sites')
table.insert(sites, 1, '')
for _, site in ipairs(sites) do
  local suffix = ''
  if site ~= '' then suffix = ':' .. site end
  for _, kind in ipairs({'submit', 'due'}) do
    local key = prefix .. ':' .. kind .. suffix
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    out[#out + 1] = site
    out[#out + 1] = kind == 'due' and 'poll' or kind
    out[#out + 1] = redis.call('ZCARD', key)
    out[#out + 1] = redis.call('ZCOUNT', key, '-inf', string.format('%.6f', now))
    out[#out + 1] = redis.call('ZCOUNT', key, '-inf', string.format('%.6f', late))
    out[#out + 1] = oldest[2] or ''
  end
end
return out
"""

_REQUEST_COUNTER = """
-- Bookkeeping on a request that is still finishing (never on a settled or vanished one,
-- which a bare HSET would recreate as a partial hash). ARGV: key, field, 'incr' | value
if redis.call('HGET', ARGV[1], 'state') ~= 'finishing' then return 0 end
if ARGV[3] == 'incr' then return redis.call('HINCRBY', ARGV[1], ARGV[2], 1) end
redis.call('HSET', ARGV[1], ARGV[2], ARGV[3])
return 1
"""


def database_index(client: redis.Redis) -> int:
    """Which database of its server a client talks to."""
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def schedule_keys(prefix: str, site: str = "") -> tuple[str, str]:
    """A site's (submit set, poll set) keys; the default site's poll set is the old shared P:due."""
    suffix = f":{site}" if site else ""
    return f"{prefix}:submit{suffix}", f"{prefix}:due{suffix}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _pairs(flat: Sequence[object]) -> dict[str, str]:
    return {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}


class RedisStore:
    def __init__(self, client: redis.Redis, prefix: str = "subtitle_tasks", retention: float = 7 * 86400.0):
        self.client = client
        self.prefix = prefix
        self.retention = retention
        self._db = database_index(client)
        folder = resources.files(__package__) / "scripts"
        def source(name: str) -> str:
            preamble = (folder / _PREAMBLES[name]).read_text() if name in _PREAMBLES else ""
            return preamble + (folder / f"{name}.lua").read_text()

        self._scripts = {name: client.register_script(source(name)) for name in _SCRIPTS}
        self._repair = client.register_script(_REPAIR)
        self._request_counter = client.register_script(_REQUEST_COUNTER)
        self._count_outcomes = client.register_script(_COUNT_OUTCOMES)
        self._recent_outcomes = client.register_script(_RECENT_OUTCOMES)
        self._schedule_stats = client.register_script(_SCHEDULE_STATS)

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](args=[self.prefix, *args])

    # -- the edge ---------------------------------------------------------------------
    def create_request(self, *, request_id: str, generation_id: str, upload_id: str, language_code: str,
                       name: str | None, environment: str | None, on_ready: list[dict[str, Any]],
                       on_error: list[dict[str, Any]], ttl: float, fingerprint: str = "", max_joins: int = 0,
                       site: str = "", duration_band: int | None = None) -> Created:
        """One atomic create (create.lua); ``max_joins`` 0 means no cap on subscribers."""
        dedup = dedup_field(site, environment, upload_id, language_code)
        callback_fields: list[str] = []
        for field, callbacks in (("on_ready", on_ready), ("on_error", on_error)):
            if callbacks:
                for pair in split_field(field, _encode(callbacks)).items():
                    callback_fields += pair
        gid, joined, status = self._run(
            "create", request_id, generation_id, upload_id, language_code, name or "", environment or "", dedup,
            repr(float(ttl)), fingerprint, max_joins or 2**31, site or "",
            "" if duration_band is None else str(int(duration_band)), *callback_fields,
        )
        status = _text(status)
        if status == "full":
            return Created(_text(gid), False, False, full=True)
        return Created(_text(gid), bool(int(joined)), status in ("existed", "conflict"), conflict=status == "conflict")

    def load_request(self, request_id: str) -> RequestRecord | None:
        raw = self.client.hgetall(f"{self.prefix}:req:{request_id}")
        if not raw:
            return None
        return RequestRecord.from_hash(request_id, {_text(k): _text(v) for k, v in raw.items()})

    def cancel(self, request_id: str, error: dict[str, Any]) -> str:
        return _text(self._run("cancel", request_id, _encode(error), self.retention))

    # -- scheduling -------------------------------------------------------------------
    def claim_due(self, lease: float, limit: int, pace: int = 0, window: float = 0.0,
                  holder: str = "") -> list[tuple[str, str]]:
        """Due steps, leased, shared fairly among sites and between submits and polls.

        ``pace`` > 0 caps each site at that many per ``window`` seconds, fleet-wide.
        ``holder``: the claiming worker (step watch), which holds the claims until
        :meth:`step_published` says their tasks are out.
        """
        flat = self._run("claim_due", lease, limit, pace, window, holder)
        return [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]

    def release(self, generation_id: str) -> None:
        """Make a claimed generation due again now (its task could not be sent)."""
        self.advance(generation_id, 0)

    # Key: P:steps:published, a counter of step tasks published fleet-wide (never
    # expires; 8 bytes): with the step queue's depth it tells how fast the fleet drains it.
    def count_published(self, steps: int) -> None:
        if steps > 0:
            self.client.incrby(f"{self.prefix}:steps:published", steps)

    def published_count(self) -> int:
        return int(self.client.get(f"{self.prefix}:steps:published") or 0)

    def repair_orphans(self, batch: int = 500) -> int:
        repaired = 0
        for chunk in self._scan_active(batch):
            repaired += int(self._repair(args=[self.prefix, *chunk]))
        return repaired

    def _scan_active(self, batch: int) -> Iterator[list[str]]:
        """Generations in flight as flat (site hint, generation id) pairs, a batch at a time."""
        cursor = 0
        while True:
            cursor, entries = self.client.hscan(f"{self.prefix}:active", cursor, count=batch)
            assert isinstance(entries, dict)  # HSCAN without NOVALUES: field -> value
            if entries:
                flat: list[str] = []
                for field, gid in entries.items():
                    site, sep, _ = _text(field).partition("#")  # dedup_field: [site#]env|upload|language
                    flat += [site if sep else "", _text(gid)]
                yield flat
            if cursor == 0:
                return

    # -- generations ------------------------------------------------------------------
    def load_generation(self, generation_id: str) -> Generation | None:
        flat = self._run("load", generation_id)
        now, raw = float(_text(flat[0])), _pairs(flat[1:])
        if not raw:
            return None
        return Generation.from_hash(generation_id, now, raw)

    def advance(self, generation_id: str, delay: float, fence: tuple[str, str] | None = None, **fields: Any) -> bool:
        """Record a step's outcome; with ``fence`` (lock name, token) only while that token holds the lock."""
        args: list[str] = list(fence or ("", ""))
        for name, value in encode_generation_fields(fields).items():
            args += [name, value]
        return bool(int(self._run("advance", generation_id, max(0.0, delay), *args)))

    def finish(self, generation_id: str, outcome: str, result: dict[str, Any]) -> list[str]:
        return [_text(r) for r in self._run("finish", generation_id, outcome, _encode(result), self.retention)]

    def settle(self, request_id: str, final_state: str,
               broker_writes: BrokerWrites | Sequence[BrokerWrites] | None = None,
               undelivered: Sequence[dict[str, Any]] = (), give_up: bool = False) -> bool:
        """finishing -> final_state; ``broker_writes`` (callback messages) land in the same transaction.

        With ``give_up`` a callback whose writes fail the script's checks is left out and
        recorded as undelivered instead of failing the call.
        """
        args: list[Any] = [request_id, final_state, self.retention,
                           _encode(list(undelivered)) if undelivered else "", int(give_up)]
        groups = [g for g in writes_groups(broker_writes) if g.commands]
        if groups:
            args += [self._db, groups[0].db]
            for group in groups:
                args += [group.index, len(group.commands)]
                for command in group.commands:
                    args += command
        return bool(int(self._run("settle", *args)))

    def notify_failed(self, request_id: str) -> int:
        """Count a failed hand-over of a finishing request's callbacks; returns the count."""
        return int(self._request_counter(args=[f"{self.prefix}:req:{request_id}", "nfail", "incr"]))

    def mark_sent(self, request_id: str, count: int) -> bool:
        """Record that a finishing request's first ``count`` callbacks were published."""
        return bool(int(self._request_counter(args=[f"{self.prefix}:req:{request_id}", "sent", count])))

    def claim_finishing(self, stale: float, limit: int) -> list[str]:
        return [_text(r) for r in self._run("claim_finishing", stale, limit)]

    # -- coordination -----------------------------------------------------------------
    def lock(self, name: str, ttl: float, owner: str = "") -> str | None:
        """Take ``P:lock:{name}`` for ``ttl`` seconds; the token proves ownership.

        With ``owner`` (a worker id) the token is ``owner/...``, so the step watch can
        break the locks of a worker that died (step_release.lua)."""
        token = f"{owner}/{uuid.uuid4().hex}" if owner else uuid.uuid4().hex
        if self.client.set(f"{self.prefix}:lock:{name}", token, nx=True, px=lock_millis(ttl)):
            return token
        return None

    def unlock(self, name: str, token: str) -> None:
        self._scripts["unlock"](keys=[f"{self.prefix}:lock:{name}"], args=[token])

    def extend_lock(self, name: str, token: str, ttl: float) -> bool:
        """Hold ``P:lock:{name}`` for ``ttl`` more seconds, if ``token`` still holds it."""
        return bool(int(self._scripts["extend_lock"](keys=[f"{self.prefix}:lock:{name}"],
                                                     args=[token, lock_millis(ttl)])))

    def _body_type_key(self, site: str) -> str:
        return f"{self.prefix}:body_type:{site}" if site else f"{self.prefix}:body_type"

    def preferred_body_type(self, site: str = "") -> str | None:
        value = self.client.get(self._body_type_key(site))
        return _text(value) if value else None

    def remember_body_type(self, body_type: str, site: str = "") -> None:
        self.client.set(self._body_type_key(site), body_type)

    def schedule_keys(self, site: str = "") -> tuple[str, str]:
        """A site's (submit set, poll set) keys."""
        return schedule_keys(self.prefix, site)

    def scheduled_by_site(self) -> dict[str, dict[str, int]]:
        """Sites with scheduled entries -> {"submit": n, "poll": n} (the default site is "")."""
        return sizes_by_site(self.schedule_stats(0.0)["schedules"])

    def counts(self) -> dict[str, int]:
        pipe = self.client.pipeline(transaction=False)
        pipe.hlen(f"{self.prefix}:active")
        pipe.zcard(f"{self.prefix}:finishing")
        active, finishing = pipe.execute()
        scheduled = sum(n["submit"] + n["poll"] for n in self.scheduled_by_site().values())
        return {"scheduled": scheduled, "in_flight": active, "finishing": finishing}

    # -- metrics (subtitle_tasks/metrics.py) -------------------------------------------
    # Keys: P:metrics hash, counter/histogram field -> value (fleet-wide, no TTL);
    # P:outcomes:{minute} hash, outcome -> requests ended that minute (kept two hours).
    def metrics_add(self, increments: Mapping[str, float]) -> None:
        """Add to fleet-wide counters in one round trip (fields as metrics.py names them)."""
        pipe = self.client.pipeline(transaction=False)
        for field, amount in increments.items():
            pipe.hincrbyfloat(f"{self.prefix}:metrics", field, amount)
        pipe.execute()

    def metrics_values(self) -> dict[str, float]:
        raw = self.client.hgetall(f"{self.prefix}:metrics")
        return {_text(k): float(_text(v)) for k, v in raw.items()}

    def count_outcomes(self, outcomes: Mapping[str, int]) -> None:
        """Requests that ended this minute, by outcome (server clock)."""
        args: list[Any] = [self.prefix]
        for outcome, n in outcomes.items():
            args += [outcome, n]
        self._count_outcomes(args=args)

    def recent_outcomes(self, minutes: int = 60) -> dict[str, int]:
        flat = self._recent_outcomes(args=[self.prefix, minutes])
        return {_text(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def schedule_stats(self, overdue_after: float) -> dict[str, Any]:
        """Per site and kind: scheduled, due now, overdue (due longer than ``overdue_after``),
        and the oldest due time; plus the server's clock. A few calls per site, no scan."""
        flat = self._schedule_stats(args=[self.prefix, overdue_after])
        now, rows = float(_text(flat[0])), []
        for i in range(1, len(flat), 6):
            oldest = _text(flat[i + 5])
            rows.append({"site": _text(flat[i]), "kind": _text(flat[i + 1]), "scheduled": int(flat[i + 2]),
                         "due": int(flat[i + 3]), "overdue": int(flat[i + 4]),
                         "oldest_due": float(oldest) if oldest else None})
        return {"now": now, "schedules": rows}

    def list_requests(self, state: str | None = None, upload_id: str | None = None,
                      limit: int = 50) -> list[RequestRow]:
        """Requests by state and upload, newest settled first, from indexes only.

        In flight: the active index (HSCAN, filtered by upload), then each generation's
        subscribers. Finishing: its sorted set. Settled: the last 10,000 (P:recent).
        """
        wanted_states = {state} if state else None
        rows: list[RequestRow] = []

        def take(ids: list[str]) -> bool:
            pipe = self.client.pipeline(transaction=False)
            for rid in ids:
                pipe.hmget(f"{self.prefix}:req:{rid}", "state", "upload", "lang", "gen", "created", "finished")
            for rid, values in zip(ids, pipe.execute(), strict=True):  # one reply per HMGET
                st, upload, lang, gen, created, finished = (_text(v) if v is not None else None for v in values)
                if st is None or (wanted_states and st not in wanted_states) or (upload_id and upload != upload_id):
                    continue
                rows.append({"request_id": rid, "state": st, "upload_id": upload, "language_code": lang,
                             "generation_id": gen, "created_at": created, "finished_at": finished})
                if len(rows) >= limit:
                    return True
            return False

        if state in (None, "waiting"):
            match = f"*|{upload_id}|*" if upload_id else None
            cursor = 0
            while True:
                cursor, entries = self.client.hscan(f"{self.prefix}:active", cursor, match=match, count=1000)
                assert isinstance(entries, dict)  # HSCAN without NOVALUES: field -> value
                gids = [_text(v) for v in entries.values()]
                if gids:
                    pipe = self.client.pipeline(transaction=False)
                    for gid in gids:
                        pipe.hget(f"{self.prefix}:gen:{gid}", "subs")
                    subs = [rid for raw in pipe.execute() if raw for rid in _text(raw).split(",") if rid]
                    if take(subs):
                        return rows
                if cursor == 0:
                    break
        if state in (None, "finishing") and take(
                [_text(r) for r in self.client.zrange(f"{self.prefix}:finishing", 0, 999)]):
            return rows
        if state in (None, "ready", "failed"):
            start = 0
            while start < 10000:
                ids = [_text(r) for r in self.client.lrange(f"{self.prefix}:recent", start, start + 499)]
                if not ids or take(ids):
                    break
                start += 500
        return rows

    # -- sweep cursor (subtitle_tasks/sweep.py) ----------------------------------------
    # Key: P:sweep[:{site}] string, a JSON object, with a TTL. Named sites get a suffix
    # like P:body_type[:{site}], so no alias (not even "default") can share the default's.
    def _sweep_key(self, site: str) -> str:
        return f"{self.prefix}:sweep:{site}" if site else f"{self.prefix}:sweep"

    def sweep_cursor(self, site: str = "") -> dict[str, Any] | None:
        import json  # local: this region is edited apart from the module's imports

        raw = self.client.get(self._sweep_key(site))
        try:
            cursor = json.loads(raw) if raw else None
        except ValueError:
            return None  # unreadable: the next sweep starts over, which is safe
        return cursor if isinstance(cursor, dict) else None

    def save_sweep_cursor(self, site: str, cursor: dict[str, Any], ttl: float) -> None:
        import json

        self.client.set(self._sweep_key(site), json.dumps(cursor, separators=(",", ":")), px=lock_millis(ttl))

    # -- learned poll timing (subtitle_tasks/schedule.py) --------------------------------
    # Key: P:timing:{phase}[:{site}] string, the phase's histogram as schedule.encode()
    # writes it (a few hundred bytes at most), kept 30 days after its last update: a site
    # idle that long starts from the cold schedule again. Script state/scripts/timing.lua,
    # registered on first use.
    _TIMING_TTL = 30 * 86400.0

    def _timing_key(self, site: str, phase: str) -> str:
        return f"{self.prefix}:timing:{phase}:{site}" if site else f"{self.prefix}:timing:{phase}"

    def timing_stats(self, site: str, phase: str) -> list[float] | None:
        from .. import schedule  # local: this region is edited apart from the module's imports

        return schedule.decode(self.client.get(self._timing_key(site, phase)))

    def record_timing(self, site: str, phase: str, seconds: float, decay: float, until: float | None = None) -> None:
        from .. import schedule

        added = schedule.observation(seconds, until)
        if not added:
            return
        script = self.__dict__.get("_timing_script")
        if script is None:
            text = (resources.files(__package__) / "scripts" / "timing.lua").read_text()
            script = self._timing_script = self.client.register_script(text)
        shares: list[int | str] = []
        for index, share in added:
            shares += [index + 1, repr(share)]
        script(keys=[self._timing_key(site, phase)],
               args=[repr(float(decay)), schedule.BUCKETS, repr(schedule.PRUNE), lock_millis(self._TIMING_TTL),
                     *shares])

    # Key: P:timing:points[:{site}] list, the newest unseen.KEEP (shown, ready) points
    # (unseen.py), about 3.2 KB, kept 30 days after the last.
    def _points_key(self, site: str) -> str:
        return f"{self.prefix}:timing:points:{site}" if site else f"{self.prefix}:timing:points"

    def timing_points(self, site: str) -> list[str]:
        return [_text(item) for item in self.client.lrange(self._points_key(site), 0, -1)]

    def record_timing_point(self, site: str, point: str, keep: int) -> None:
        key = self._points_key(site)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.lpush(key, point)
            pipe.ltrim(key, 0, max(0, keep - 1))
            pipe.pexpire(key, lock_millis(self._TIMING_TTL))
            pipe.execute()

    # -- callback watch (subtitle_tasks/callback_watch.py) -----------------------------
    # Keys: P:cbworkers zset (worker -> last heartbeat), P:cbworker:{w} hash (broker,
    # fence), P:cbhold:{w} hash (task id -> "tag|once|received_at|header"). Scripts
    # state/scripts/watch_*.lua, registered on first use.
    _WATCH_SCRIPTS = ("watch_beat", "watch_dead", "watch_hold", "watch_release", "watch_forget")

    def _watch(self, name: str, *args: Any) -> Any:
        scripts = self.__dict__.get("_watch_scripts")
        if scripts is None:
            folder = resources.files(__package__) / "scripts"
            scripts = {n: self.client.register_script((folder / f"{n}.lua").read_text())
                       for n in self._WATCH_SCRIPTS}
            self._watch_scripts = scripts
        return scripts[name](args=[self.prefix, *args])

    def watch_beat(self, worker: str, broker: str, fence: float) -> bool:
        """Worker ``worker`` is alive, consumes from ``broker``; holds before ``fence`` are restore-only.

        True if it was registered already (False: first beat, or it had been presumed dead)."""
        return bool(int(self._watch("watch_beat", worker, broker, repr(float(fence)), lock_millis(self.retention))))

    def watch_dead(self, stale: float, limit: int = 100) -> list[tuple[str, str, float | None]]:
        """Workers silent for ``stale`` seconds: (worker, broker or '', fence or None)."""
        flat = [_text(v) for v in self._watch("watch_dead", stale, limit)]
        return [(flat[i], flat[i + 1], float(flat[i + 2]) if flat[i + 2] else None) for i in range(0, len(flat), 3)]

    def watch_hold(self, worker: str, task_id: str, value: str) -> None:
        self._watch("watch_hold", worker, task_id, value, lock_millis(self.retention))

    def watch_holds(self, worker: str) -> dict[str, str]:
        raw = self.client.hgetall(f"{self.prefix}:cbhold:{worker}")
        return {_text(k): _text(v) for k, v in raw.items()}

    def watch_release(self, worker: str, task_id: str, tag: str) -> bool:
        """Drop ``worker``'s hold on ``task_id`` if it is delivery ``tag``; True for the one caller that did."""
        return bool(int(self._watch("watch_release", worker, task_id, tag)))

    def watch_forget(self, worker: str, stale: float | None = None) -> bool:
        """Remove a worker's registration and holds (with ``stale``: only if still silent and holding nothing)."""
        return bool(int(self._watch("watch_forget", worker, "" if stale is None else repr(float(stale)))))

    # -- step watch (subtitle_tasks/step_watch.py) -------------------------------------
    # Keys: P:stepworkers zset (worker -> last heartbeat), P:stephold:{w} hash
    # (generation id -> when the worker received its step). Scripts step_*.lua.
    def _step_script(self, name: str) -> Any:
        scripts: dict[str, Any] = self.__dict__.setdefault("_step_scripts", {})
        if name not in scripts:
            scripts[name] = self.client.register_script(
                (resources.files(__package__) / "scripts" / f"{name}.lua").read_text())
        return scripts[name]

    def step_beat(self, worker: str) -> bool:
        """Worker ``worker`` is alive. True if it was registered already (False: first
        beat, or a sweeper had presumed it dead and released its steps)."""
        return bool(int(self._step_script("step_beat")(args=[self.prefix, worker, lock_millis(self.retention)])))

    def step_hold(self, worker: str, generation_id: str, received_at: float, lease: float = 0.0) -> None:
        """``worker`` has received (prefetched or started) ``generation_id``'s step; with
        ``lease``, a claim's short delivery lease is stretched to that (step_hold.lua)."""
        self._step_script("step_hold")(args=[self.prefix, worker, generation_id, f"{received_at:.3f}",
                                             repr(float(lease))])

    def step_unhold(self, worker: str, generation_id: str) -> None:
        self.client.hdel(f"{self.prefix}:stephold:{worker}", generation_id)

    def step_published(self, worker: str, generation_ids: Sequence[str]) -> None:
        """``worker``'s dispatcher has published these claims: it no longer holds them."""
        if generation_ids:
            self.client.hdel(f"{self.prefix}:stepclaim:{worker}", *generation_ids)

    def step_holds(self, worker: str) -> list[str]:
        return sorted(_text(gid) for gid in self.client.hkeys(f"{self.prefix}:stephold:{worker}"))

    def release_dead_steps(self, stale: float, limit: int = 100) -> tuple[int, list[str]]:
        """Workers silent for ``stale`` seconds: their held steps due now, their locks
        broken, the workers forgotten. Returns (steps made due, workers forgotten)."""
        out = self._step_script("step_release")(args=[self.prefix, "dead", repr(float(stale)), limit])
        return int(out[0]), [_text(w) for w in out[1:]]

    def release_worker_steps(self, worker: str) -> int:
        """A worker that shut down: its remaining held steps due now, the worker forgotten."""
        return int(self._step_script("step_release")(args=[self.prefix, "gone", worker])[0])

    def release_lost_steps(self, worker: str, generation_ids: Sequence[str]) -> int:
        """Steps ``worker``'s pool child died running: due now, locks broken, holds dropped."""
        if not generation_ids:
            return 0
        out = self._step_script("step_release")(args=[self.prefix, "lost", worker, *generation_ids])
        return int(out[0])

    # -- once marks (once.py)
    def once_done(self, task_id: str) -> bool:
        return bool(self.client.exists(f"{self.prefix}:once:{task_id}"))

    def mark_once(self, task_id: str, ttl: float) -> None:
        self.client.set(f"{self.prefix}:once:{task_id}", 1, px=lock_millis(ttl))
