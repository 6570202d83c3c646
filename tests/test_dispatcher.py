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
