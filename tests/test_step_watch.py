"""The step watch: steps a dead worker held are due again within seconds (step_watch.py).

Store rules on both stores (the contract fixtures), the watch's judgement without
sleeping, and one real run: a worker SIGKILLed while its submit step is in flight,
the step running on the other worker long before the lease, one POST, one callback.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from subtitle_tasks import request_subtitles
from subtitle_tasks.state.stub import MemoryStore
from subtitle_tasks.step_watch import StepWatch
from tests.support.callbacks import record
from tests.test_store_contract import FakeClock, new

# The store contract's fixtures, re-exported (``x as x``) so pytest finds them in this module.
from tests.test_store_contract import contract_redis as contract_redis
from tests.test_store_contract import store as store
from tests.test_store_contract import subject as subject

LEASE = 60.0


def _claim(store, *gids: str, lease: float = LEASE) -> None:
    claimed = [g for g, _ in store.claim_due(lease, 100)]
    assert sorted(claimed) == sorted(gids)


# -- the store's rules (memory and Redis) ----------------------------------------------------

def test_a_dead_workers_leased_step_is_due_now_and_its_lock_broken(subject, store):
    created = new(store)
    gid = created.generation_id
    _claim(store, gid)
    assert store.claim_due(LEASE, 100) == []  # leased: not due
    token = store.lock(f"gen:{gid}", LEASE, owner="w1@h")
    assert token.startswith("w1@h/")
    assert store.step_beat("w1@h") is False  # first beat registers
    assert store.step_beat("w1@h") is True
    store.step_hold("w1@h", gid, time.time())
    assert store.step_holds("w1@h") == [gid]

    assert store.release_dead_steps(stale=5.0) == (0, [])  # not silent yet
    subject.wait(1.2)
    released, dead = store.release_dead_steps(stale=1.0)
    assert (released, dead) == (1, ["w1@h"])
    assert store.step_holds("w1@h") == []
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [gid]  # due again, long before the lease
    assert store.lock(f"gen:{gid}", LEASE) is not None  # the dead worker's lock is gone
    assert store.step_beat("w1@h") is False  # a presumed-dead worker learns it on its next beat


def test_another_workers_lock_and_a_settled_step_are_left_alone(subject, store):
    settled, leased = new(store, upload="u1"), new(store, upload="u2")
    _claim(store, settled.generation_id, leased.generation_id)
    for created in (settled, leased):
        store.step_hold("w1@h", created.generation_id, time.time())
    store.step_beat("w1@h")
    # One step ran and settled (next poll in 30 s) before its worker died.
    assert store.advance(settled.generation_id, 30.0, attempts=1)
    # The other was handed out again meanwhile and another worker holds its lock.
    other = store.lock(f"gen:{leased.generation_id}", LEASE, owner="w2@h")
    subject.wait(1.2)
    assert store.release_dead_steps(stale=1.0) == (1, ["w1@h"])
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [leased.generation_id]
    assert store.extend_lock(f"gen:{leased.generation_id}", other, LEASE)  # still w2's
    gen = store.load_generation(settled.generation_id)
    assert gen.due > gen.now + 20  # kept its own due time


def test_a_lost_pool_childs_step_and_a_shut_down_workers_steps(subject, store):
    lost, prefetched = new(store, upload="u1"), new(store, upload="u2")
    _claim(store, lost.generation_id, prefetched.generation_id)
    for created in (lost, prefetched):
        store.step_hold("w1@h", created.generation_id, time.time())
    store.step_beat("w1@h")
    store.lock(f"gen:{lost.generation_id}", LEASE, owner="w1@h")
    assert store.release_lost_steps("w1@h", [lost.generation_id]) == 1
    assert store.step_holds("w1@h") == [prefetched.generation_id]
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [lost.generation_id]
    assert store.release_worker_steps("w1@h") == 1  # shut down: what it never ran goes back
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [prefetched.generation_id]
    assert store.step_beat("w1@h") is False  # forgotten


def test_a_fenced_advance_writes_only_for_the_locks_holder(subject, store):
    gid = new(store).generation_id
    token = store.lock(f"gen:{gid}", LEASE, owner="w1@h")
    assert not store.advance(gid, LEASE, fence=(f"gen:{gid}", "w9@h/not-it"), posted_at=1.0)
    assert store.load_generation(gid).posted_at is None
    assert store.advance(gid, LEASE, fence=(f"gen:{gid}", token), posted_at=1.0)
    assert store.load_generation(gid).posted_at == 1.0


# -- the watch's judgement, on a fake clock ----------------------------------------------------

def test_a_watch_judges_others_only_after_its_own_beats_have_landed_for_dead_after():
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    woken = []
    gid = new(store).generation_id
    _claim(store, gid)
    store.step_beat("dead@h")
    store.step_hold("dead@h", gid, clock())
    watch = StepWatch(store, store, hostname="h", heartbeat=0.5, dead_after=2.0, clock=clock,
                      on_released=lambda: woken.append(1))
    clock.advance(5.0)  # "dead@h" is long silent, but this watch has only just started beating
    assert watch.tick() == 0
    for _ in range(3):
        clock.advance(0.5)
        assert watch.tick() == 0
    clock.advance(0.5)  # 2 s of our own beats
    assert watch.tick() == 1
    assert woken == [1]
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [gid]
    counted = store.metrics_values()
    assert counted["steps_released_total|cause=dead_worker"] == 1
    assert counted["workers_presumed_dead_total"] == 1


def test_a_watch_whose_beats_fail_judges_nobody_until_they_land_again():
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    watch = StepWatch(store, store, hostname="h", heartbeat=0.5, dead_after=2.0, clock=clock)
    for _ in range(5):
        clock.advance(0.5)
        watch.tick()
    assert watch.may_release()
    store.step_beat = lambda worker: (_ for _ in ()).throw(ConnectionError("redis away"))
    clock.advance(0.5)
    assert watch.tick() == 0 and not watch.may_release()


def test_a_watch_hands_back_its_steps_when_the_worker_shuts_down():
    store = MemoryStore()
    gid = new(store).generation_id
    _claim(store, gid)
    watch = StepWatch(store, store, hostname="h", heartbeat=0.5, dead_after=2.0)
    watch.tick()
    store.step_hold(watch.id, gid, time.time())
    watch.close()
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [gid]


# -- a real fleet ----------------------------------------------------------------------------------

def _slow_submit(h, sim, watches: int, upload: str, tag: str) -> tuple[str, str, float]:
    """Once ``watches`` step watches beat, request a subtitle whose every API answer
    takes 6 s; returns (generation id, its lock key, a deadline for the waits)."""
    deadline = time.monotonic() + 60
    while len(h.redis.zrange(f"{h.prefix}:stepworkers", 0, -1)) < watches:
        assert time.monotonic() < deadline, "the workers' step watches never beat"
        time.sleep(0.1)
    sim.configure(faults={"slow": 1.0}, slow_seconds=6.0)
    handle = request_subtitles(upload, "it", on_ready=record.s("ready", tag), on_error=record.s("error", tag))
    gid = h.redis.hget(f"{h.prefix}:req:{handle.id}", "gen").decode()
    return gid, f"{h.prefix}:lock:gen:{gid}", deadline


@pytest.mark.slow
def test_a_sigkilled_workers_submit_runs_elsewhere_long_before_its_lease(harness_factory, sim):
    # A long lease, and a POST answer that takes long, so the step is surely in flight
    # on one worker when it is killed; recovery by lease alone would take 30 s.
    h = harness_factory(SUBTITLE_TASKS_LEASE="30", SUBTITLE_TASKS_HTTP_TIMEOUT="10")
    workers = {name: h.worker(name=name, concurrency=1) for name in ("a", "b")}
    _, lock_key, deadline = _slow_submit(h, sim, 2, "upload-kill", "k")
    holder = None
    while holder is None:  # the submit step has started: its lock names its worker
        assert time.monotonic() < deadline, "the submit step never started"
        value = h.redis.get(lock_key)
        holder = value.decode().split("/")[0] if value else None
        time.sleep(0.02)
    victim = next(w for name, w in workers.items() if f"@{name}@" in holder)
    killed_at = time.monotonic()
    victim.kill()
    sim.configure(faults={})
    # The step ran on the other worker, and on to the callback, well inside the 30 s its
    # lease and the dead worker's lock would have held it. (Sampling the lock instead
    # can miss a step that takes it for a few milliseconds.)
    calls = h.wait_for_calls(1, timeout=90, settle=2.0)
    assert h.reached_at - killed_at < 20, "the step waited for its lease instead of running elsewhere"
    assert [(c["tag"], c["kind"]) for c in calls] == [("k", "ready")]
    assert sum(n for (_, upload, _), n in sim.accepted_posts().items() if upload == "upload-kill") == 1


@pytest.mark.slow
def test_a_pool_child_killed_mid_step_has_its_step_released_by_its_parent_at_once(harness_factory, sim):
    # One worker, so the step can only run again on it: the parent, still alive and
    # beating, releases what its lost child held instead of waiting for the lease.
    h = harness_factory(SUBTITLE_TASKS_LEASE="30", SUBTITLE_TASKS_HTTP_TIMEOUT="10")
    worker = h.worker(name="solo", concurrency=1)
    gid, lock_key, deadline = _slow_submit(h, sim, 1, "upload-child", "c")
    first = None
    # Killed mid-POST: after the step marked "a POST may be going out" (which alone
    # would wait a lease before reconciling).
    while first is None or not h.redis.hget(f"{h.prefix}:gen:{gid}", "posted"):
        assert time.monotonic() < deadline, "the submit step never marked its POST"
        first = h.redis.get(lock_key)
        time.sleep(0.02)
    children = worker.children()
    assert len(children) == 1
    killed_at = time.monotonic()
    os.kill(children[0], signal.SIGKILL)
    sim.configure(faults={})
    # The same worker's new child takes the step and carries it to the callback well
    # inside the 30 s that the POST mark's due time and the lock would have held it.
    calls = h.wait_for_calls(1, timeout=90, settle=2.0)
    assert h.reached_at - killed_at < 20, "the lost child's step waited for its lease (30 s)"
    assert [(c["tag"], c["kind"]) for c in calls] == [("c", "ready")]
    assert sum(n for (_, upload, _), n in sim.accepted_posts().items() if upload == "upload-child") == 1


def test_the_consumer_records_a_steps_hold_and_names_its_worker_for_the_pool_child():
    store = MemoryStore()
    watch = StepWatch(store, store, hostname="h", heartbeat=0.5, dead_after=2.0)

    class Request:
        def __init__(self, name, args):
            self.name, self.args, self.request_dict = name, args, {}

    step = Request("subtitle_tasks.poll", ["g1"])
    watch.hold(step)
    assert store.step_holds(watch.id) == ["g1"]
    assert step.request_dict["subtitle_tasks_step_owner"] == watch.id
    odd = Request("subtitle_tasks.poll", [1, 2])  # not a step's one generation id: nothing to hold
    watch.hold(odd)
    assert "subtitle_tasks_step_owner" not in odd.request_dict
    assert store.step_holds(watch.id) == ["g1"]


def test_what_a_dispatcher_claimed_but_never_published_is_released_with_its_worker(subject, store):
    created = new(store)
    gid = created.generation_id
    store.step_beat("w1@h")
    assert [g for g, _ in store.claim_due(LEASE, 100, holder="w1@h")] == [gid]
    subject.wait(1.2)  # killed between the claim and the publish: nothing received it
    assert store.release_dead_steps(stale=1.0) == (1, ["w1@h"])
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [gid]


def test_published_claims_are_no_longer_the_dispatchers(subject, store):
    gid = new(store).generation_id
    store.step_beat("w1@h")
    assert [g for g, _ in store.claim_due(LEASE, 100, holder="w1@h")] == [gid]
    store.step_published("w1@h", [gid])
    subject.wait(1.2)
    assert store.release_dead_steps(stale=1.0) == (0, ["w1@h"])  # another worker has the task now
    assert store.claim_due(LEASE, 100) == []


def test_a_worker_that_died_notifying_has_its_requests_due_for_recovery_now(subject, store):
    rid = "r-notifying"
    gid = new(store, rid).generation_id
    store.step_beat("w1@h")
    _claim(store, gid)
    store.step_hold("w1@h", gid, time.time())
    assert store.finish(gid, "ready", {"id": "t1"}) == [rid]  # the outcome is decided...
    assert store.lock(f"notify:{rid}", LEASE, owner="w1@h")  # ...and the worker dies handing it over
    assert store.claim_finishing(stale=LEASE, limit=10) == []  # recovery would wait a lease
    subject.wait(1.2)
    assert store.release_dead_steps(stale=1.0) == (1, ["w1@h"])
    assert store.claim_finishing(stale=LEASE, limit=10) == [rid]
    assert store.lock(f"notify:{rid}", LEASE) is not None  # its notify lock is gone too


def test_a_received_step_has_its_short_delivery_lease_stretched_to_the_full_lease(subject, store):
    received, lost = new(store, upload="u1"), new(store, upload="u2")
    _claim(store, received.generation_id, lost.generation_id, lease=2.0)  # the delivery lease
    store.step_hold("w1@h", received.generation_id, time.time(), lease=LEASE)
    subject.wait(2.5)
    # The message no worker received (lost on its way) is due again after the delivery
    # lease; the one a live worker holds is not, its lease now runs a full LEASE.
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [lost.generation_id]


def test_stretching_never_shortens_a_lease_nor_touches_a_settled_step(subject, store):
    gid = new(store).generation_id
    _claim(store, gid, lease=10.0)
    store.step_hold("w1@h", gid, time.time(), lease=1.0)  # already leased longer: left alone
    subject.wait(1.5)
    assert store.claim_due(LEASE, 100) == []
    assert store.advance(gid, 500.0)  # settled: next step far ahead
    store.step_hold("w1@h", gid, time.time(), lease=LEASE)  # a duplicate delivery received late
    gen = store.load_generation(gid)
    assert gen.due - gen.now > 400


def test_a_worker_killed_mid_post_has_its_submit_reconciled_now_not_a_lease_later(subject, store):
    gid = new(store).generation_id
    _claim(store, gid)
    store.step_beat("w1@h")
    store.step_hold("w1@h", gid, time.time())
    token = store.lock(f"gen:{gid}", LEASE, owner="w1@h")
    # The submit marked "a POST may be going out" (due a lease later), then died posting.
    assert store.advance(gid, LEASE, fence=(f"gen:{gid}", token), posted_at=time.time())
    subject.wait(1.2)
    assert store.release_dead_steps(stale=1.0) == (1, ["w1@h"])
    assert [g for g, _ in store.claim_due(LEASE, 100)] == [gid]
    gen = store.load_generation(gid)
    assert gen.posted_at is not None and gen.due <= gen.now + 0.001  # due: the next holder reconciles
