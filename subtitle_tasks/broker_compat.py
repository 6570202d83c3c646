"""A narrow workaround that keeps a worker alive when its Redis broker restarts.

With kombu 5.x's Redis transport, a worker that loses its broker connection while it
holds delivered-but-unacknowledged messages dies with "Unrecoverable error:
AttributeError: 'NoneType' object has no attribute 'hostname'": Celery first
*collects* the broken connection (which drops the transport's client) and then
*closes* it, and closing tries to put the unacknowledged messages back, which needs
that client again (same family as kombu#582, celery#4652). Celery only ignores
connection errors there, so we turn this one case into the redis ConnectionError
kombu already treats as "connection gone". The messages stay in kombu's unacked hash
and are restored after the visibility timeout; this package's own steps come back
sooner, after one lease. tests/test_resilience.py::test_redis_restart_mid_run is the
proof that it is still needed and still enough.
"""

from __future__ import annotations

_MARK = "_subtitle_tasks_guarded"


def guard_redis_channel_after_collect() -> bool:
    """Install the guard (idempotent). Returns True when it was installed now."""
    from kombu.transport import redis as kombu_redis

    original = kombu_redis.Channel._connparams
    if getattr(original, _MARK, False):
        return False

    def _connparams(self, asynchronous=False):
        if getattr(self.connection, "client", None) is None:
            raise kombu_redis.get_redis_ConnectionError()("broker connection was already collected")
        return original(self, asynchronous)

    setattr(_connparams, _MARK, True)
    _connparams.__wrapped__ = original
    kombu_redis.Channel._connparams = _connparams
    return True
