"""A step behind a burst of the app's own tasks: its own queue against the app's default one.

    python -m bench.burst                 # 1,000 queued tasks of 20 ms, 3 runs per scenario (~2 min)

Issue #16 item 5. A Django or Flask app wired with ``init_app`` runs our steps and its
own tasks on the same workers; a sweep's thousand finished tracks put a thousand
callbacks in the app's queue at once. One ``redis-server``, the simulator, one real
worker of such an app (tests/support/foreign_app.py, prefork, concurrency 2). Per run,
``--burst`` of the app's tasks (each sleeping ``--task-seconds``) are queued in the
app's default queue, then one request is made; the figure is the time from
``request_subtitles`` returning to its POST reaching the simulator (the submit step's
wait: dispatch, queue, a free slot). Scenarios, each on a fresh pipeline and worker:

* **own queue** (the default now): no SUBTITLE_TASKS_QUEUE, so our tasks go to the
  ``subtitle_tasks`` queue, which the worker consumes besides its own;
* **shared queue** (the default before): SUBTITLE_TASKS_QUEUE set to the app's default
  queue, so steps wait behind the burst in one FIFO;
* **no burst**: the baseline, own queue and nothing queued.

Prints a table and writes ``bench/results/burst-<timestamp>.summary.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = ("own queue", "shared queue", "no burst")


def one_run(server_url: str, sim: Any, tmp: Path, scenario: str, run: int, args: argparse.Namespace) -> float:
    """Seconds from request_subtitles returning to its POST reaching the simulator."""
    from celery import Celery

    import subtitle_tasks
    from tests.support.harness import Harness

    app_queue = f"app-{scenario.replace(' ', '-')}-{run}"
    harness = Harness(server_url, sim, tmp, FOREIGN_QUEUE=app_queue, SUBTITLE_TASKS_CALLBACK_QUEUE="",
                      SUBTITLE_TASKS_QUEUE=app_queue if scenario == "shared queue" else "")
    try:
        worker = harness.worker(app="tests.support.foreign_app", concurrency=2)
        time.sleep(3.0)  # consuming before anything is sent
        if scenario != "no burst":
            sender = Celery("burst", broker=server_url, set_as_current=False)
            with sender.producer_or_acquire() as producer:
                for _ in range(args.burst):
                    sender.send_task("foreign.busy", args=[args.task_seconds], queue=app_queue, producer=producer)
            sender.close()
        upload = f"burst-{scenario.replace(' ', '-')}-{run}"
        asked = time.monotonic()
        subtitle_tasks.request_subtitles(upload, "it")
        give_up = asked + args.burst * args.task_seconds + 60
        while time.monotonic() < give_up:
            posts = [r.time for r in sim.requests() if r.method == "POST" and f"/uploads/{upload}/" in r.path]
            if posts:
                return posts[0] - asked
            time.sleep(0.02)
        raise RuntimeError(f"{scenario}: no POST within {give_up - asked:.0f} s\n{worker.log()[-2000:]}")
    finally:
        for worker in harness.workers:
            worker.kill()  # the rest of the burst is not ours to wait for
        harness.redis.close()


def main(argv: list[str] | None = None) -> int:
    from subtitle_tasks.local_redis import LocalRedis
    from subtitle_tasks.testing import Simulator, SimulatorConfig
    from tests.support.harness import TOKEN

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--burst", type=int, default=1000, help="the app's tasks queued before the request")
    parser.add_argument("--task-seconds", type=float, default=0.02, help="what each of them takes")
    parser.add_argument("--runs", type=int, default=3, help="per scenario")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    waits: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    started = time.monotonic()
    with LocalRedis() as server, Simulator(SimulatorConfig(token=TOKEN, job_seconds=0.2)) as sim, \
            tempfile.TemporaryDirectory(prefix="subtitle-tasks-burst-") as tmp:
        for run in range(args.runs):
            for scenario in SCENARIOS:
                waits[scenario].append(one_run(server.url, sim, Path(tmp), scenario, run, args))
                print(f"[{time.strftime('%H:%M:%S')}] {scenario}, run {run}: {waits[scenario][-1]:.3f} s",
                      flush=True)
    median = {s: statistics.median(w) for s, w in waits.items()}
    base = median["no burst"]
    print(f"\n## A step behind {args.burst:,} of the app's tasks of {args.task_seconds * 1000:g} ms "
          f"(median of {args.runs})\n")
    print("| where our steps go | request -> POST (s) | vs no burst |\n|---|---:|---:|")
    for scenario in SCENARIOS:
        print(f"| {scenario} | {median[scenario]:.3f} | {median[scenario] / base:.1f}x |")
    summary = {"benchmark": "burst", "issue": "#16 item 5", "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": {"platform": platform.platform(), "python": platform.python_version()},
               "argv": sys.argv[1:], "settings": vars(args) | {"results_dir": str(args.results_dir)},
               "waits": waits, "median": median, "seconds": round(time.monotonic() - started, 1)}
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"burst-{time.strftime('%Y%m%d-%H%M%S')}.summary.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nsummary: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
