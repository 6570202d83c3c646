"""A callback that cannot be handed to the broker ends: bounded attempts, then the request
settles with the callback recorded as undelivered, and siblings already sent are not
sent again. Real Redis servers and real kombu routing; failures injected where noted.
"""

from __future__ import annotations

import uuid

import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError

from subtitle_tasks.callbacks import Notifier
from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.recovery import Recovery
from subtitle_tasks.state import FINISHING, READY, BrokerWrites, RedisStore
from tests.test_handoff import _db_url, _finishing_request, _messages

ATTEMPTS = 3


@pytest.fixture
def broker_app(redis_server):
    apps = []

    def make(url: str) -> tuple[Celery, str]:
        queue = f"cb-{uuid.uuid4().hex[:8]}"
        app = Celery("poison-test", broker=url, set_as_current=False)
        app.conf.task_default_queue = queue
        apps.append(app)
        return app, queue

    yield make
    for app in apps:
        app.close()


def _store(url: str) -> RedisStore:
    return RedisStore(redis.Redis.from_url(url), prefix=f"t{uuid.uuid4().hex[:8]}")


def test_transactional_path_gives_a_poison_callback_up_after_bounded_attempts(redis_server, broker_app):
    app, queue = broker_app(_db_url(redis_server.url, 0))
    store = _store(_db_url(redis_server.url, 0))
    broker = redis.Redis.from_url(_db_url(redis_server.url, 0))
    poisoned = f"poison-{uuid.uuid4().hex[:8]}"
    broker.hset(poisoned, "not", "a queue")  # something else's key where the callback routes
    good = dict(app.signature("tests.record", args=("ready", "good")))
    bad = dict(app.signature("tests.record", args=("ready", "bad"), queue=poisoned))
    rid = _finishing_request(store, on_ready=[good, bad])
    notifier = Notifier(store, app, lock_ttl=10, attempts=ATTEMPTS)
    recovery = Recovery(store, notifier.notify, stale=0)

    for attempt in range(1, ATTEMPTS):
        assert recovery.sweep(repair=False) == {"repaired": 0, "renotified": 0}
        request = store.load_request(rid)
        assert request.state == FINISHING and request.notify_failures == attempt
        assert broker.llen(queue) == 0  # all or nothing: the good sibling is not sent alone

    assert recovery.sweep(repair=False)["renotified"] == 1
    request = store.load_request(rid)
    assert request.state == READY
    [entry] = request.undelivered
    assert entry["index"] == 1 and "WRONGTYPE" in entry["reason"]
    [message] = _messages(broker, queue)
    assert message["headers"]["id"] == f"{rid}-ready-0"
    assert broker.type(poisoned) == b"hash" and broker.hlen(poisoned) == 1  # untouched
    assert recovery.sweep(repair=False)["renotified"] == 0  # nothing left to retry
    broker.delete(poisoned)


def test_publish_then_settle_never_resends_a_sibling_already_sent(redis_server, broker_app, monkeypatch):
    with LocalRedis() as other:  # the broker on another server: no shared transaction
        app, queue = broker_app(other.url)
        store = _store(redis_server.url)
        broker = redis.Redis.from_url(other.url)
        sigs = [dict(app.signature("tests.record", args=("ready", f"t{i}"))) for i in range(3)]
        rid = _finishing_request(store, on_ready=sigs)
        notifier = Notifier(store, app, lock_ttl=10, attempts=ATTEMPTS)
        real_publish = Notifier._publish_one

        def publish_one(self, producer, request_id, kind, index, *args, **kwargs):
            if index == 1:  # injected: this one cannot be published
                raise ValueError("broker refused callback 1")
            return real_publish(self, producer, request_id, kind, index, *args, **kwargs)

        monkeypatch.setattr(Notifier, "_publish_one", publish_one)
        assert notifier.notify(rid) == "deferred"
        assert store.load_request(rid).sent == 1
        assert notifier.notify(rid) == "deferred"
        assert notifier.notify(rid) == READY

        ids = sorted(m["headers"]["id"] for m in _messages(broker, queue))
        assert ids == [f"{rid}-ready-0", f"{rid}-ready-2"]  # 0 once, despite three attempts
        request = store.load_request(rid)
        assert request.state == READY and [e["index"] for e in request.undelivered] == [1]
        assert "broker refused callback 1" in request.undelivered[0]["reason"]
        broker.close()


def test_an_outage_is_not_counted_against_the_callback(redis_server, broker_app, monkeypatch):
    app, _ = broker_app(_db_url(redis_server.url, 0))
    store = _store(_db_url(redis_server.url, 0))
    rid = _finishing_request(store, on_ready=[dict(app.signature("tests.record", args=("ready", "t")))])

    def broker_down(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(Notifier, "_publish_one", broker_down)
    notifier = Notifier(store, app, lock_ttl=10, attempts=1)  # one counted failure would give up
    for _ in range(3):
        assert notifier.notify(rid) == "deferred"
    request = store.load_request(rid)
    assert request.state == FINISHING and request.notify_failures == 0 and request.undelivered == ()


def test_settle_refuses_writes_to_reserved_keys_and_leaves_everything_as_it_was(redis_server):
    """The script is the last line: even writes that skipped the edge cannot hit our keys."""
    store = _store(_db_url(redis_server.url, 0))
    client = store.client
    rid = _finishing_request(store, on_ready=[{"task": "x"}])
    for key in (f"{store.prefix}:due", "unacked", "_kombu.binding.celery", f"{store.prefix}:dispatched"):
        before = {k: client.dump(k) for k in client.scan_iter(f"{store.prefix}*")}
        size = client.dbsize()
        with pytest.raises(redis.exceptions.ResponseError, match="reserved"):
            store.settle(rid, READY, [BrokerWrites(db=0, commands=(("lpush", key, "m"),), index=0)])
        assert client.dbsize() == size
        assert {k: client.dump(k) for k in client.scan_iter(f"{store.prefix}*")} == before
        assert store.load_request(rid).state == FINISHING
    # On the last attempt the same write is left out and recorded, and the request settles.
    assert store.settle(rid, READY, [BrokerWrites(db=0, commands=(("lpush", "unacked", "m"),), index=0)],
                        give_up=True)
    assert store.load_request(rid).undelivered[0]["index"] == 0
    assert not client.exists("unacked") or client.type("unacked") != b"list"
