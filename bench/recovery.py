"""Recovery in seconds: how long a SIGKILLed worker's step waits before it runs elsewhere.

    python -m bench.recovery                    # 20 kills, then 300 requests with and without kills
    python -m bench.recovery --trials 5 --requests 100 --lease-trials 1   # quick, ~2 min

Two figures (issue 10 item 3), each next to a baseline measured in the same run:

* **kill to step elsewhere**: two workers (one pool process each), the default lease
  (30 s). A submit step is made to hang (the simulator answers slowly), its worker is
  SIGKILLed with its pool, and the clock runs until another worker holds the
  generation's lock (the lock names its worker: step_watch.py). Baseline: the same
  with the step watch effectively off (SUBTITLE_TASKS_DEAD_AFTER an hour), which is
  recovery by lease alone, as before.
* **300 requests under kills**: three workers, two pool processes each, one of them
  SIGKILLed (with its pool) every 4 s and restarted at once, against the same
  requests with no kills. Each request must end with exactly one callback and each
  track with one accepted POST.

Writes ``bench/results/recovery-<time>.summary.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from subtitle_tasks import request_subtitles
from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.testing import Simulator, SimulatorConfig
from tests.support.callbacks import record
from tests.support.harness import TOKEN, Harness, Worker

LEASE = "30"  # the production default: what a dead worker's step waited before the step watch
HTTP_TIMEOUT = "10"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _beating(h: Harness) -> int:
    """Workers whose step watch beat within the last second (Redis server clock)."""
    seconds, micros = h.redis.time()
    return int(h.redis.zcount(f"{h.prefix}:stepworkers", seconds + micros / 1e6 - 1.0, "+inf"))


def kill_to_elsewhere(trials: int, dead_after: str | None) -> list[float]:
    """Seconds from SIGKILL to the killed worker's step running on the other worker."""
    overrides = {"SUBTITLE_TASKS_LEASE": LEASE, "SUBTITLE_TASKS_HTTP_TIMEOUT": HTTP_TIMEOUT}
    if dead_after is not None:
        overrides["SUBTITLE_TASKS_DEAD_AFTER"] = dead_after
    with LocalRedis() as server, Simulator(SimulatorConfig(token=TOKEN, job_seconds=0.5, preparing_seconds=0.5,
                                                           rate_limit=100_000)) as sim:
        logs = Path(tempfile.mkdtemp(prefix="subtitle-tasks-recovery-"))
        h = Harness(server.url, sim, logs, **overrides)
        workers = {name: h.worker(name=name, concurrency=1) for name in ("a", "b")}
        times: list[float] = []
        try:
            for trial in range(trials):
                # Two workers beating now: a killed one's entry stays (an hour, in the
                # lease-alone runs), but its beats stop.
                _wait_for(lambda: _beating(h) >= 2, 60, "two live workers")
                sim.configure(faults={"slow": 1.0}, slow_seconds=8.0)
                handle = request_subtitles(f"upload-{trial}", "it")
                gid = h.redis.hget(f"{h.prefix}:req:{handle.id}", "gen").decode()
                lock_key = f"{h.prefix}:lock:gen:{gid}"
                holder = _wait_for(lambda lock_key=lock_key: (h.redis.get(lock_key) or b"").decode().split("/")[0],
                                   60, "the submit step to start")
                victim = next(w for name, w in workers.items() if f"@{name}@" in holder)
                killed_at = time.monotonic()
                victim.kill()
                sim.configure(faults={})
                _wait_for(lambda lock_key=lock_key, holder=holder:
                          not (h.redis.get(lock_key) or holder.encode()).decode().startswith(holder + "/"),
                          120, "the step to run elsewhere")
                times.append(time.monotonic() - killed_at)
                print(f"  kill {trial + 1}/{trials}: step elsewhere after {times[-1]:.2f} s", flush=True)
                victim.start()
                time.sleep(1.0)  # let the restarted worker register before the next kill
        finally:
            h.close()
    return times


def requests_under_kills(requests: int, kill_every: float | None, seed: int) -> dict[str, Any]:
    """Seconds for ``requests`` requests to end, three workers x two pool processes."""
    rng = random.Random(seed)
    with LocalRedis() as server, Simulator(SimulatorConfig(token=TOKEN, job_seconds=15.0, preparing_seconds=5.0,
                                                           rate_limit=100_000, seed=seed)) as sim:
        logs = Path(tempfile.mkdtemp(prefix="subtitle-tasks-recovery-"))
        h = Harness(server.url, sim, logs, SUBTITLE_TASKS_LEASE=LEASE, SUBTITLE_TASKS_HTTP_TIMEOUT=HTTP_TIMEOUT,
                    SUBTITLE_TASKS_RATE_LIMIT="50000")
        callback_queue = f"callbacks-{h.env['SUBTITLE_TASKS_QUEUE']}"
        h.worker(name="app", extra=["-Q", callback_queue])  # the application's own worker, never killed
        fleet: list[Worker] = [h.worker(name=f"w{i}", concurrency=2) for i in range(3)]
        kills = 0
        try:
            _wait_for(lambda: len(h.redis.zrange(f"{h.prefix}:stepworkers", 0, -1)) >= 4, 60, "the workers")
            started = time.monotonic()
            for i in range(requests):
                request_subtitles(f"upload-{i}", "it", on_ready=record.s("ready", str(i)).set(queue=callback_queue),
                                  on_error=record.s("error", str(i)).set(queue=callback_queue))
            next_kill = started + (kill_every or 0)
            ended_at: dict[str, float] = {}  # request tag -> seconds from the start to its callback
            while len(ended_at) < requests:
                for call in h.calls():
                    ended_at.setdefault(call["tag"], time.monotonic() - started)
                if time.monotonic() - started > 900:
                    raise RuntimeError(f"only {len(h.calls())} of {requests} callbacks after 900 s")
                if kill_every and time.monotonic() >= next_kill:
                    victim = rng.choice(fleet)
                    victim.kill()
                    victim.start()
                    kills += 1
                    next_kill += kill_every
                time.sleep(0.05)
            seconds = time.monotonic() - started
            time.sleep(3.0)  # duplicates, if any, would show now
            calls = h.calls()
            per_request: dict[str, int] = {}
            for call in calls:
                per_request[call["tag"]] = per_request.get(call["tag"], 0) + 1
            posts = sim.accepted_posts()
        finally:
            h.close()
    ends = sorted(ended_at.values())
    return {"requests": requests, "kills": kills, "seconds": round(seconds, 2),
            "callback_p50": round(_quantile(ends, 0.5), 2), "callback_p95": round(_quantile(ends, 0.95), 2),
            "errors": sum(1 for c in calls if c["kind"] != "ready"),
            "requests_without_exactly_one_callback": sum(1 for i in range(requests) if per_request.get(str(i)) != 1),
            "tracks_with_more_than_one_post": sum(1 for n in posts.values() if n > 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="kills measured with the step watch")
    parser.add_argument("--lease-trials", type=int, default=2, help="kills measured with recovery by lease alone")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--kill-every", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    began = time.monotonic()
    print("kill to step elsewhere, step watch on:", flush=True)
    watched = kill_to_elsewhere(args.trials, None)
    print("kill to step elsewhere, recovery by lease alone (the baseline):", flush=True)
    leased = kill_to_elsewhere(args.lease_trials, "3600") if args.lease_trials else []
    print(f"{args.requests} requests without kills:", flush=True)
    quiet = requests_under_kills(args.requests, None, args.seed)
    print(f"{args.requests} requests, a worker SIGKILLed every {args.kill_every:g} s:", flush=True)
    killed = requests_under_kills(args.requests, args.kill_every, args.seed)

    p50, p95 = _quantile(watched, 0.5), _quantile(watched, 0.95)
    lease_p50 = statistics.median(leased) if leased else float("nan")
    print(f"\n## recovery: SIGKILL to the step running elsewhere ({len(watched)} kills; lease {LEASE} s)\n")
    print("| figure | step watch | lease alone (baseline) | ratio |\n|---|---|---|---|")
    print(f"| p50 seconds | {p50:.2f} | {lease_p50:.2f} | {p50 / lease_p50:.2f} |")
    print(f"| p95 seconds | {p95:.2f} | | |")
    print(f"| max seconds | {max(watched):.2f} | {max(leased or [float('nan')]):.2f} | |")
    print(f"\n## {args.requests} requests, three workers x two pool processes\n")
    print("| figure | a worker SIGKILLed every "
          f"{args.kill_every:g} s | no kills (baseline) | ratio |\n|---|---|---|---|")
    print(f"| seconds to the last callback | {killed['seconds']:.1f} | {quiet['seconds']:.1f} | "
          f"{killed['seconds'] / quiet['seconds']:.2f} |")
    print(f"| workers killed | {killed['kills']} | 0 | |")
    for key in ("requests_without_exactly_one_callback", "tracks_with_more_than_one_post", "errors"):
        print(f"| {key.replace('_', ' ')} | {killed[key]} | {quiet[key]} | |")

    summary = {
        "benchmark": "recovery", "issue": "#10 item 3", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "settings": {"lease": float(LEASE), "http_timeout": float(HTTP_TIMEOUT), "trials": args.trials,
                     "lease_trials": args.lease_trials, "requests": args.requests, "kill_every": args.kill_every},
        "kill_to_elsewhere": {"step_watch_seconds": [round(t, 3) for t in watched], "p50": round(p50, 3),
                              "p95": round(p95, 3), "lease_alone_seconds": [round(t, 3) for t in leased]},
        "requests_under_kills": {"kills": killed, "no_kills": quiet,
                                 "ratio": round(killed["seconds"] / quiet["seconds"], 3)},
        "seconds_total": round(time.monotonic() - began, 1),
    }
    out = Path(__file__).parent / "results" / f"recovery-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary: {out}")
    broken = sum(killed[k] + quiet[k] for k in ("requests_without_exactly_one_callback",
                                                  "tracks_with_more_than_one_post"))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
