"""A worker's own run of landed heartbeats: when it may judge other workers dead.

Both watches (callback_watch.py, step_watch.py) take a worker that has been silent for
some span as dead. After an outage of the state Redis every worker's last beat is old
and none is dead, so a worker judges others only once its own beats have been landing
for that whole span, the latest within half of it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class LandedBeats:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.since: float | None = None  # start of the current run of landed beats
        self.last = 0.0  # the latest landed beat

    def landed(self) -> None:
        self.last = self.clock()
        if self.since is None:
            self.since = self.last

    def failed(self) -> None:
        self.since = None

    def steady_for(self, span: float) -> bool:
        """True once beats have landed for ``span`` seconds, the latest within ``span / 2``."""
        now = self.clock()
        return self.since is not None and now - self.since >= span and now - self.last < span / 2
