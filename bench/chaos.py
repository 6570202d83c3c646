"""The long chaos run: many requests, injected API faults, workers killed in a loop.

    python -m bench.chaos --requests 1000 --seconds 180 --workers 3
    python -m bench.chaos --broker amqp://guest:guest@127.0.0.1:5672//   # RabbitMQ, Redis state

Prints the per-request guarantees (exactly one callback of the right kind, at most one
accepted POST per upload and language) and how long the fleet took, next to a quiet
run of the same requests without kills or faults measured in the same invocation.
Exits 1 if any guarantee was broken. The short version runs in CI
(tests/test_resilience.py::test_chaos_every_request_ends_once_with_one_generation).

Writes ``bench/results/chaos-<timestamp>.summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.testing import Simulator, SimulatorConfig
from tests.support.chaos import FAULTS, run_chaos
from tests.support.harness import TOKEN, Harness


def one_run(requests: int, seconds: float, workers: int, seed: int, chaotic: bool, broker: str | None = None):
    with LocalRedis(appendonly=True) as server, \
            Simulator(SimulatorConfig(job_seconds=0.5, preparing_seconds=0.5, token=TOKEN, seed=seed,
                                      rate_limit=100_000)) as sim:
        if chaotic:
            sim.configure(faults=FAULTS)
        logs = Path(tempfile.mkdtemp(prefix="subtitle-tasks-chaos-"))
        # With a RabbitMQ broker the queues are named per run, so runs never share messages.
        overrides = {"CELERY_BROKER_URL": broker} if broker else {}
        h = Harness(server.url, sim, logs, SUBTITLE_TASKS_RATE_LIMIT="50000", **overrides)
        try:
            return run_chaos(h, requests=requests, chaos_seconds=seconds if chaotic else 0, workers=workers,
                             seed=seed, min_kills=0 if not chaotic else 1, timeout=max(600, requests))
        finally:
            h.close()
            if broker:
                _delete_queues(broker, h.env["SUBTITLE_TASKS_QUEUE"])


def _delete_queues(broker: str, queue: str) -> None:
    """Leave the user's RabbitMQ as it was: this run's queues go with it."""
    from kombu import Connection

    with Connection(broker) as conn:
        for name in (queue, f"callbacks-{queue}"):
            with contextlib.suppress(Exception):
                conn.default_channel.queue_delete(name)


def _report(report) -> dict:
    """A ChaosReport's figures, as printed in its table."""
    return {"requests": report.requests, "callbacks_fired": sum(report.calls.values()),
            "repeated_deliveries": report.repeats(), "max_posts_per_track": max(report.posts.values() or [0]),
            "kills": dict(report.kills), "seconds_to_finish": round(report.seconds_to_finish, 2),
            "problems": len(report.problems())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=180.0, help="how long to keep killing workers")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--broker", default=None,
                        help="a broker URL (e.g. amqp://...); default: the run's own Redis, which also holds state")
    args = parser.parse_args(argv)

    started = time.monotonic()
    quiet = one_run(args.requests, 0, args.workers, args.seed, chaotic=False, broker=args.broker)
    chaos = one_run(args.requests, args.seconds, args.workers, args.seed, chaotic=True, broker=args.broker)
    broker = "RabbitMQ" if (args.broker or "").startswith(("amqp", "pyamqp")) else "Redis"
    print(f"\n## chaos: {args.requests} requests, {args.workers} workers, kills for {args.seconds:.0f}s, "
          f"{broker} broker\n")
    print("| figure | value |\n|---|---|")
    print(chaos.table())
    print(f"| baseline (no kills, no faults): seconds to last callback | {quiet.seconds_to_finish:.1f} |")
    print(f"| ratio chaos / baseline | {chaos.seconds_to_finish / max(quiet.seconds_to_finish, 1e-9):.2f} |")
    problems = chaos.problems() + quiet.problems()
    print(f"\nguarantees broken: {len(problems)}" + "".join(f"\n  {p}" for p in problems[:20]))
    print(f"total wall time {time.monotonic() - started:.0f}s")
    summary = {
        "benchmark": "chaos", "issue": None, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        # The broker's kind, not its URL (which may hold credentials).
        "settings": {"requests": args.requests, "seconds": args.seconds, "workers": args.workers,
                     "seed": args.seed, "broker": broker},
        "results": {"chaos": _report(chaos), "quiet": _report(quiet),
                    "ratio": round(chaos.seconds_to_finish / max(quiet.seconds_to_finish, 1e-9), 3),
                    "guarantees_broken": len(problems), "problems": problems[:20]},
        "seconds_total": round(time.monotonic() - started, 1),
    }
    out = Path(__file__).parent / "results" / f"chaos-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"summary: {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
