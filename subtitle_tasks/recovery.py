"""Recovery: puts lost work back on track. Safe to run anywhere, any number at once.

Run by celery beat (``subtitle_tasks.recover``, scheduled by init_app) and, so a
fleet heals even without beat, by every worker's dispatcher thread once a lease.

- sends the callbacks of requests whose notifier died between deciding and settling
  (cheap: one sorted-set range; every sweep);
- re-adds in-flight generations missing from the schedule, after a lost write or a
  manual edit. That is a scan of every generation in flight (measured at 100,000: about
  240 ms of Redis time in 0.9 ms slices), so it is beat's job only and runs at most
  once per ``REPAIR_EVERY`` fleet-wide, however many sweeps run.

Overdue steps need no sweep: their lease expiring makes them due, and any
dispatcher hands them out again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from . import callback_watch
from .state import FAILED, READY, Store

log = logging.getLogger("subtitle_tasks.recovery")

# A lost schedule entry is rare (a lost write, a hand edit); finding it within minutes
# is plenty, and the full scan is the one sweep cost that grows with the fleet's load.
REPAIR_EVERY = 300.0


class Recovery:
    def __init__(self, store: Store, notify: Callable[[str], str], *, stale: float, batch: int = 1000,
                 repair_every: float = REPAIR_EVERY):
        self.store = store
        self.notify = notify
        self.stale = stale  # a notifier silent this long is presumed dead
        self.batch = batch
        self.repair_every = repair_every

    def sweep(self, *, repair: bool = True) -> dict[str, int]:
        repaired = 0
        # The lock is a fleet-wide gate, never released: it expires after repair_every.
        if repair and self.store.lock("repair", self.repair_every) is not None:
            repaired = self.store.repair_orphans()
        renotified = 0
        for request_id in self.store.claim_finishing(stale=self.stale, limit=self.batch):
            if self.notify(request_id) in (READY, FAILED):
                renotified += 1
        summary = {"repaired": repaired, "renotified": renotified}
        summary.update(callback_watch.sweep(self.store))  # callbacks held by dead workers: counted when any
        if repaired or renotified:
            log.warning("recovery put work back on track: %s", summary)
        return summary
