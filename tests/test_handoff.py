"""Callbacks reach a Redis broker in the transaction that settles the request (handoff.py).

Real Redis servers, real kombu routing, and a real worker consuming what settle queued.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
import redis
from celery import Celery

from subtitle_tasks.callbacks import Notifier
from subtitle_tasks.handoff import Handoff, handoff
from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.state import FINISHING, BrokerWrites, OUTCOME_ERROR, OUTCOME_READY, READY, RedisStore


def _db_url(url: str, db: int) -> str:
    return url.rsplit("/", 1)[0] + f"/{db}"


def _finishing_request(store: RedisStore, on_ready=(), on_error=(), outcome=OUTCOME_READY) -> str:
    rid, gid = f"r{uuid.uuid4().hex[:8]}", f"g{uuid.uuid4().hex[:8]}"
    store.create_request(request_id=rid, generation_id=gid, upload_id=f"u{rid}", language_code="en", name=None,
                         environment=None, on_ready=list(on_ready), on_error=list(on_error), ttl=600)
    result = {"id": "track-1"} if outcome == OUTCOME_READY else {"code": "track_errored", "message": "boom"}
    assert store.finish(gid, outcome, result) == [rid]
    return rid


def _messages(client: redis.Redis, key: str) -> list[dict]:
    out = []
    for raw in client.lrange(key, 0, -1):
        message = json.loads(raw)
        message["args"] = json.loads(base64.b64decode(message["body"]))[0]
        out.append(message)
    return out


@pytest.fixture
def setup(redis_server):
    """A Celery app whose Redis broker is db 0 of the test server, and a store on ``db``."""
    made = []

    def make(db: int = 0, broker_url: str | None = None, **conf):
        queue = f"cb-{uuid.uuid4().hex[:8]}"
        app = Celery("handoff-test", broker=broker_url or _db_url(redis_server.url, 0), set_as_current=False)
        app.conf.task_default_queue = queue
        app.conf.update(conf)
        client = redis.Redis.from_url(_db_url(redis_server.url, db))
        store = RedisStore(client, prefix=f"t{uuid.uuid4().hex[:8]}")
        made.append((app, client))
        return app, store, queue

    yield make
    for app, client in made:
        app.close()
        client.close()


@pytest.mark.parametrize("db", [0, 5], ids=["same-db", "other-db"])
def test_settle_queues_the_callbacks_it_settles(setup, redis_server, db):
    app, store, queue = setup(db=db)
    broker = redis.Redis.from_url(_db_url(redis_server.url, 0))
    sig = app.signature("tests.record", args=("ready", "t1"))
    rid = _finishing_request(store, on_ready=[dict(sig), dict(sig)])

    assert Notifier(store, app, lock_ttl=10).notify(rid) == READY

    messages = _messages(broker, queue)
    assert sorted(m["headers"]["id"] for m in messages) == [f"{rid}-ready-0", f"{rid}-ready-1"]
    assert all(m["headers"]["task"] == "tests.record" for m in messages)
    assert messages[0]["args"] == [{"id": "track-1"}, "ready", "t1"]
    assert store.load_request(rid).state == READY
    # A second notifier (a recovering sweeper, a redelivered notify) finds it settled: nothing more is queued.
    assert Notifier(store, app, lock_ttl=10).notify(rid) == "already-settled"
    assert broker.llen(queue) == 2


def test_a_notifier_dying_before_settle_has_queued_nothing(setup, redis_server, monkeypatch):
    """The crash window of publish-then-settle does not exist: capturing sends nothing."""
    app, store, queue = setup()
    broker = redis.Redis.from_url(redis_server.url)
    rid = _finishing_request(store, on_error=[dict(app.signature("tests.record", args=("error", "t2")))],
                             outcome=OUTCOME_ERROR)

    class Killed(BaseException):
        pass

    def die(*args, **kwargs):
        raise Killed  # the process is gone between building the messages and the transaction

    monkeypatch.setattr(store, "settle", die)
    with pytest.raises(Killed):
        Notifier(store, app, lock_ttl=0.05).notify(rid)
    monkeypatch.undo()
    assert broker.llen(queue) == 0
    assert store.load_request(rid).state == FINISHING
    assert rid in store.claim_finishing(stale=0, limit=10)  # recovery would find it

    assert Notifier(store, app, lock_ttl=10).notify(rid) == "failed"
    [message] = _messages(broker, queue)
    assert message["headers"]["id"] == f"{rid}-error-0"
    assert message["args"][0]["code"] == "track_errored"


def test_a_broken_broker_key_fails_settle_before_anything_is_written(setup, redis_server):
    """Redis does not undo a script that fails halfway: settle checks every write first."""
    app, store, queue = setup()
    broker = redis.Redis.from_url(redis_server.url)
    broker.set(f"{queue}-broken", "not a list")  # some other program wrote over a queue's key
    rid = _finishing_request(store, on_ready=[dict(app.signature("tests.record", args=("ready", "t3")))])
    writes = BrokerWrites(db=0, commands=(("lpush", queue, "m1"), ("lpush", f"{queue}-broken", "m2")))

    with pytest.raises(redis.ResponseError, match="not a queue"):
        store.settle(rid, READY, writes)
    with pytest.raises(redis.ResponseError, match="unsupported broker write"):
        store.settle(rid, READY, BrokerWrites(db=0, commands=(("lpush", queue, "m1"), ("del", queue, ""))))
    assert broker.llen(queue) == 0
    assert store.load_request(rid).state == FINISHING
    assert rid in store.claim_finishing(stale=0, limit=10)  # recovery still finds it

    assert store.settle(rid, READY, BrokerWrites(db=0, commands=(("lpush", queue, "m1"),))) is True
    assert broker.lrange(queue, 0, -1) == [b"m1"]


def test_priority_and_global_key_prefix_follow_kombu(setup, redis_server):
    app, store, queue = setup(broker_transport_options={"global_keyprefix": "fleet1:"})
    broker = redis.Redis.from_url(redis_server.url)
    sig = app.signature("tests.record", args=("ready", "t4"), priority=5)
    rid = _finishing_request(store, on_ready=[dict(sig)])

    assert Notifier(store, app, lock_ttl=10).notify(rid) == READY
    # kombu's Redis transport keeps priority 5 in the "3" step list, under the global prefix.
    [message] = _messages(broker, f"fleet1:{queue}\x06\x163")
    assert message["headers"]["id"] == f"{rid}-ready-0"
    assert broker.llen(queue) == 0


def test_a_broker_on_another_server_is_published_then_settled(setup):
    with LocalRedis() as other:
        app, store, queue = setup(broker_url=other.url)
        with app.producer_or_acquire() as producer:
            assert Handoff().broker_db(producer, store) is None
        rid = _finishing_request(store, on_ready=[dict(app.signature("tests.record", args=("ready", "t5")))])
        assert Notifier(store, app, lock_ttl=10).notify(rid) == READY
        other_client = redis.Redis.from_url(other.url)
        [message] = _messages(other_client, queue)
        assert message["headers"]["id"] == f"{rid}-ready-0"
        other_client.close()
        app.close()


def test_the_decision_is_made_once_per_broker_and_store(setup):
    app, store, _ = setup(db=3)
    with app.producer_or_acquire() as producer:
        assert handoff.broker_db(producer, store) == 0
        calls = []
        original = store.client.info
        store.client.info = lambda *a, **k: calls.append(a) or original(*a, **k)
        assert handoff.broker_db(producer, store) == 0
        assert calls == []


def test_a_real_worker_runs_what_settle_queued_once(harness):
    """End to end on the harness's pipeline: settle queues, a real worker consumes."""
    app = harness.app()
    store = RedisStore(redis.Redis.from_url(harness.redis_url), prefix=harness.prefix)
    queue = harness.env["SUBTITLE_TASKS_QUEUE"]
    sig = app.signature("tests.record", args=("ready", "w1"), queue=queue, priority=7)
    rid = _finishing_request(store, on_ready=[dict(sig)])
    assert Notifier(store, app, lock_ttl=10).notify(rid) == READY

    harness.worker()
    [call] = harness.wait_for_calls(1, timeout=60, settle=2.0)
    assert call["task_id"] == f"{rid}-ready-0"
    assert call["payload"] == {"id": "track-1"}
    store.client.close()
