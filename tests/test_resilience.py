"""Nothing lost, nothing doubled: workers killed, Redis restarted, RabbitMQ, recovery."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import pytest

import subtitle_tasks
from subtitle_tasks import UnknownRequest, request_subtitles
from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.recovery import Recovery
from tests.support.callbacks import record, record_once
from tests.support.chaos import FAULTS, run_chaos
from tests.support.rabbitmq import RABBITMQ, require_rabbitmq

FAST_QUOTA = {"SUBTITLE_TASKS_RATE_LIMIT": "2000"}


def ask(upload_id, tag=None, **kwargs):
    tag = tag or upload_id
    return request_subtitles(upload_id, "it-IT", on_ready=record.s("ready", tag), on_error=record.s("error", tag),
                             **kwargs)


def test_chaos_every_request_ends_once_with_one_generation(harness_factory, sim, broker):
    sim.configure(rate_limit=4000, faults=FAULTS, job_seconds=0.5, preparing_seconds=0.5)
    h = harness_factory(**FAST_QUOTA, **broker)
    # A Redis broker takes callbacks in the settle transaction, so any callback task runs
    # once. RabbitMQ cannot share that transaction: there the callbacks are OnceTasks.
    callback = record if "CELERY_BROKER_URL" not in broker else record_once
    report = run_chaos(h, requests=150, chaos_seconds=20, workers=3, seed=11, timeout=120, callback=callback)
    print("\n" + report.table())
    assert report.problems() == []
    assert sum(report.kills.values()) >= 8
    assert report.repeats() == 0


def test_polls_resume_within_a_lease_after_sigkill(harness_factory, sim):
    sim.configure(job_seconds=2.0, preparing_seconds=0.2)
    h = harness_factory()
    first = h.worker()
    tags = [f"video-resume-{i}" for i in range(10)]
    for tag in tags:
        ask(tag)
    # Wait until every generation is submitted and waiting on its job, then lose the worker.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and sum(sim.accepted_posts().values()) < len(tags):
        time.sleep(0.05)
    first.kill()
    killed_at = time.monotonic()
    h.worker()
    h.wait_for_calls(len(tags), timeout=30)
    lease = float(h.env["SUBTITLE_TASKS_LEASE"])
    # Functional bound, not a benchmark: lost steps come back after one lease, not a visibility timeout.
    assert time.monotonic() - killed_at < lease + 15
    assert h.calls_by_tag() == {(t, "ready"): 1 for t in tags}
    assert max(sim.accepted_posts().values()) == 1


def test_warm_shutdown_mid_run_loses_nothing(harness_factory, sim):
    sim.configure(job_seconds=1.0)
    h = harness_factory()
    first = h.worker()
    tags = [f"video-deploy-{i}" for i in range(20)]
    for tag in tags:
        ask(tag)
    time.sleep(0.8)
    first.stop()          # SIGTERM: what a rolling deploy sends
    h.worker()
    h.wait_for_calls(len(tags), timeout=40)
    assert h.calls_by_tag() == {(t, "ready"): 1 for t in tags}


def test_redis_restart_mid_run(harness_factory, sim, broker):
    with LocalRedis(appendonly=True) as server:
        # With a Redis broker this one server is broker and state; with RabbitMQ, state only.
        h = harness_factory(redis_url=server.url, **broker)
        h.worker(lean=False)  # with gossip, mingle and heartbeats, as in production
        # Slow answers keep the pool busy, so the worker holds prefetched, unacknowledged
        # messages when Redis goes away: the case that used to kill workers (broker_compat).
        sim.configure(job_seconds=1.5, preparing_seconds=0.5, faults={"slow": 1.0}, slow_seconds=0.3)
        tags = [f"video-outage-{i}" for i in range(20)]
        for tag in tags:
            ask(tag)
        time.sleep(1.0)
        server.stop()          # broker and state both gone
        time.sleep(3.0)
        server.start()         # same port, same AOF
        h.wait_for_calls(len(tags), timeout=90)
        assert h.calls_by_tag() == {(t, "ready"): 1 for t in tags}
        assert max(sim.accepted_posts().values()) == 1


@pytest.fixture
def rabbitmq_broker():
    """Harness overrides for a RabbitMQ broker (Redis keeps the state); queues removed after."""
    require_rabbitmq()
    queue = f"st-{uuid.uuid4().hex[:8]}"
    yield {"CELERY_BROKER_URL": RABBITMQ, "SUBTITLE_TASKS_QUEUE": queue}
    from kombu import Connection

    with Connection(RABBITMQ) as conn:
        channel = conn.default_channel
        for name in (queue, f"callbacks-{queue}"):
            with contextlib.suppress(Exception):
                channel.queue_delete(name)


@pytest.fixture(params=["redis", "rabbitmq"])
def broker(request):
    """Broker overrides for the harness: the state Redis itself, or RabbitMQ."""
    if request.param == "redis":
        return {}
    return request.getfixturevalue("rabbitmq_broker")


def test_rabbitmq_broker_with_redis_state_survives_a_killed_worker(harness_factory, sim, rabbitmq_broker):
    sim.configure(job_seconds=1.0)
    h = harness_factory(**rabbitmq_broker)
    first = h.worker()
    tags = [f"video-amqp-{i}" for i in range(15)]
    for tag in tags:
        ask(tag)
    time.sleep(1.2)
    first.kill()
    h.worker()
    h.wait_for_calls(len(tags), timeout=60)
    assert h.calls_by_tag() == {(t, "ready"): 1 for t in tags}
    assert max(sim.accepted_posts().values()) == 1


def test_recovery_sends_callbacks_a_dead_notifier_left_and_repairs_the_schedule(harness_factory, sim):
    h = harness_factory()
    store = subtitle_tasks.runtime.get_runtime().store
    # A generation whose due entry was lost, and one decided but never notified.
    lost = ask("video-lost-entry")
    store.client.zrem(store.schedule_keys()[0], lost.generation_id)  # new: still in the submit set
    assert not any(store.client.zscore(key, lost.generation_id) for key in store.schedule_keys())
    decided = ask("video-decided")
    notify_ids = store.finish(decided.generation_id, "error",
                              {"code": "track_errored", "message": "decided before the notifier died"})
    assert notify_ids == [decided.id]
    store.client.zadd(f"{h.prefix}:finishing", {decided.id: 0})  # its notifier went silent long ago
    # Two sweeps racing each other: only one claims the stale notification.
    sent = []
    sweeps = [threading.Thread(target=lambda: sent.append(
        Recovery(store, lambda rid: sent.append(rid) or "failed", stale=5.0).sweep())) for _ in range(2)]
    for t in sweeps:
        t.start()
    for t in sweeps:
        t.join()
    assert sent.count(decided.id) == 1       # one sweep claimed it, the other did not
    # Put it back to finishing-and-stale so the real workers' sweep sends it for real.
    store.client.zadd(f"{h.prefix}:finishing", {decided.id: 0})
    h.worker()
    calls = h.wait_for_calls(2, timeout=40)
    assert h.calls_by_tag() == {("video-lost-entry", "ready"): 1, ("video-decided", "error"): 1}, calls


def test_finished_requests_expire_after_retention(harness_factory, sim):
    h = harness_factory(SUBTITLE_TASKS_RETENTION="2")
    h.worker()
    handle = ask("video-retention")
    h.wait_for_calls(1)
    assert subtitle_tasks.status(handle.id)["state"] == "ready"
    time.sleep(2.5)
    with pytest.raises(UnknownRequest):
        subtitle_tasks.status(handle.id)
