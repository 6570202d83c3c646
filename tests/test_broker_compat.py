"""The kombu workaround in broker_compat, on the exact path a worker once died on.

Observed in this suite (Celery 5.7, kombu 5.7): Redis stopped while the worker held
unacknowledged messages; the consumer collected the connection (the transport's client
becomes None), the Redis channel had already dropped its pool, and closing the
connection tried to restore the messages -> AttributeError -> "Unrecoverable error".
These tests rebuild that state directly, because the race is rare to hit by timing.
"""

from __future__ import annotations

import pytest
from kombu import Connection
from kombu.transport import redis as kombu_redis

from subtitle_tasks.broker_compat import guard_redis_channel_after_collect


def _close_collected_connection_holding_an_unacked_message(url: str, queue: str) -> None:
    with Connection(url) as producer:
        producer.SimpleQueue(queue).put({"n": 1})
    conn = Connection(url)
    channel = conn.default_channel
    message = conn.SimpleQueue(queue, channel=channel).get(timeout=5)  # delivered, not acknowledged
    assert message.payload == {"n": 1}
    # What a broken connection leaves behind: the pool dropped, then collect() clears the client.
    channel._pool = None
    conn.transport.client = None
    conn.close()


@pytest.fixture
def unguarded():
    guard_redis_channel_after_collect()
    guarded = kombu_redis.Channel._connparams
    kombu_redis.Channel._connparams = guarded.__wrapped__
    yield
    kombu_redis.Channel._connparams = guarded


def test_without_the_guard_closing_crashes_with_attribute_error(redis_server, unguarded):
    # When this stops raising, kombu has fixed it and broker_compat can go.
    with pytest.raises(AttributeError, match="hostname"):
        _close_collected_connection_holding_an_unacked_message(redis_server.url, "compat-unguarded")


def test_with_the_guard_closing_is_clean_and_the_message_is_kept(redis_server):
    guard_redis_channel_after_collect()
    _close_collected_connection_holding_an_unacked_message(redis_server.url, "compat-guarded")
    with Connection(redis_server.url) as conn:
        client = conn.default_channel.client
        # Left in kombu's unacked hash, to be restored after the visibility timeout.
        assert client.hlen("unacked") >= 1
        client.delete("unacked", "unacked_index", "compat-guarded", "compat-unguarded")


def test_the_guard_installs_once():
    guard_redis_channel_after_collect()
    assert guard_redis_channel_after_collect() is False


# -- the version and shape gate ----------------------------------------------------------


@pytest.fixture
def stock_connparams(monkeypatch):
    """kombu's own _connparams in place (restored, guarded or not, after the test)."""
    current = kombu_redis.Channel._connparams
    stock = getattr(current, "__wrapped__", current)
    monkeypatch.setattr(kombu_redis.Channel, "_connparams", stock)
    return stock


def test_the_guard_installs_on_this_kombu(stock_connparams):
    from subtitle_tasks.broker_compat import TESTED_KOMBU, in_range, kombu_version

    assert in_range(kombu_version(), TESTED_KOMBU)
    assert guard_redis_channel_after_collect() is True
    assert kombu_redis.Channel._connparams.__wrapped__ is stock_connparams


@pytest.mark.parametrize("version", ["5.6.2", "5.8.0", "6.0.0", "unknown"])
def test_the_guard_refuses_a_kombu_outside_the_tested_range(stock_connparams, monkeypatch, caplog, version):
    import kombu

    monkeypatch.setattr(kombu, "__version__", version)
    with caplog.at_level("WARNING", logger="subtitle_tasks.broker_compat"):
        assert guard_redis_channel_after_collect() is False
    assert kombu_redis.Channel._connparams is stock_connparams
    assert "NOT installed" in caplog.text and version in caplog.text and ">=5.7,<5.8" in caplog.text


@pytest.mark.parametrize("shape", ["extra-parameter", "other-default", "keyword-only"])
def test_the_guard_refuses_a_changed_connparams(monkeypatch, caplog, shape):
    def extra(self, asynchronous=False, credential_provider=None):
        return {}

    def other_default(self, asynchronous=True):
        return {}

    def keyword_only(self, *, asynchronous=False):
        return {}

    changed = {"extra-parameter": extra, "other-default": other_default, "keyword-only": keyword_only}[shape]
    monkeypatch.setattr(kombu_redis.Channel, "_connparams", changed)
    with caplog.at_level("WARNING", logger="subtitle_tasks.broker_compat"):
        assert guard_redis_channel_after_collect() is False
    assert kombu_redis.Channel._connparams is changed
    assert "not (self, asynchronous=False)" in caplog.text
