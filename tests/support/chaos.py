"""The chaos run: requests in flight, faults injected, worker processes killed and restarted.

Used by tests/test_resilience.py (a short run) and bench/chaos.py (the long run).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field

import subtitle_tasks
from subtitle_tasks import request_subtitles
from tests.support.callbacks import record
from tests.support.harness import Harness, Worker

FAULTS = {"http_503": 0.03, "transient": 0.03, "drop": 0.02, "html_502": 0.02, "http_500": 0.02,
          "drop_after_commit": 0.05, "rate_429": 0.02}


@dataclass
class ChaosReport:
    requests: int
    expected: dict[str, str]                  # tag -> expected callback kind
    calls: Counter = field(default_factory=Counter)  # (tag, kind) -> count
    posts: Counter = field(default_factory=Counter)  # (env, upload, lang) -> accepted POSTs
    kills: Counter = field(default_factory=Counter)  # kill kind -> count
    task_ids: dict[str, list[str]] = field(default_factory=dict)  # tag -> callback message ids
    seconds_to_finish: float = 0.0

    def problems(self) -> list[str]:
        out = []
        for tag, kind in self.expected.items():
            got = {k: n for (t, k), n in self.calls.items() if t == tag}
            ids = set(self.task_ids.get(tag, []))
            # One decision, one callback id. A repeat of that same id is the documented
            # publish-then-settle window of non-Redis brokers (handoff.py): counted in
            # repeats(), and what a consumer keyed on the task id sees once.
            if set(got) != {kind} or len(ids) != 1:
                out.append(f"{tag}: expected one {kind} callback, got {got} with ids {sorted(ids)}")
        out += [f"{key}: {n} accepted POSTs" for key, n in self.posts.items() if n > 1]
        return out

    def repeats(self) -> int:
        """Callbacks delivered again under the same id (the notifier was killed mid-way)."""
        return sum(n for n in self.calls.values()) - len({t for t, _ in self.calls})

    def table(self) -> str:
        fired = sum(self.calls.values())
        rows = [
            ("requests", self.requests), ("callbacks fired", fired),
            ("requests with one right callback id",
             self.requests - len([p for p in self.problems() if "callback" in p])),
            ("repeated deliveries of the same callback id", self.repeats()),
            ("max accepted POSTs per (upload, language)", max(self.posts.values() or [0])),
            *((f"kills: {k}", n) for k, n in sorted(self.kills.items())),
            ("seconds from first request to last callback", f"{self.seconds_to_finish:.1f}"),
        ]
        width = max(len(r[0]) for r in rows)
        return "\n".join(f"| {name:<{width}} | {value} |" for name, value in rows)


def plan_requests(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """(tag, upload id, expected kind): mostly videos, some that error, some duplicates."""
    plan = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.08:
            plan.append((f"r{i}", f"errored-{i}", "error"))
        elif roll < 0.12:
            plan.append((f"r{i}", f"missing-{i}", "error"))
        elif roll < 0.22 and plan:
            # Same upload and language as an earlier request: must share its generation.
            _, upload, kind = rng.choice(plan)
            plan.append((f"r{i}", upload, kind))
        else:
            plan.append((f"r{i}", f"video-{i}", "ready"))
    return plan


def kill_something(workers: list[Worker], rng: random.Random, report: ChaosReport) -> None:
    victim = rng.choice([w for w in workers if w.process and w.process.poll() is None] or workers)
    mode = rng.choice(["main", "child", "child", "term"])
    children = victim.children() if victim.process and victim.process.poll() is None else []
    if mode == "child" and children:
        os.kill(rng.choice(children), signal.SIGKILL)  # the pool replaces it
        report.kills["SIGKILL a pool child"] += 1
        return
    if mode == "term":
        victim.stop(timeout=30)
        report.kills["SIGTERM (warm shutdown)"] += 1
    else:
        victim.kill()
        report.kills["SIGKILL main process and children"] += 1
    victim.start()


def run_chaos(h: Harness, *, requests: int, chaos_seconds: float, workers: int = 3, seed: int = 1,
              kill_every: tuple[float, float] = (0.5, 2.0), min_kills: int = 8,
              timeout: float = 300.0, callback=record) -> ChaosReport:
    """``callback``: the task that records calls (``record``, or ``record_once`` on OnceTask)."""
    rng = random.Random(seed)
    plan = plan_requests(requests, rng)
    report = ChaosReport(requests=len(plan), expected={tag: kind for tag, _, kind in plan})
    # Callbacks are the application's tasks on the application's workers: route them to a
    # queue of their own whose worker the chaos leaves alone. What is under test is that
    # subtitle_tasks hands each callback to the broker exactly once.
    callback_queue = f"callbacks-{h.env['SUBTITLE_TASKS_QUEUE'] or h.prefix}"
    h.worker(name="app", extra=["-Q", callback_queue])
    fleet = [h.worker(name=f"chaos{i}") for i in range(workers)]
    started = time.monotonic()
    handles = {}
    for tag, upload, _ in plan:
        handles[tag] = request_subtitles(upload, "it-IT",
                                         on_ready=callback.s("ready", tag).set(queue=callback_queue),
                                         on_error=callback.s("error", tag).set(queue=callback_queue))
    stop_chaos = started + chaos_seconds
    while time.monotonic() < stop_chaos or sum(report.kills.values()) < min_kills:
        time.sleep(rng.uniform(*kill_every))
        kill_something(fleet, rng, report)
    for worker in fleet:  # every worker up again for the finish
        if worker.process is None or worker.process.poll() is not None:
            worker.start()
    try:
        h.wait_for_calls(len(plan), timeout=timeout, settle=2 * float(h.env["SUBTITLE_TASKS_LEASE"]))
    except AssertionError:
        called = {c["tag"] for c in h.calls()}
        stuck = {tag: subtitle_tasks.status(handle.id) for tag, handle in handles.items() if tag not in called}
        raise AssertionError(f"{len(stuck)} requests got no callback: {list(stuck.items())[:5]}") from None
    report.seconds_to_finish = h.reached_at - started
    report.calls = h.calls_by_tag()
    for call in h.calls():
        report.task_ids.setdefault(call["tag"], []).append(call.get("task_id"))
    report.posts = h.sim.accepted_posts()
    return report
