"""A fleet's shared DatoCMS quota against the server's own count: 429s and budget used.

    python -m bench.quota                        # plans 30 and 60, 3 scenarios each (~2.5 minutes)
    python -m bench.quota --plans 30 --seconds 12 --scenarios ours   # smoke run

Real processes: the DatoCMS simulator (``python -m subtitle_tasks.testing.simulator``,
sliding window of ``plan`` requests per 3 s, the ``X-RateLimit-*`` headers), a real
``redis-server`` (``LocalRedis``) and ``--workers`` worker processes, each with its
own ``DatoCMSClient`` and ``SharedRateLimiter`` on the shared Redis, calling
``list_tracks`` back to back for ``--seconds`` (a backlog: a worker always has work).
A worker told ``RateLimited`` (by the limiter or by a 429 the client did not retry
inline) sleeps ``retry_after`` and goes on, as a Celery task retry would.

Scenarios, for each plan:

* ``baseline``: the limiter as it was, a fixed 55 per 3 s that never reads the headers.
* ``ours``: the limiter observes every answer (``share`` 0.8 of the announced plan).
* ``foreign``: ``ours`` while another tool on the same token, without our limiter,
  sends ``--foreign-share`` of the plan at a fixed pace.

Prints one markdown table and writes ``bench/results/quota-<timestamp>.summary.json``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
import requests

from subtitle_tasks.datocms import DatoCMSClient, DatoCMSError, RateLimited
from subtitle_tasks.local_redis import LocalRedis, free_port
from subtitle_tasks.rate_limits import RedisBackend, SharedRateLimiter, key_for_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TOKEN = "bench-quota-token-not-secret"
WINDOW = 3.0
CONFIGURED_LIMIT = 55  # settings.rate_limit's default: the baseline's fixed limit and our ceiling
SHARE = 0.8            # settings.rate_share's default
UPLOAD = "bench-upload"

_fork = multiprocessing.get_context("fork")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BaselineLimiter:
    """Today's limiter as the client saw it: acquire and penalize, no ``observe``."""

    def __init__(self, limiter: SharedRateLimiter) -> None:
        self._limiter = limiter

    def acquire(self) -> None:
        self._limiter.acquire()

    def penalize(self, seconds: float) -> None:
        self._limiter.penalize(seconds)


class CountingLimiter:
    """Ours, counting the foreign entries each observe added (false positives show here)."""

    def __init__(self, limiter: SharedRateLimiter) -> None:
        self._limiter = limiter
        self.foreign_added = 0

    def acquire(self) -> None:
        self._limiter.acquire()

    def penalize(self, seconds: float) -> None:
        self._limiter.penalize(seconds)

    def observe(self, limit: Any, remaining: Any) -> int:
        added = self._limiter.observe(limit, remaining)
        self.foreign_added += added
        return added


class RecordingSession(requests.Session):
    """Notes when each request left and how it was answered."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.answers: list[tuple[float, int]] = []  # (time the request left, status)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        sent_at = time.time()
        response = super().send(request, **kwargs)
        self.answers.append((sent_at, response.status_code))
        return response


def worker(redis_url: str, base_url: str, scenario: str, start_at: float, stop_at: float, tuning: dict[str, float],
           results: Any) -> None:
    client_redis = redis.Redis.from_url(redis_url)
    shared = SharedRateLimiter(RedisBackend(client_redis), key_for_token(TOKEN),
                               limit=CONFIGURED_LIMIT, window=WINDOW, share=SHARE, **tuning)
    limiter = BaselineLimiter(shared) if scenario == "baseline" else CountingLimiter(shared)
    session = RecordingSession()
    client = DatoCMSClient(TOKEN, base_url=base_url, session=session, rate_limiter=limiter)
    refusals = errors = 0
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        try:
            client.list_tracks(UPLOAD)
        except RateLimited as exc:
            refusals += 1
            time.sleep(min(exc.retry_after or 1.0, max(0.0, stop_at - time.time())))
        except DatoCMSError:
            errors += 1
    results.put({"kind": "worker", "answers": session.answers, "refusals": refusals, "errors": errors,
                 "foreign_added": getattr(limiter, "foreign_added", 0)})
    session.close()
    client_redis.close()


def foreign_tool(base_url: str, per_window: float, start_at: float, stop_at: float, results: Any) -> None:
    """Another tool on the same token: a fixed pace, no limiter, 429s ignored."""
    answers: list[tuple[float, int]] = []
    session = requests.Session()
    session.trust_env = False
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json", "X-Api-Version": "3"}
    interval = WINDOW / per_window
    due = start_at + interval / 2  # out of phase with the fleet's first burst
    while due < stop_at:
        time.sleep(max(0.0, due - time.time()))
        sent_at = time.time()
        response = session.get(f"{base_url}/uploads/{UPLOAD}/tracks", headers=headers, timeout=10)
        answers.append((sent_at, response.status_code))
        due += interval
    results.put({"kind": "foreign", "answers": answers})
    session.close()


def control(base_url: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(f"{base_url}/_simulator/{path}", method="POST",
                                     data=json.dumps(body or {}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def run_scenario(args: argparse.Namespace, redis_url: str, base_url: str, plan: int, scenario: str) -> dict[str, Any]:
    redis.Redis.from_url(redis_url).flushdb()      # no plan, log or block from the last scenario
    control(base_url, "config", {"rate_limit": plan, "rate_window": WINDOW})
    control(base_url, "reset")                     # empties the simulator's windows
    start_at = time.time() + 0.5
    stop_at = start_at + args.seconds
    results = _fork.Queue()
    # None: the limiter's defaults, as production runs it.
    tuning = {name: getattr(args, name) for name in ("burst", "slack") if getattr(args, name) is not None}
    processes = [_fork.Process(target=worker,
                               args=(redis_url, base_url, scenario, start_at, stop_at, tuning, results))
                 for _ in range(args.workers)]
    foreign_per_window = args.foreign_share * plan
    if scenario == "foreign":
        processes.append(_fork.Process(target=foreign_tool,
                                       args=(base_url, foreign_per_window, start_at, stop_at, results)))
    for process in processes:
        process.start()
    collected = [results.get(timeout=args.seconds + 60) for _ in processes]
    for process in processes:
        process.join(timeout=10)

    ours = [a for c in collected if c["kind"] == "worker" for a in c["answers"]]
    foreign = [a for c in collected if c["kind"] == "foreign" for a in c["answers"]]
    measured_from = start_at + args.warmup
    windows = (stop_at - measured_from) / WINDOW

    def per_window(answers: list[tuple[float, int]]) -> float:
        return sum(1 for t, status in answers if t >= measured_from and status != 429) / windows

    sent = len(ours)
    rejected = sum(1 for _, status in ours if status == 429)
    allowed = math.floor(SHARE * plan) if scenario != "baseline" else plan
    achieved = per_window(ours)
    row = {
        "plan": plan, "scenario": scenario, "sent": sent, "answers_429": rejected,
        "pct_429": 100.0 * rejected / sent if sent else 0.0,
        "accepted_per_window": achieved, "allowed_per_window": allowed,
        "utilisation": achieved / allowed,
        "other_errors": sum(c.get("errors", 0) for c in collected),
        "limiter_refusals": sum(c.get("refusals", 0) for c in collected),
        "foreign_entries_recorded": sum(c.get("foreign_added", 0) for c in collected),
        "measured_windows": windows,
    }
    if scenario == "foreign":
        foreign_rejected = sum(1 for _, status in foreign if status == 429)
        row.update({
            "foreign_target_per_window": foreign_per_window,
            "foreign_sent": len(foreign), "foreign_429": foreign_rejected,
            "foreign_pct_429": 100.0 * foreign_rejected / len(foreign) if foreign else 0.0,
            "foreign_accepted_per_window": per_window(foreign),
        })
    log(f"plan {plan} {scenario}: {sent} sent, {rejected} answered 429, {achieved:.1f} accepted per window")
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| plan | scenario | requests sent | 429 answers | 429 % | accepted / window | allowed share | utilisation "
        "| foreign tool: accepted / window, 429 % |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        allowed = f"{r['allowed_per_window']} (plan)" if r["scenario"] == "baseline" else f"{r['allowed_per_window']}"
        foreign = "" if "foreign_sent" not in r else (
            f"{r['foreign_accepted_per_window']:.1f} of {r['foreign_target_per_window']:g}, "
            f"{r['foreign_pct_429']:.1f} %")
        lines.append(
            f"| {r['plan']} | {r['scenario']} | {r['sent']} | {r['answers_429']} | {r['pct_429']:.2f} % "
            f"| {r['accepted_per_window']:.1f} | {allowed} | {100 * r['utilisation']:.0f} % | {foreign} |")
    for plan in sorted({r["plan"] for r in rows}):
        by = {r["scenario"]: r for r in rows if r["plan"] == plan}
        if "ours" in by and "baseline" in by:
            ours, base = by["ours"], by["baseline"]
            pct = "n/a (baseline 0)" if base["pct_429"] == 0 else f"{ours['pct_429'] / base['pct_429']:.3f}"
            lines.append(
                f"| {plan} | ours / baseline | {ours['sent'] / base['sent']:.2f} | | {pct} "
                f"| {ours['accepted_per_window'] / base['accepted_per_window']:.2f} | | | |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    try:
        revision = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                  text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return {"git": revision, "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "redis_py": redis.__version__}


def wait_for(base_url: str, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"simulator exited with {process.returncode}")
        try:
            urllib.request.urlopen(f"{base_url}/_simulator/state", timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("simulator did not start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plans", type=int, nargs="+", default=[30, 60], help="simulator requests per 3 s")
    parser.add_argument("--scenarios", nargs="+", default=["baseline", "ours", "foreign"],
                        choices=["baseline", "ours", "foreign"])
    parser.add_argument("--seconds", type=float, default=24.0, help="per scenario")
    parser.add_argument("--warmup", type=float, default=WINDOW, help="left out of the per-window figures")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--foreign-share", type=float, default=0.2, help="of the plan, for the foreign tool")
    parser.add_argument("--burst", type=float, default=None, help="SharedRateLimiter(burst=); default: its default")
    parser.add_argument("--slack", type=float, default=None, help="SharedRateLimiter(slack=); default: its default")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    # Its own process, so the fleet's processes do not share its interpreter lock.
    simulator = subprocess.Popen(
        [sys.executable, "-m", "subtitle_tasks.testing.simulator", "--port", str(port),
         "--rate-limit", str(args.plans[0]), "--rate-window", str(WINDOW)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    rows: list[dict[str, Any]] = []
    started = time.time()
    try:
        wait_for(base_url, simulator)
        with LocalRedis() as server:
            for plan in args.plans:
                for scenario in args.scenarios:
                    rows.append(run_scenario(args, server.url, base_url, plan, scenario))
    finally:
        simulator.terminate()
        simulator.wait(timeout=10)

    print(table(rows))
    summary = {"environment": environment(), "args": {k: str(v) if isinstance(v, Path) else v
                                                       for k, v in vars(args).items()},
               "window": WINDOW, "configured_limit": CONFIGURED_LIMIT, "share": SHARE,
               "seconds_total": time.time() - started, "results": rows}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"quota-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    path.write_text(json.dumps(summary, indent=1) + "\n")
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
