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

from subtitle_tasks import handoff as handoff_module
from subtitle_tasks.callbacks import Notifier
from subtitle_tasks.handoff import Handoff, HandoffUnsupported, NotTransactional, capture_support, handoff
from subtitle_tasks.local_redis import LocalRedis
from subtitle_tasks.state import FINISHING, OUTCOME_ERROR, OUTCOME_READY, READY, BrokerWrites, RedisStore


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


# -- fail closed: which kombu may capture, and what happens when it may not --------------


@pytest.fixture
def fresh_support(monkeypatch):
    """capture_support() decides once per process: forget that decision around the test."""
    capture_support.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    capture_support.cache_clear()


def test_this_kombu_can_capture(fresh_support):
    from subtitle_tasks.broker_compat import in_range, kombu_version

    assert in_range(kombu_version(), handoff_module.TESTED_KOMBU)  # what pyproject.toml installs
    support = capture_support()
    assert support.supported, support.problem


@pytest.mark.parametrize("version", ["5.6.3", "5.8.0", "6.0.0", "not-a-version"])
def test_the_version_gate_refuses_kombu_outside_the_tested_range(setup, fresh_support, version):
    import kombu

    fresh_support.setattr(kombu, "__version__", version)
    support = capture_support()
    assert not support.supported
    assert version in support.problem and ">=5.7,<5.8" in support.problem

    app, store, _ = setup(db=2)  # the broker shares the state's server
    with app.producer_or_acquire() as producer:
        with pytest.raises(HandoffUnsupported, match=r"kombu >=5\.7,<5\.8 \(installed: " + version):
            Handoff().broker_db(producer, store)
        with pytest.raises(HandoffUnsupported):
            Handoff.capture(producer, 0, lambda p: None)


def test_the_decision_is_kept_and_raised_again(setup, fresh_support):
    import kombu

    fresh_support.setattr(kombu, "__version__", "5.8.1")
    app, store, _ = setup()
    decider = Handoff()
    with app.producer_or_acquire() as producer:
        for _ in range(2):
            with pytest.raises(HandoffUnsupported, match=r"5\.8\.1"):
                decider.broker_db(producer, store)


def test_a_channel_without_the_hook_refuses(setup, fresh_support):
    from kombu.transport.redis import Channel

    fresh_support.delattr(Channel, "create_publish_batch")
    assert "create_publish_batch is missing" in capture_support(Channel).problem
    app, store, queue = setup()
    with app.producer_or_acquire() as producer, pytest.raises(HandoffUnsupported, match="create_publish_batch"):
        Handoff().broker_db(producer, store)
    assert store.client.llen(queue) == 0


def test_a_channel_whose_put_ignores_the_batch_refuses():
    """kwargs still accepted but the batch ignored would publish for real: refused."""
    from kombu.transport.redis import Channel

    class Ignoring(Channel):
        def _put(self, queue, message, **kwargs):
            kwargs.pop("batch", None)
            return super()._put(queue, message)

    class Reshaped(Channel):
        def create_publish_batch(self, max_size, pipeline):
            return super().create_publish_batch(max_size)

    assert "_put ignores _publish_batch" in capture_support(Ignoring).problem
    assert "create_publish_batch has parameters" in capture_support(Reshaped).problem


def test_a_broker_elsewhere_is_published_then_settled_even_without_capture(setup, fresh_support):
    import kombu

    fresh_support.setattr(kombu, "__version__", "5.9.0")
    with LocalRedis() as other:
        app, store, _ = setup(broker_url=other.url)
        with app.producer_or_acquire() as producer:
            assert Handoff().broker_db(producer, store) is None
        app.close()


def test_an_empty_capture_raises_not_transactional(setup, redis_server):
    app, store, queue = setup()
    broker = redis.Redis.from_url(redis_server.url)
    with app.producer_or_acquire() as producer:
        db = Handoff().broker_db(producer, store)
        assert db == 0
        with pytest.raises(NotTransactional, match="recorded no message"):
            Handoff.capture(producer, db, lambda p: None)
    assert broker.llen(queue) == 0
    broker.close()


def test_an_outage_while_comparing_is_not_taken_for_separate_systems(setup, monkeypatch):
    app, store, _ = setup()
    decider = Handoff()

    def down(*args, **kwargs):
        raise redis.ConnectionError("state Redis unreachable")

    with app.producer_or_acquire() as producer:
        monkeypatch.setattr(store.client, "info", down)
        with pytest.raises(redis.ConnectionError):
            decider.broker_db(producer, store)
        monkeypatch.undo()
        assert decider.broker_db(producer, store) == 0  # decided once the server answers
