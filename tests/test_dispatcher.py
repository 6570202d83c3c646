"""The dispatcher's backpressure: pure with the in-memory store, then the queue depth on real brokers."""

from __future__ import annotations

import time
import uuid

import pytest
from celery import Celery

from subtitle_tasks.dispatcher import Dispatcher, celery_backlog, celery_publisher
from subtitle_tasks.state import MemoryStore
from tests.support.rabbitmq import require_rabbitmq


def _store_with_due(n: int) -> MemoryStore:
    store = MemoryStore(clock=lambda: 1000.0)
    for i in range(n):
        store.create_request(request_id=f"r{i}", generation_id=f"g{i}", upload_id=f"u{i}", language_code="en",
                             name=None, environment=None, on_ready=[], on_error=[], ttl=600)
    return store


class Queue:
    """A step queue as the dispatcher sees it: publishes add, workers take."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []

    def publish(self, claimed):
        self.messages += claimed

    def depth(self) -> int:
        return len(self.messages)


def test_no_backlog_reader_means_the_batch_is_the_only_cap():
    store, queue = _store_with_due(30), Queue()
    dispatcher = Dispatcher(store, queue.publish, lease=30, batch=10)
    assert dispatcher.dispatch_once() == 10
    assert dispatcher.dispatch_once() == 10


def test_a_full_queue_stops_claims_and_the_steps_stay_due():
    store, queue = _store_with_due(30), Queue()
    dispatcher = Dispatcher(store, queue.publish, lease=30, batch=10, backlog=queue.depth, max_backlog=15)
    assert dispatcher.dispatch_once() == 10
    assert dispatcher.dispatch_once() == 5    # only the room that was left
    assert dispatcher.dispatch_once() == 0    # full: nothing claimed, so no lease starts running
    assert store.counts()["scheduled"] == 30  # every generation still on the schedule
    del queue.messages[:12]                   # workers catch up
    assert dispatcher.dispatch_once() == 10
    assert dispatcher.dispatch_once() == 2
    assert sorted(g for g, _ in queue.messages) == sorted({g for g, _ in queue.messages})  # no duplicates


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _waiting(store: MemoryStore, site: str, n: int) -> list[str]:
    return [store.create_request(request_id=f"r-{site}{i}", generation_id=f"g-{site}{i:04d}", upload_id=f"{site}{i}",
                                 language_code="en", name=None, environment=None, on_ready=[], on_error=[], ttl=600,
                                 site=site).generation_id for i in range(n)]


def test_a_quiet_sites_request_goes_out_at_the_next_dispatch_behind_another_sites_backlog():
    clock, queue = Clock(), Queue()
    store = MemoryStore(clock=clock)
    _waiting(store, "busy", 500)
    dispatcher = Dispatcher(store, queue.publish, lease=30, batch=100, pace=10, window=3.0,
                            backlog=queue.depth, max_backlog=100)
    assert dispatcher.dispatch_once() == 10  # the busy site's whole window
    quiet = _waiting(store, "quiet", 1)
    clock.t += 1.0
    assert dispatcher.dispatch_once() == 1
    assert queue.messages[-1] == (quiet[0], "submit")


def test_the_step_queue_holds_at_most_one_window_of_each_sites_steps():
    clock, queue = Clock(), Queue()  # nobody consumes
    store = MemoryStore(clock=clock)
    a, b = set(_waiting(store, "a", 200)), set(_waiting(store, "b", 200))
    dispatcher = Dispatcher(store, queue.publish, lease=30, batch=500, pace=10, window=3.0,
                            backlog=queue.depth, max_backlog=500)
    for _ in range(3):  # three dispatch intervals inside one window
        dispatcher.dispatch_once()
        clock.t += 1.0
    queued = [gid for gid, _ in queue.messages]
    assert (len(a.intersection(queued)), len(b.intersection(queued))) == (10, 10)
    dispatcher.dispatch_once()  # the next window
    assert len(queue.messages) == 40


def test_a_failing_backlog_reader_fails_the_dispatch_without_claiming():
    store = _store_with_due(3)

    def broker_away() -> int:
        raise ConnectionError("broker away")

    dispatcher = Dispatcher(store, lambda claimed: None, lease=30, batch=10, backlog=broker_away, max_backlog=5)
    with pytest.raises(ConnectionError):
        dispatcher.dispatch_once()
    assert len(store.claim_due(30, 10)) == 3  # nothing was leased by the failed look


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_celery_backlog_counts_step_messages_on_a_real_broker(redis_server, kind):
    url = redis_server.url if kind == "redis" else require_rabbitmq()
    queue = f"steps-{uuid.uuid4().hex[:8]}"
    app = Celery("backlog-test", broker=url, set_as_current=False)
    try:
        depth = celery_backlog(app, queue)
        assert depth() == 0  # a queue nobody declared yet
        celery_publisher(app, queue, lease=30)([(f"g{i}", "job") for i in range(7)])
        # RabbitMQ routes publishes asynchronously: the count catches up within moments.
        deadline = time.monotonic() + 10
        while depth() < 7 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert depth() == 7
        with app.connection_for_write() as conn:
            conn.default_channel.queue_purge(queue)
        assert depth() == 0
    finally:
        with app.connection_for_write() as conn:
            conn.default_channel.queue_delete(queue)
        app.close()
