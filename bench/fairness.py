"""Fairness of the schedule: how long one step waits behind a backlog, per-site scheduler vs single FIFO.

    python -m bench.fairness                    # backlog 10,000, three scenarios (~20 s)
    python -m bench.fairness --backlog 1000     # smoke run

Real ``redis-server`` (``LocalRedis``) and the real Lua scripts; simulated time. A
dispatcher claims once per ``--interval`` simulated seconds with the whole batch as
room (the workers keep up: the step queue is empty at every claim). The pacing
windows run on the simulated clock: the bench deletes a site's ``P:dispatched`` key
once ``--window`` simulated seconds have passed since the window's first step, which
is what its PEXPIRE does in real time. Handed-out steps keep their lease (an hour)
for the whole run, as if every worker ran them. So "wait" is claims x interval, the
time a fleet pacing ``--pace`` steps per ``--window`` per site would take, without
the hours the baseline needs in real time.

Scenarios (the late step arrives right after the first claim, while the backlog is
being worked):

* ``site``: ``--backlog`` new generations on site A; then one new generation on site B.
* ``submit``: ``--backlog`` overdue polls on site A; then one new submission on site A.
* ``poll``: ``--backlog`` new submissions on site A; then one poll of site A comes due.

Schedulers, in the same run on the same data:

* ``per-site``: ``claim_due.lua`` as it is: room shared among sites, half of a site's
  share to submissions, each site paced on its own (``P:dispatched:{site}``).
* ``single FIFO``: ``claim_due.lua`` as it was (commit e1ea285, copied below): one
  sorted set ``P:due`` in due order, one pace for the whole fleet. Its data is the
  same schedule with every set merged into ``P:due``, the layout of that version.

Prints a markdown table and writes ``bench/results/fairness-<timestamp>.summary.json``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import redis

from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.state import JOB, RedisStore
from subtitle_tasks.state.redis import schedule_keys

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LEASE = 3600.0  # real seconds: nothing handed out comes back during a run
REAL_WINDOW = 3600.0  # the pace keys' real TTL; the bench expires them on the simulated clock

# subtitle_tasks/state/scripts/claim_due.lua at commit e1ea285: one FIFO, one global pace.
BASELINE_CLAIM_DUE = """
local prefix, lease, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local pace, window = tonumber(ARGV[4] or '0'), tonumber(ARGV[5] or '0')
local paced_key = prefix .. ':dispatched'
if pace > 0 then
  local used = tonumber(redis.call('GET', paced_key) or '0')
  limit = math.min(limit, pace - used)
  if limit <= 0 then
    return {}
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due_key = prefix .. ':due'
local ids = redis.call('ZRANGEBYSCORE', due_key, '-inf', now, 'LIMIT', 0, limit)
local out = {}
for _, gid in ipairs(ids) do
  local phase = redis.call('HGET', prefix .. ':gen:' .. gid, 'phase')
  if (not phase) or phase == 'done' then
    redis.call('ZREM', due_key, gid)
  else
    redis.call('ZADD', due_key, now + lease, gid)
    out[#out + 1] = gid
    out[#out + 1] = phase
  end
end
if pace > 0 and #out > 0 then
  redis.call('INCRBY', paced_key, #out / 2)
  if redis.call('PTTL', paced_key) < 0 then
    redis.call('PEXPIRE', paced_key, math.max(1, math.floor(window * 1000)))
  end
end
return out
"""

SCENARIOS = {
    "site": "new generation on site B behind {n:,} new ones on site A",
    "submit": "new submission on site A behind {n:,} overdue polls of site A",
    "poll": "poll of site A behind {n:,} new submissions on site A",
}
SCHEDULERS = ("per-site", "single FIFO")
SITE_A, SITE_B = "a", "b"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _new(store: RedisStore, tag: str, site: str) -> str:
    return store.create_request(request_id=f"r-{tag}", generation_id=f"g-{tag}", upload_id=tag, language_code="en",
                                name=None, environment=None, on_ready=[], on_error=[], ttl=86400, site=site
                                ).generation_id


def _poll_due(store: RedisStore, tag: str, site: str) -> str:
    gid = _new(store, tag, site)
    store.advance(gid, 0, phase=JOB, job_id=f"job-{tag}")
    return gid


def _schedule_keys(prefix: str) -> list[str]:
    """Every schedule set the scenarios use (RedisStore.schedule_keys of the default site, A and B)."""
    return [key for site in ("", SITE_A, SITE_B) for key in schedule_keys(prefix, site)]


def _pace_keys(prefix: str) -> list[str]:
    return [f"{prefix}:dispatched", f"{prefix}:dispatched:{SITE_A}", f"{prefix}:dispatched:{SITE_B}"]


def _merge_into_single_fifo(client: redis.Redis, prefix: str) -> None:
    """The old layout: every schedule entry, same score, in the one sorted set P:due."""
    keys = _schedule_keys(prefix)
    client.zunionstore(f"{prefix}:due", keys)
    client.delete(*[k for k in keys if k != f"{prefix}:due"], f"{prefix}:sites")


class SimulatedDispatcher:
    """One claim per interval on a simulated clock; pacing windows expire on that clock."""

    def __init__(self, client: redis.Redis, prefix: str, claim, *, batch: int, pace: int, window: float,
                 interval: float):
        self.client, self.prefix, self.claim = client, prefix, claim
        self.batch, self.pace, self.window, self.interval = batch, pace, window, interval
        self.t = 0.0
        self.pace_keys = _pace_keys(prefix)
        self.window_start: dict[str, float] = {}  # pace key -> simulated time of its window's first step
        self.claims = 0
        self.busy_claims, self.busy_seconds = 0, 0.0  # claims that handed out steps, real time in them
        self.on_site_b: set[str] = set()  # generations of site B (all others are site A's)
        self.per_window: dict[tuple[str, int], int] = {}  # (site, window number) -> steps handed out

    def tick(self) -> list[tuple[str, str]]:
        """Advance to the next claim and run it; returns the (generation, phase) handed out."""
        for key, start in list(self.window_start.items()):
            if self.t >= start + self.window:
                self.client.delete(key)
                del self.window_start[key]
        started = time.perf_counter()
        flat = self.claim(args=[self.prefix, LEASE, self.batch, self.pace, REAL_WINDOW])
        elapsed = time.perf_counter() - started
        self.claims += 1
        if flat:
            self.busy_claims, self.busy_seconds = self.busy_claims + 1, self.busy_seconds + elapsed
        pipe = self.client.pipeline(transaction=False)
        for key in self.pace_keys:
            pipe.exists(key)
        for key, exists in zip(self.pace_keys, pipe.execute(), strict=True):
            if exists:
                self.window_start.setdefault(key, self.t)
        claimed = [(_text(flat[i]), _text(flat[i + 1])) for i in range(0, len(flat), 2)]
        for gid, _ in claimed:
            slot = (SITE_B if gid in self.on_site_b else SITE_A, int(self.t // self.window))
            self.per_window[slot] = self.per_window.get(slot, 0) + 1
        self.t += self.interval
        return claimed


def run_scenario(client: redis.Redis, prefix: str, scenario: str, backlog: int, *, pace: int, window: float,
                 interval: float, batch: int, max_claims: int) -> dict[str, dict[str, Any]]:
    """Both schedulers on one backlog; per scheduler, how long the late step waited."""
    store = RedisStore(client, prefix)
    make_backlog = _poll_due if scenario == "submit" else _new
    for i in range(backlog):
        make_backlog(store, f"{scenario}-{i:06d}", SITE_A)
    if scenario == "poll":
        # The poll's generation exists from the start (submitted, its next poll far
        # off); it comes due after the first claim, behind the whole flood.
        store.advance(_new(store, "late-poll", SITE_A), 3600, phase=JOB, job_id="job-late")
    snapshot = {k: client.zrange(k, 0, -1, withscores=True) for k in _schedule_keys(prefix)}
    sites = client.smembers(f"{prefix}:sites")
    claim_per_site = client.register_script((Path(__file__).resolve().parent.parent / "subtitle_tasks" / "state"
                                             / "scripts" / "claim_due.lua").read_text())
    claim_single_fifo = client.register_script(BASELINE_CLAIM_DUE)
    out = {}
    for scheduler in SCHEDULERS:
        client.delete(*_schedule_keys(prefix), *_pace_keys(prefix), f"{prefix}:claim_turn")
        for key, entries in snapshot.items():
            if entries:
                client.zadd(key, {_text(m): s for m, s in entries})
        if sites:
            client.sadd(f"{prefix}:sites", *sites)
        single = scheduler == "single FIFO"
        if single:
            _merge_into_single_fifo(client, prefix)
        dispatcher = SimulatedDispatcher(client, prefix, claim_single_fifo if single else claim_per_site,
                                         batch=batch, pace=pace, window=window, interval=interval)
        arrived_at = dispatcher.t  # just after the first claim: the backlog is being worked
        dispatcher.tick()
        tag = f"late-{scheduler.replace(' ', '')}"
        if scenario == "site":
            late = _new(store, tag, SITE_B)
            dispatcher.on_site_b.add(late)
        elif scenario == "submit":
            late = _new(store, tag, SITE_A)
        else:
            late = "g-late-poll"
            store.advance(late, 0)
        if single:
            _merge_into_single_fifo(client, prefix)
        ahead = 0
        handed_at = None
        while dispatcher.claims <= max_claims:
            at = dispatcher.t
            claimed = dispatcher.tick()
            if any(gid == late for gid, _ in claimed):
                handed_at = at
                break
            ahead += len(claimed)
        claims_after = dispatcher.claims - 1
        out[scheduler] = {
            "claims_until_handed_out": claims_after if handed_at is not None else None,
            "wait_seconds": (handed_at - arrived_at) if handed_at is not None else None,
            "steps_handed_out_before": ahead,
            "claims": dispatcher.claims,
            "mean_busy_claim_ms": 1000 * dispatcher.busy_seconds / max(1, dispatcher.busy_claims),
            "max_steps_per_site_per_window": max(dispatcher.per_window.values(), default=0),
        }
    client.flushdb()  # one scenario at a time on this throwaway server
    return out


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "not handed out"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--pace", type=int, default=55, help="steps per window per site (SUBTITLE_TASKS_RATE_LIMIT)")
    parser.add_argument("--window", type=float, default=3.0, help="simulated seconds (SUBTITLE_TASKS_RATE_WINDOW)")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="simulated seconds between claims (SUBTITLE_TASKS_DISPATCH_INTERVAL)")
    parser.add_argument("--batch", type=int, default=500, help="room per claim (SUBTITLE_TASKS_DISPATCH_BATCH)")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    started = time.time()
    max_claims = int(args.backlog / max(1, args.pace) * args.window / args.interval) + 100
    rows: dict[str, Any] = {}
    with LocalRedis() as server:
        client = redis.Redis.from_url(server.url)
        settings = dict(pace=args.pace, window=args.window, interval=args.interval, batch=args.batch,
                        max_claims=max_claims)
        for scenario in args.scenarios:
            quiet = run_scenario(client, f"fair-{scenario}-quiet", scenario, 0, **settings)
            busy = run_scenario(client, f"fair-{scenario}", scenario, args.backlog, **settings)
            rows[scenario] = {"no_backlog": quiet, "backlog": busy}
        client.close()

    print(f"\nbacklog {args.backlog:,}, pace {args.pace} steps per {args.window:g} s per site, "
          f"a claim every {args.interval:g} s, room {args.batch} (simulated time, real Redis and scripts)\n")
    print("| late step | scheduler | claims until handed out | wait (s) | wait with no backlog (s) "
          "| steps handed out before it | most steps of one site in a window | claim that hands out (ms) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for scenario, row in rows.items():
        label = SCENARIOS[scenario].format(n=args.backlog)
        for scheduler in SCHEDULERS:
            r, q = row["backlog"][scheduler], row["no_backlog"][scheduler]
            print(f"| {label} | {scheduler} | {_fmt(r['claims_until_handed_out'])} | {_fmt(r['wait_seconds'])} "
                  f"| {_fmt(q['wait_seconds'])} | {_fmt(r['steps_handed_out_before'])} "
                  f"| {r['max_steps_per_site_per_window']} | {r['mean_busy_claim_ms']:.3f} |")
        ours, base = row["backlog"]["per-site"], row["backlog"]["single FIFO"]
        ratio = (ours["wait_seconds"] / base["wait_seconds"]
                 if ours["wait_seconds"] is not None and base["wait_seconds"] else None)
        row["wait_ratio"] = ratio
        print(f"| {label} | per-site / single FIFO | | {_fmt(ratio, 4)} | | | | "
              f"{ours['mean_busy_claim_ms'] / base['mean_busy_claim_ms']:.2f} |")

    summary = {
        "benchmark": "fairness", "issue": "#8 item 4", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "clock": "simulated (claims x interval); real redis-server and Lua scripts",
        "settings": {"backlog": args.backlog, "pace": args.pace, "window": args.window,
                     "interval": args.interval, "batch": args.batch},
        "seconds_total": time.time() - started, "results": rows,
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"fairness-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {path} ({summary['seconds_total']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
