"""Per-process singletons: settings, the state store, the DatoCMS client.

Built lazily on first use and dropped in a forked child, because sockets (Redis,
the HTTP pool) must never be shared between a prefork parent and its children.
Web processes only ever touch ``settings`` and ``store``; the token is read only
where a DatoCMS client is built, i.e. in workers.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .settings import Settings, load_settings
from .state import RedisStore


def redis_client(url: str) -> redis.Redis:
    """A Redis client that rides out a restart: short timeouts, reconnect with backoff."""
    return redis.Redis.from_url(
        url,
        socket_timeout=5.0,
        socket_connect_timeout=3.0,
        health_check_interval=15,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 3),
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )


class Runtime:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._store: RedisStore | None = None
        self._client: Any = None

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    url = self.settings.require_state_url()
                    self._store = RedisStore(redis_client(url), self.settings.key_prefix, self.settings.retention)
        return self._store

    @property
    def client(self):
        """The DatoCMS client, sharing the API quota with the fleet through Redis.

        The quota key depends on the token alone: DatoCMS counts per token, so every
        deployment using that token shares one budget, whatever its key prefix.
        """
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._build_client()
        return self._client

    def _build_client(self):
        from .datocms import DatoCMSClient
        from .rate_limits import SharedRateLimiter, key_for_token
        from .rate_limits.backends.redis import RedisBackend

        s = self.settings
        token = s.require_token()
        limiter = SharedRateLimiter(
            RedisBackend(self.store.client), key_for_token(token),
            limit=s.rate_limit, window=s.rate_window,
        )
        return DatoCMSClient(token, base_url=s.base_url, environment=s.environment,
                             timeout=s.http_timeout, rate_limiter=limiter)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._store is not None:
            self._store.client.close()
        self._client = self._store = None


_current: Runtime | None = None
_current_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = Runtime(load_settings())
    return _current


def configure(settings: Settings) -> Runtime:
    """Replace this process's runtime (init_app, tests)."""
    global _current
    with _current_lock:
        old, _current = _current, Runtime(settings)
    if old is not None:
        old.close()
    return _current


def _forget_after_fork() -> None:
    # The child rebuilds its own connections from the same settings.
    global _current
    if _current is not None:
        _current = Runtime(_current.settings)


os.register_at_fork(after_in_child=_forget_after_fork)
