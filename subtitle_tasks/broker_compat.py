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

The patch wraps a private method, so it is applied only where it was tested:
kombu in ``TESTED_KOMBU`` and ``Channel._connparams`` still shaped
``(self, asynchronous=False)``. Anywhere else it is left out, with a warning: the worker
then behaves as stock kombu does. To move to a newer kombu, run
tests/test_broker_compat.py against it and widen the range.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger("subtitle_tasks.broker_compat")

_MARK = "_subtitle_tasks_guarded"

# kombu versions the guard was tested on: (inclusive lower, exclusive upper).
TESTED_KOMBU: tuple[tuple[int, ...], tuple[int, ...]] = ((5, 7), (5, 8))


def parse_version(text: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: "5.7.0rc1" -> (5, 7, 0)."""
    parts = []
    for piece in str(text).split("."):
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
        if match.end() != len(piece):
            break
    return tuple(parts)


def kombu_version() -> tuple[int, ...]:
    """The installed kombu's release, read from ``kombu.__version__`` at call time."""
    import kombu

    return parse_version(getattr(kombu, "__version__", ""))


def in_range(version: tuple[int, ...], bounds: tuple[tuple[int, ...], tuple[int, ...]]) -> bool:
    """``low <= version < high``; an unparseable (empty) version is never in range."""
    low, high = bounds
    return bool(version) and low <= version < high


def describe_range(bounds: tuple[tuple[int, ...], tuple[int, ...]]) -> str:
    low, high = bounds
    return f">={'.'.join(map(str, low))},<{'.'.join(map(str, high))}"


def _refusal(original: Callable[..., Any]) -> str | None:
    """Why the guard must not wrap ``original`` (kombu's ``_connparams``), or None."""
    import kombu

    if not in_range(kombu_version(), TESTED_KOMBU):
        return (f"kombu {getattr(kombu, '__version__', 'unknown')} is outside the tested range "
                f"{describe_range(TESTED_KOMBU)}")
    try:
        params = list(inspect.signature(original).parameters.values())
    except (TypeError, ValueError):
        return "Channel._connparams has no inspectable signature"
    shape = [(p.name, p.kind, p.default) for p in params]
    expected = [("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
                ("asynchronous", inspect.Parameter.POSITIONAL_OR_KEYWORD, False)]
    if shape != expected:
        return f"Channel._connparams{inspect.signature(original)} is not (self, asynchronous=False)"
    return None


def guard_redis_channel_after_collect() -> bool:
    """Install the guard (idempotent). True when it was installed now.

    False when it was already installed, or when it is refused (kombu outside
    ``TESTED_KOMBU`` or ``_connparams`` changed shape): then nothing is patched and a
    warning says why.
    """
    from kombu.transport import redis as kombu_redis

    original: Callable[..., Any] = kombu_redis.Channel._connparams
    if getattr(original, _MARK, False):
        return False
    refusal = _refusal(original)
    if refusal is not None:
        log.warning("subtitle_tasks: the Redis broker-restart guard was NOT installed: %s. Workers keep "
                    "stock kombu behaviour (one may exit on a broker restart and be restarted).", refusal)
        return False

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            # kombu leaves this helper unannotated: it returns redis-py's ConnectionError class.
            connection_error: Callable[[], type[Exception]] = kombu_redis.get_redis_ConnectionError
            raise connection_error()("broker connection was already collected")
        return original(self, asynchronous)

    setattr(_connparams, _MARK, True)
    _connparams.__wrapped__ = original  # type: ignore[attr-defined]  # functools' convention, set by hand
    kombu_redis.Channel._connparams = _connparams  # type: ignore[method-assign]  # the patch itself
    return True
