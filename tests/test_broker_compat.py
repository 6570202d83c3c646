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
