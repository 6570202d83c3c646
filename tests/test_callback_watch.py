"""Callbacks a worker took and died with come back within a lease (callback_watch.py).

Unit tests drive the sweep's decisions against the in-memory store (and the store
methods against both stores); the last test SIGKILLs a real app worker that holds a
prefetched callback and watches a fresh worker run it.
"""

from __future__ import annotations

import json
import textwrap
import time
import uuid
from types import SimpleNamespace

import pytest
import redis

from subtitle_tasks import callback_watch
from subtitle_tasks.callback_watch import ABSENT, HOLD_KEY, MOVED, RESTORED, UNKNOWN, Hold, Watch
from subtitle_tasks.callbacks import CALLBACK_HEADER, callback_task_id
from subtitle_tasks.local_redis import LocalRedis, RedisNotAvailable
from subtitle_tasks.once import OnceTask
from subtitle_tasks.state import RedisStore
from subtitle_tasks.state.stub import MemoryStore

LEASE = 30.0
BROKER = "broker-1"


class Clock:
    def __init__(self) -> None:
        self.t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


class Broker:
    """The broker side of a sweep: which deliveries are still unacked, and what was restored."""

    def __init__(self, identity: str = BROKER, visibility_timeout: float = 3600.0):
        self._identity = identity
        self.visibility_timeout = visibility_timeout
        self.unacked: dict[str, str] = {}  # tag -> RESTORED | MOVED | UNKNOWN (what restore finds)
        self.restored: list[str] = []

    def identity(self) -> str:
        return self._identity

    def restore(self, tag: str, task_id: str, received_at: float) -> str:
        found = self.unacked.pop(tag, ABSENT)
        if found == RESTORED:
            self.restored.append(task_id)
        return found


class Fleet:
    """A store, a clock, a broker and sweepers sharing them."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryStore(clock=self.clock, retention=7 * 86400.0)
        self.broker = Broker()
        self.resent: list[tuple[str, str, int]] = []

    def resend(self, request_id: str, kind: str, index: int) -> bool:
        self.resent.append((request_id, kind, index))
        return True

    def sweeper(self, broker: Broker | None = None) -> Watch:
        return Watch(self.store, broker or self.broker, self.resend, stale=LEASE, clock=self.clock)

    def worker(self, name: str = "w1", broker: str = BROKER) -> str:
        self.store.watch_beat(name, broker, 0.0)
        return name

    def hold(self, worker: str, request_id: str, *, once: bool = False, unacked: str | None = RESTORED,
             kind: str = "ready", index: int = 0) -> tuple[str, str]:
        """``worker`` received callback ``index`` of ``request_id``; returns (task id, tag)."""
        tag = uuid.uuid4().hex
        task_id = callback_task_id(request_id, kind, index)
        hold = Hold(tag, once, self.clock(), request_id, kind, index)
        self.store.watch_hold(worker, task_id, hold.encode())
        if unacked is not None:
            self.broker.unacked[tag] = unacked
        return task_id, tag

    def die(self, seconds: float = LEASE + 1) -> None:
        self.clock.t += seconds


# -- the sweep's decisions -------------------------------------------------------------------

def test_a_dead_workers_unstarted_callback_is_restored_once():
    f = Fleet()
    w = f.worker()
    task_id, _ = f.hold(w, "r1")
    f.die()
    sweepers = [f.sweeper(), f.sweeper()]
    assert sweepers[0].sweep() == {"callbacks_restored": 1}
    assert sweepers[1].sweep() == {}
    assert f.broker.restored == [task_id] and f.resent == []
    assert f.store.watch_dead(LEASE) == []  # the dead worker is forgotten


def test_acked_but_not_started_is_resent_under_its_id():
    f = Fleet()
    w = f.worker()
    f.hold(w, "r1", unacked=None, index=1)  # acked (the child accepted it), never started
    f.die()
    assert f.sweeper().sweep() == {"callbacks_resent": 1}
    assert f.resent == [("r1", "ready", 1)]
    assert f.sweeper().sweep() == {} and f.resent == [("r1", "ready", 1)]


def _request(task, hold_ref, task_id):
    return SimpleNamespace(request=SimpleNamespace(get=lambda key, default=None: hold_ref if key == HOLD_KEY
                                                   else default), id=task_id)


class Plain:
    pass


class Once(OnceTask):
    name = "tests.once_for_watch"
    request = None  # shadows Task.request: set per test, as a worker's trace would


def test_a_started_callback_is_not_sent_again():
    f = Fleet()
    w = f.worker()
    task_id, tag = f.hold(w, "r1", unacked=None)
    callback_watch.release(f.store, f"{w}|{tag}", task_id)  # what task_prerun does
    f.die()
    assert f.sweeper().sweep() == {}
    assert f.resent == [] and f.broker.restored == []


def test_prerun_releases_a_plain_callback_but_an_oncetask_only_at_postrun(monkeypatch):
    f = Fleet()
    w = f.worker()
    plain_id, plain_tag = f.hold(w, "r1", unacked=None)
    once_id, once_tag = f.hold(w, "r2", once=True, unacked=None)
    monkeypatch.setattr("subtitle_tasks.runtime.runtime_for", lambda app=None: SimpleNamespace(store=f.store))
    plain = Plain()
    plain.request = _request(None, f"{w}|{plain_tag}", plain_id).request
    once = Once()
    once.request = _request(None, f"{w}|{once_tag}", once_id).request
    callback_watch._on_task_prerun(task_id=plain_id, task=plain)
    callback_watch._on_task_prerun(task_id=once_id, task=once)
    assert set(f.store.watch_holds(w)) == {once_id}  # the OnceTask is still held while it runs
    callback_watch._on_task_postrun(task_id=once_id, task=once)
    assert f.store.watch_holds(w) == {}


def test_a_revoked_or_failed_delivery_releases_its_hold(monkeypatch):
    f = Fleet()
    w = f.worker()
    revoked_id, revoked_tag = f.hold(w, "r1", unacked=None)
    lost_id, lost_tag = f.hold(w, "r2", once=True, unacked=None)
    monkeypatch.setattr("subtitle_tasks.runtime.runtime_for", lambda app=None: SimpleNamespace(store=f.store))
    # task_revoked passes the request; task_failure (in the main process when the pool
    # child was lost) passes the task, whose request is the delivery's.
    revoked = _request(None, f"{w}|{revoked_tag}", revoked_id)
    callback_watch._on_task_ended(request=SimpleNamespace(get=revoked.request.get, id=revoked_id))
    lost = Once()
    lost.request = _request(None, f"{w}|{lost_tag}", lost_id).request
    callback_watch._on_task_ended(sender=lost, task_id=lost_id)
    assert f.store.watch_holds(w) == {}
    f.die()
    assert f.sweeper().sweep() == {} and f.resent == []


def test_an_oncetask_that_died_running_is_resent():
    f = Fleet()
    w = f.worker()
    f.hold(w, "r1", once=True, unacked=None)  # early-acked, started, never reached postrun
    f.die()
    assert f.sweeper().sweep() == {"callbacks_resent": 1}
    assert f.resent == [("r1", "ready", 0)]


def test_a_live_workers_holds_are_untouched():
    f = Fleet()
    w = f.worker()
    task_id, _ = f.hold(w, "r1")
    f.die(LEASE * 0.9)
    f.store.watch_beat(w, BROKER, 0.0)
    f.die(LEASE * 0.9)
    assert f.sweeper().sweep() == {}
    assert task_id in f.store.watch_holds(w) and f.broker.restored == []


def test_a_newer_delivery_of_the_same_task_id_keeps_its_hold():
    f = Fleet()
    w = f.worker()
    task_id, old_tag = f.hold(w, "r1", once=True)
    _, new_tag = f.hold(w, "r1", once=True)  # OnceTask retried: same id, new delivery
    assert not f.store.watch_release(w, task_id, old_tag)
    assert f.store.watch_holds(w)[task_id].startswith(new_tag + "|")


def test_redelivered_elsewhere_or_unexpected_shape_is_left_alone():
    f = Fleet()
    w = f.worker()
    f.hold(w, "r1", unacked=MOVED)
    f.hold(w, "r2", unacked=UNKNOWN)
    f.die()
    assert f.sweeper().sweep() == {}
    assert f.resent == [] and f.broker.restored == []
    assert f.store.watch_dead(LEASE) == []  # handled: nothing left to look at


def test_a_stopping_worker_is_restored_but_never_resent():
    f = Fleet()
    w = f.worker()
    restored_id, _ = f.hold(w, "r1")
    f.hold(w, "r2", unacked=None)   # kombu put it back at shutdown: sending it again would double it
    f.store.watch_beat(w, BROKER, float("inf"))
    f.die()
    assert f.sweeper().sweep() == {"callbacks_restored": 1}
    assert f.broker.restored == [restored_id] and f.resent == []


def test_holds_from_before_a_consumer_restart_are_not_resent():
    f = Fleet()
    w = f.worker()
    f.hold(w, "r1", unacked=None)
    f.clock.t += 1
    f.store.watch_beat(w, BROKER, f.clock())  # the fence: its consumer reconnected
    f.hold(w, "r2", unacked=None)
    f.die()
    assert f.sweeper().sweep() == {"callbacks_resent": 1}
    assert f.resent == [("r2", "ready", 0)]


def test_a_hold_older_than_the_visibility_timeout_is_kombus_business():
    f = Fleet()
    f.broker.visibility_timeout = 600
    w = f.worker()
    f.hold(w, "r1", unacked=None)
    f.die(560)  # + the lease below: past visibility_timeout - lease
    f.store.watch_beat(w, BROKER, 0.0)
    f.die()
    assert f.sweeper().sweep() == {}
    assert f.resent == []


def test_workers_on_another_broker_are_left_to_that_brokers_sweepers():
    f = Fleet()
    w = f.worker(broker="other-broker")
    task_id, _ = f.hold(w, "r1")
    f.die()
    assert f.sweeper().sweep() == {}
    assert task_id in f.store.watch_holds(w)
    other = Broker("other-broker")
    other.unacked = f.broker.unacked
    assert f.sweeper(other).sweep() == {"callbacks_restored": 1}
    assert other.restored == [task_id]


def test_a_restore_that_fails_keeps_the_hold_for_the_next_sweep():
    f = Fleet()
    w = f.worker()
    task_id, _ = f.hold(w, "r1")

    class Down(Broker):
        def restore(self, *args):
            raise ConnectionError("broker away")

    f.die()
    assert f.sweeper(Down()).sweep() == {}
    assert task_id in f.store.watch_holds(w)
    assert f.sweeper().sweep() == {"callbacks_restored": 1}


def test_registrations_and_holds_expire_after_the_retention():
    f = Fleet()
    f.store.retention = 3600.0
    w = f.worker()
    f.hold(w, "r1")
    f.die(3601)
    assert f.store.watch_holds(w) == {}
    assert f.store.watch_dead(LEASE) == [(w, "", None)]  # registration gone: nothing to act on
    assert f.sweeper().sweep() == {}
    assert f.store.watch_dead(LEASE) == []  # and the worker is forgotten


def test_the_received_handler_records_only_our_callbacks_and_tells_the_child():
    f = Fleet()
    ours = SimpleNamespace(id="r1-ready-0", request_dict={CALLBACK_HEADER: "r1|ready|0"},
                           message=SimpleNamespace(delivery_tag="t1"), task=Once())
    other = SimpleNamespace(id="x", request_dict={}, message=SimpleNamespace(delivery_tag="t2"), task=Plain())
    assert callback_watch.record_received(f.store, "w1", ours, 123.0)
    assert not callback_watch.record_received(f.store, "w1", other, 123.0)
    assert ours.request_dict[HOLD_KEY] == "w1|t1" and HOLD_KEY not in other.request_dict
    assert Hold.decode(f.store.watch_holds("w1")["r1-ready-0"]) == Hold("t1", True, 123.0, "r1", "ready", 0)


def test_a_worker_judges_others_only_after_its_own_beats_landed_for_a_lease():
    # After an outage of the state Redis every worker's last beat is old; none is dead.
    worker = callback_watch._Worker(None, "host", SimpleNamespace(lease=LEASE), None, None)
    assert not worker.may_sweep()
    now = time.monotonic()
    worker.beats.since, worker.beats.last = now - LEASE / 2, now
    assert not worker.may_sweep()
    worker.beats.since = now - LEASE
    assert worker.may_sweep()
    worker.beats.last = now - LEASE  # its beats stopped landing since
    assert not worker.may_sweep()


def test_request_ids_with_separators_survive_the_hold_encoding():
    hold = Hold("tag", False, 5.5, "odd|id-with|bars", "error", 3)
    assert Hold.decode(hold.encode()) == hold
    assert Hold.decode("garbage") is None


# -- the store methods, on both stores ---------------------------------------------------------

@pytest.fixture(params=["memory", "redis"])
def watch_store(request):
    if request.param == "memory":
        clock = Clock()
        yield MemoryStore(clock=clock), lambda s: setattr(clock, "t", clock.t + s)
        return
    try:
        server = LocalRedis().start()
    except RedisNotAvailable as exc:
        pytest.skip(str(exc))
    client = redis.Redis.from_url(server.url)
    try:
        yield RedisStore(client, prefix=f"w{uuid.uuid4().hex[:8]}"), time.sleep
    finally:
        client.close()
        server.close()


def test_store_watch_methods_agree(watch_store):
    store, wait = watch_store
    assert store.watch_beat("a", "b1", 0.0) is False  # registered by this beat
    assert store.watch_beat("a", "b1", 0.0) is True
    store.watch_beat("b", "b1", 7.5)
    store.watch_hold("a", "t1", "tag1|0|1.0|r|ready|0")
    store.watch_hold("a", "t2", "tag2|1|1.0|r|ready|1")
    assert store.watch_dead(0.5) == []
    wait(0.6)
    store.watch_beat("a", "b1", float("inf"))
    assert store.watch_dead(0.5) == [("b", "b1", 7.5)]
    assert store.watch_holds("a") == {"t1": "tag1|0|1.0|r|ready|0", "t2": "tag2|1|1.0|r|ready|1"}
    assert not store.watch_release("a", "t1", "tag")      # a prefix of the tag is not the tag
    assert store.watch_release("a", "t1", "tag1")
    assert not store.watch_release("a", "t1", "tag1")     # only one caller gets it
    assert not store.watch_forget("a", 0.5)               # alive
    assert store.watch_forget("b", 0.5)
    assert store.watch_dead(0.0) in ([("a", "b1", float("inf"))],)
    assert store.watch_forget("a")                        # unconditional: clean shutdown
    assert store.watch_holds("a") == {} and store.watch_dead(0.0) == []


# -- a real worker SIGKILLed while it holds a prefetched callback -----------------------------

APP_MODULE = '''
import json, os, time

import redis
from celery import Celery

import subtitle_tasks

app = Celery("cbwatch_app", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(task_default_queue=os.environ["CBWATCH_QUEUE"], task_serializer="json", accept_content=["json"],
                worker_prefetch_multiplier=4, task_ignore_result=True)
_redis = None


def log(event, task_id, tag):
    global _redis
    _redis = _redis or redis.Redis.from_url(os.environ["SUBTITLE_TASKS_REDIS_URL"])
    _redis.rpush(os.environ["SUBTITLE_TASKS_KEY_PREFIX"] + ":cbwatch", json.dumps(
        {"event": event, "task_id": task_id, "tag": tag, "pid": os.getpid(), "at": time.time()}))


@app.task(name="cbwatch.slow", bind=True)
def slow(self, payload, tag, seconds):
    log("start", self.request.id, tag)
    time.sleep(seconds)
    log("end", self.request.id, tag)


@app.task(name="cbwatch.slow_once", bind=True, base=subtitle_tasks.OnceTask)
def slow_once(self, payload, tag, seconds):
    log("start", self.request.id, tag)
    first = redis.Redis.from_url(os.environ["SUBTITLE_TASKS_REDIS_URL"]).incr(
        os.environ["SUBTITLE_TASKS_KEY_PREFIX"] + ":cbwatch:runs:" + self.request.id) == 1
    time.sleep(seconds if first else 0.1)
    log("end", self.request.id, tag)


@app.task(name="cbwatch.record", bind=True)
def record(self, payload, tag):
    log("run", self.request.id, tag)


subtitle_tasks.init_app(app)
'''


class AppFleet:
    """Real `celery worker` processes of an app of our own (APP_MODULE) that called init_app,
    a web-side app that decides and notifies requests, and what the callbacks logged."""

    def __init__(self, harness_factory, tmp_path, lease: float):
        from celery import Celery

        import subtitle_tasks
        from subtitle_tasks.callbacks import Notifier
        from tests.support.harness import ROOT

        self.lease = lease
        (tmp_path / "cbwatch_app.py").write_text(textwrap.dedent(APP_MODULE))
        self.queue = f"cbw-{uuid.uuid4().hex[:8]}"
        self.h = h = harness_factory(SUBTITLE_TASKS_LEASE=str(lease), SUBTITLE_TASKS_HTTP_TIMEOUT="0.5",
                                     CBWATCH_QUEUE=self.queue, SUBTITLE_TASKS_CALLBACK_QUEUE=self.queue,
                                     PYTHONPATH=f"{tmp_path}:{ROOT}")
        self.store = RedisStore(h.redis, prefix=h.prefix)
        web = Celery("web", broker=h.redis_url, set_as_current=False)
        subtitle_tasks.init_app(web, redis_url=h.redis_url, broker_url=h.redis_url, key_prefix=h.prefix,
                                queue=h.env["SUBTITLE_TASKS_QUEUE"])
        self.notifier = Notifier(self.store, web, lock_ttl=5.0, default_queue=self.queue)

    def worker(self, concurrency: int = 2):
        return self.h.worker(app="cbwatch_app", concurrency=concurrency, extra=["-Q", self.queue])

    def events(self, event: str | None = None) -> list[dict]:
        rows = [json.loads(r) for r in self.h.redis.lrange(f"{self.h.prefix}:cbwatch", 0, -1)]
        return [r for r in rows if event is None or r["event"] == event]

    def task_ids(self, event: str) -> list[str]:
        return [r["task_id"] for r in self.events(event)]

    def wait_for(self, predicate, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        logs = "\n".join(w.log()[-4000:] for w in self.h.workers)
        raise AssertionError(f"timed out waiting for {what}; events={self.events()}\n{logs}")

    def workers(self) -> set[str]:
        return {m.decode() for m in self.h.redis.zrange(f"{self.h.prefix}:cbworkers", 0, -1)}

    def send(self, tag: str, task: str, *args) -> str:
        """A request decided as ready whose on_ready is ``task``, notified for real; its callback's id."""
        from celery.canvas import signature

        from subtitle_tasks.callbacks import normalize

        rid = f"{tag}-{uuid.uuid4().hex[:6]}"
        gid = self.store.create_request(request_id=rid, generation_id=f"g-{rid}", upload_id=f"u-{rid}",
                                        language_code="it", name=None, environment=None,
                                        on_ready=normalize("on_ready", signature(task, args=(tag, *args))),
                                        on_error=[], ttl=600).generation_id
        assert self.store.finish(gid, "ready", {"track_id": "t1"}) == [rid]
        assert self.notifier.notify(rid) == "ready"
        return callback_task_id(rid, "ready", 0)


def test_a_callback_prefetched_by_a_sigkilled_worker_runs_once_within_a_lease(harness_factory, tmp_path):
    f = AppFleet(harness_factory, tmp_path, lease=2.0)
    lease = f.lease
    first = f.worker()
    [first_id] = f.wait_for(f.workers, 20, "the first worker's heartbeat")
    plain_id = f.send("plain", "cbwatch.slow", 60)
    once_id = f.send("once", "cbwatch.slow_once", 60)
    f.wait_for(lambda: len(f.events("start")) == 2, 20, "both slow callbacks to start")
    held_id = f.send("held", "cbwatch.record")   # both pool processes are busy: it waits in the prefetch buffer
    f.wait_for(lambda: set(f.store.watch_holds(first_id)) == {once_id, held_id}, 10,
               "the hold on the prefetched one (the started plain one released)")
    assert f.h.redis.hlen("unacked") >= 1

    second = f.worker()
    f.wait_for(lambda: len(f.workers()) == 2, 20, "the second worker's heartbeat")
    time.sleep(0.5)  # let its consumer attach to the queue
    first.kill()
    killed_at = time.monotonic()

    f.wait_for(lambda: f.events("run"), 6 * lease, "the held callback to run")
    elapsed = time.monotonic() - killed_at
    f.wait_for(lambda: len(f.events("end")) == 1, 6 * lease, "the OnceTask to be sent again and finish")
    time.sleep(2 * lease)  # room for a duplicate to show

    print(f"\nheld callback ran {elapsed:.2f}s after the kill (lease {lease}s)")
    assert "put back" in second.log()
    runs = f.events("run")
    assert [r["task_id"] for r in runs] == [held_id]
    assert runs[0]["pid"] not in {r["pid"] for r in f.events("start")[:2]}  # ran on the fresh worker
    assert elapsed < 3 * lease, elapsed
    # The plain callback had started: not sent again. The OnceTask had started too and
    # died mid-run: sent again, and it ran to its end once.
    assert f.task_ids("start").count(plain_id) == 1
    assert f.task_ids("start").count(once_id) == 2
    assert f.task_ids("end") == [once_id]
    assert first_id not in f.workers()  # the dead worker is forgotten
    second.stop()


def test_a_warm_shutdown_with_a_prefetched_callback_sends_nothing_twice(harness_factory, tmp_path):
    f = AppFleet(harness_factory, tmp_path, lease=2.0)
    first = f.worker(concurrency=1)
    [first_id] = f.wait_for(f.workers, 20, "the first worker's heartbeat")
    f.send("busy", "cbwatch.slow", 1.5)
    f.wait_for(lambda: f.events("start"), 20, "the slow callback to start")
    held_id = f.send("held", "cbwatch.record")
    f.wait_for(lambda: held_id in f.store.watch_holds(first_id), 10, "the hold on the prefetched one")
    second = f.worker(concurrency=1)
    f.wait_for(lambda: len(f.workers()) == 2, 20, "the second worker's heartbeat")
    first.stop()  # SIGTERM: kombu puts the prefetched message back itself
    f.wait_for(lambda: f.events("run"), 20, "the held callback to run")
    f.wait_for(lambda: first_id not in f.workers(), 6 * f.lease, "the stopped worker to be swept")
    time.sleep(f.lease)
    assert f.task_ids("run") == [held_id]
    assert f.task_ids("end") == f.task_ids("start")  # the slow one finished during the warm shutdown
    second.stop()
