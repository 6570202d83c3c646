"""How many steps the step queue may hold: a few seconds of what the fleet gets through.

Pure, beside the dispatcher: nothing here sleeps, reads a clock or touches Redis or
the broker; the dispatcher hands in what it read.

Why in time. Fairness lives in the claim (the store shares each claim among sites and
paces each site), but a message in the broker's queue waits its turn in one FIFO. A
queue allowed 500 messages held about 40 s of a two-worker fleet's work: a lone
request on an idle site waited behind another site's backlog that long, and a step
queued past its delivery lease was handed out a second time. Held to ``horizon``
seconds of what the fleet actually drains, the queue keeps the workers busy while
the rest waits in the schedule, where the claim is fair and waiting costs nothing.

What the fleet drains is measured, not configured (workers come and go, steps get
slower when the API does): at each look the dispatcher reads the queue's depth and
the fleet-wide count of published steps (every dispatcher adds to it), so what left
the queue since the previous look is ``published - previous published - (depth -
previous depth)``, whoever published it and whichever worker took it. The rate is
smoothed over :data:`SMOOTHING` seconds while the queue holds steps at each look (the
workers are busy: what they take is what they can). A look that finds the queue empty
saw the demand, not the capacity, a floor of it: it raises the estimate and never
lowers it. The room is ``horizon`` times the rate, at least ``floor``; with a horizon
of two looks, a burst of demand doubles it each look until the workers are busy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SMOOTHING", "DrainRate", "room"]

SMOOTHING = 5.0  # seconds: the drain rate follows a change within about this long


@dataclass
class DrainRate:
    """Steps per second the fleet takes off the step queue, from looks at two counts."""

    smoothing: float = SMOOTHING
    rate: float = 0.0
    _last: tuple[float, int, int] | None = None  # (when, depth, published) at the previous look

    def observe(self, now: float, depth: int, published: int) -> float:
        """One look: the queue's ``depth`` and the fleet's ``published`` total at ``now``.
        Returns the smoothed rate. A look that cannot be compared with the one before
        (the first, a clock that went back, a count that was reset) only starts anew."""
        last, self._last = self._last, (now, depth, published)
        if last is None:
            return self.rate
        elapsed = now - last[0]
        drained = (published - last[2]) - (depth - last[1])
        if elapsed <= 0 or published < last[2] or drained < 0:
            return self.rate
        seen = drained / elapsed
        if depth == 0:
            # The queue ran dry: the workers took all they were given, so what they took is
            # a floor of what they could take: it may raise the estimate, never lower it.
            self.rate = max(self.rate, seen)
        else:
            weight = 1.0 - math.exp(-elapsed / self.smoothing) if self.smoothing > 0 else 1.0
            self.rate += weight * (seen - self.rate)
        return self.rate


def room(rate: float, depth: int, *, horizon: float, floor: int, ceiling: int) -> int:
    """How many more steps may be handed out while the queue holds ``depth``: up to
    ``horizon`` seconds of the drain ``rate``, never less than ``floor`` in all (so an
    idle fleet starts) nor more than ``ceiling`` (SUBTITLE_TASKS_MAX_BACKLOG)."""
    if ceiling <= 0:
        return 0
    target = min(ceiling, max(floor, math.ceil(max(0.0, rate) * horizon)))
    return max(0, target - depth)
