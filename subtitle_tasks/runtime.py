"""Runtimes: settings with the state store and DatoCMS client built from them.

Each Celery app that ``init_app`` wired has its own runtime, kept beside the app (as
celery-redbeat keeps its configuration on the app), so two apps with different
settings work side by side in one process. A process that wired no app (a web
process that only enqueues, a script) uses its *default* runtime, resolved from the
environment once; ``init_app`` never changes it. Which one a call uses:
:func:`runtime_for`.

Connections are built lazily on first use and dropped in a forked child, because
sockets (Redis, the HTTP pool) must never be shared between a prefork parent and its
children. Web processes only ever touch ``settings`` and ``store``; the token is read
only where a DatoCMS client is built, i.e. in workers.
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from .metrics import Recorder
from .planner import Planner
from .settings import ConfigurationError, Settings, load_settings
from .sites import Site, SiteError
from .state.redis import RedisStore

if TYPE_CHECKING:
    from .datocms import DatoCMSClient


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
        self.sites = settings.site_registry()
        self._lock = threading.RLock()  # client_for builds the store under it
        self._store: RedisStore | None = None
        self._consumer_store: RedisStore | None = None
        self._clients: dict[str, DatoCMSClient] = {}
        # What poll planning keeps between steps, per process (planner.py): each step
        # builds a new Pipeline, so a cache held there would never hit.
        self.planner = Planner(sites=lambda: ["", *self.sites.aliases()])

    @property
    def store(self) -> RedisStore:
        if self._store is None:
            with self._lock:
                if self._store is None:
                    url = self.settings.require_state_url()
                    self._store = RedisStore(redis_client(url), self.settings.key_prefix, self.settings.retention)
        return self._store

    @property
    def consumer_store(self) -> RedisStore:
        """The same state for a worker's consumer thread: 1 s timeouts and no retries, so a
        slow Redis delays receiving messages by a second at most (the callback and step
        watches record what a worker received through it, and skip a record rather than wait)."""
        if self._consumer_store is None:
            with self._lock:
                if self._consumer_store is None:
                    client = redis.Redis.from_url(self.settings.require_state_url(), socket_timeout=1.0,
                                                  socket_connect_timeout=1.0)
                    self._consumer_store = RedisStore(client, self.settings.key_prefix, self.settings.retention)
        return self._consumer_store

    @property
    def metrics(self) -> Recorder:
        """Counts into this runtime's store (fleet-wide, in Redis)."""
        return Recorder(self.store)

    def site(self, alias: str | None) -> Site:
        """The site named ``alias`` (None for the default one); ConfigurationError if unknown."""
        site = self.sites.get(alias)
        if site is None:
            raise ConfigurationError(f"unknown site {alias!r}; configured: {', '.join(self.sites.aliases()) or 'none'}")
        return site

    @property
    def client(self) -> DatoCMSClient:
        """The default site's DatoCMS client."""
        return self.client_for(None)

    def client_for(self, alias: str | None) -> DatoCMSClient:
        """A site's DatoCMS client, sharing that token's API quota with the fleet through Redis.

        The quota key depends on the token alone: DatoCMS counts per token, so every
        deployment and site using that token shares one budget, whatever its key prefix.
        """
        key = alias or ""
        client = self._clients.get(key)
        if client is None:
            with self._lock:
                client = self._clients.get(key)
                if client is None:
                    client = self._clients[key] = self._build_client(self.site(alias))
        return client

    def _build_client(self, site: Site) -> DatoCMSClient:
        from .datocms import DatoCMSClient
        from .rate_limits import SharedRateLimiter, key_for_token
        from .rate_limits.backends.redis import RedisBackend

        s = self.settings
        try:
            token = site.read_token()
        except SiteError as exc:
            raise ConfigurationError(str(exc)) from None
        limiter = SharedRateLimiter(
            RedisBackend(self.store.client), key_for_token(token),
            limit=s.rate_limit, window=s.rate_window, share=s.rate_share,
        )
        # One call (body included) may take two socket timeouts at most: a lease is at
        # least three, so a step with a call or two still ends inside its lease.
        return DatoCMSClient(token, base_url=site.base_url, environment=site.environment,
                             timeout=s.http_timeout, rate_limiter=limiter,
                             max_response_bytes=s.max_response_bytes, max_call_seconds=2 * s.http_timeout,
                             allow_insecure_http=s.allow_insecure_http,
                             on_answer=functools.partial(self.metrics.http_answer, site.alias))

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        if self._store is not None:
            self._store.client.close()
        self._clients, self._store = {}, None

    def _forget_connections(self) -> None:
        # In a forked child: the parent's sockets are not ours to close, and its lock may
        # have been held by a thread that does not exist here.
        self._lock = threading.RLock()
        self._clients, self._store = {}, None


_default: Runtime | None = None
_default_lock = threading.Lock()
# app -> its runtime; weak, so a discarded app takes its runtime with it.
_by_app: weakref.WeakKeyDictionary[Any, Runtime] = weakref.WeakKeyDictionary()


def get_runtime() -> Runtime:
    """This process's default runtime (settings from the environment), built once."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Runtime(load_settings())
    return _default


def configure(settings: Settings) -> Runtime:
    """Replace this process's default runtime (tests, tools); apps keep their own."""
    global _default
    with _default_lock:
        old, _default = _default, Runtime(settings)
    if old is not None:
        old.close()
    return _default


def attach(app: Any, settings: Settings) -> Runtime:
    """Give ``app`` a runtime of its own (init_app); replaces one it had."""
    with _default_lock:
        old = _by_app.get(app)
        _by_app[app] = runtime = Runtime(settings)
    if old is not None:
        old.close()
    return runtime


def attached(app: Any) -> Runtime | None:
    return _by_app.get(app)


def runtime_for(app: Any = None) -> Runtime:
    """The runtime a call should use.

    With an app: the one init_app gave it, else the default. Without (the edge called
    from a web process): the current Celery app's if it was wired, else the default.
    So a Django or Flask project whose app is current (Celery's default) needs no
    argument, and a process with several wired apps passes ``app=``.
    """
    if app is not None:
        return _by_app.get(app) or get_runtime()
    from celery import current_app

    return _by_app.get(current_app._get_current_object()) or get_runtime()


def _forget_after_fork() -> None:
    # The child rebuilds its own connections from the same settings.
    for runtime in [_default, *_by_app.values()]:
        if runtime is not None:
            runtime._forget_connections()


os.register_at_fork(after_in_child=_forget_after_fork)
