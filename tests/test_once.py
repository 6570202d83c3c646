"""OnceTask on real workers: repeats of one task id run once, a claim held elsewhere waits."""

from __future__ import annotations

import time

from subtitle_tasks.state import RedisStore


def _send(app, queue: str, name: str, task_id: str, tag: str) -> None:
    app.send_task(name, args=[{"id": "track-1"}, "ready", tag], task_id=task_id, queue=queue)


def test_repeats_of_one_id_run_once_and_other_ids_run(harness):
    app, queue = harness.app(), harness.env["SUBTITLE_TASKS_QUEUE"]
    for _ in range(3):  # a RabbitMQ re-publish, a redelivery, ...: the same id again
        _send(app, queue, "tests.record_once", "req1-ready-0", "guarded")
        _send(app, queue, "tests.record", "req2-ready-0", "plain")
    _send(app, queue, "tests.record_once", "req3-ready-0", "guarded-other")
    harness.worker()
    calls = harness.wait_for_calls(5, timeout=60, settle=2.0)
    assert harness.calls_by_tag() == {("guarded", "ready"): 1, ("plain", "ready"): 3, ("guarded-other", "ready"): 1}
    assert sorted({c["task_id"] for c in calls if c["tag"] == "guarded"}) == ["req1-ready-0"]


def test_a_claim_held_by_a_dead_worker_is_waited_out_then_run_once(harness):
    app, queue = harness.app(), harness.env["SUBTITLE_TASKS_QUEUE"]
    store = RedisStore(harness.redis, prefix=harness.prefix)
    lease = float(harness.env["SUBTITLE_TASKS_LEASE"])
    # A worker claimed it and died mid-run: the claim stays until its lease runs out.
    assert store.lock("once:req4-ready-0", lease)
    _send(app, queue, "tests.record_once", "req4-ready-0", "orphaned")
    # One already done by someone else: skipped even while a claim is held.
    harness.redis.set(f"{harness.prefix}:once:req5-ready-0", 1)
    assert store.lock("once:req5-ready-0", lease)
    _send(app, queue, "tests.record_once", "req5-ready-0", "done-elsewhere")
    started = time.monotonic()
    harness.worker()
    [call] = harness.wait_for_calls(1, timeout=60, settle=lease + 2)
    assert call["tag"] == "orphaned" and call["task_id"] == "req4-ready-0"
    assert time.monotonic() - started >= lease  # it waited for the claim, not ran beside it
    assert harness.redis.exists(f"{harness.prefix}:once:req4-ready-0")
