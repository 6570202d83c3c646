"""Pure delay arithmetic for retries and polling.

Nothing here sleeps, reads a clock, or keeps state: every function maps its
arguments (plus one draw from an injectable random source) to a number of
seconds.  Callers decide what to do with that number -- sleep inline for a
short hiccup, or hand it to Celery as a countdown for a long wait.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

__all__ = ["capped_exponential", "retry_delay"]


def _check_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def capped_exponential(
    attempt: int,
    initial: float,
    maximum: float,
    *,
    factor: float = 2.0,
    jitter: float = 0.5,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay in seconds before attempt number ``attempt`` (0-based).

    The un-jittered delay is ``initial * factor ** attempt``, capped at
    ``maximum``.  A fraction ``jitter`` of it is then randomised ("equal
    jitter")::

        delay * (1 - jitter) + delay * jitter * rng()

    so that many workers started together drift apart instead of polling in
    lockstep.  The result always lies in ``[initial * (1 - jitter), maximum]``
    and, for a fixed ``rng()`` draw, never decreases as ``attempt`` grows.

    ``rng`` must return a float in ``[0, 1]`` (``random.random`` does); values
    outside that range are clamped rather than trusted.

    Raises ``ValueError`` for a negative attempt, a non-positive or
    non-finite ``initial``, ``maximum < initial``, ``factor < 1`` or a
    ``jitter`` outside ``[0, 1]``.
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise ValueError(f"attempt must be an int, got {attempt!r}")
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    _check_finite("initial", initial)
    _check_finite("maximum", maximum)
    _check_finite("factor", factor)
    _check_finite("jitter", jitter)
    if initial <= 0:
        raise ValueError(f"initial must be > 0, got {initial}")
    if maximum < initial:
        raise ValueError(f"maximum ({maximum}) must be >= initial ({initial})")
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    if not 0 <= jitter <= 1:
        raise ValueError(f"jitter must be within [0, 1], got {jitter}")

    try:
        grown = initial * factor**attempt
    except OverflowError:  # huge attempt counts: the cap applies anyway
        grown = math.inf
    base = min(float(maximum), grown)

    draw = rng()
    if not isinstance(draw, (int, float)) or math.isnan(draw):
        draw = 1.0
    draw = min(1.0, max(0.0, float(draw)))

    delay = base * (1 - jitter) + base * jitter * draw
    # Guard against floating-point drift at the edges.
    return min(float(maximum), max(initial * (1 - jitter), delay))


def retry_delay(
    attempt: int,
    *,
    hint: float | None = None,
    initial: float = 0.5,
    maximum: float = 30.0,
    rng: Callable[[], float] = random.random,
) -> float:
    """Delay in seconds before retrying a failed HTTP call.

    ``max(hint, capped_exponential(attempt, initial, maximum, rng=rng))``.

    ``hint`` is what the server asked for (DatoCMS: ``X-RateLimit-Reset``,
    whole seconds until the quota refills).  It is honoured even when it is
    larger than ``maximum``: waiting less than the server asked only earns
    another refusal.  A hint that is ``None``, negative, NaN or infinite is
    ignored (it comes from the network and is not trusted to be sane).
    """
    delay = capped_exponential(attempt, initial, maximum, rng=rng)
    if hint is None or isinstance(hint, bool) or not isinstance(hint, (int, float)):
        return delay
    if not math.isfinite(hint) or hint < 0:
        return delay
    return max(float(hint), delay)
