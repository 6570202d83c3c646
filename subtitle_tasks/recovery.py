"""Recovery: puts lost work back on track. Safe to run anywhere, any number at once.

Run by celery beat (``subtitle_tasks.recover``, scheduled by init_app) and, so a
fleet heals even without beat, by every worker's dispatcher thread once a lease.

- sends the callbacks of requests whose notifier died between deciding and settling
  (cheap: one sorted-set range; every sweep);
- re-adds in-flight generations missing from the schedule, after a lost write or a
  manual edit (a scan of every generation in flight: beat's sweep only, as it costs
  about 2 Redis lookups per waiting request).

Overdue steps need no sweep: their lease expiring makes them due, and any
dispatcher hands them out again.
"""

from __future__ import annotations

import logging
from typing import Callable

from .state import READY, FAILED, Store

log = logging.getLogger("subtitle_tasks.recovery")


class Recovery:
    def __init__(self, store: Store, notify: Callable[[str], str], *, stale: float, batch: int = 1000):
        self.store = store
        self.notify = notify
        self.stale = stale  # a notifier silent this long is presumed dead
        self.batch = batch

    def sweep(self, *, repair: bool = True) -> dict[str, int]:
        repaired = self.store.repair_orphans() if repair else 0
        renotified = 0
        for request_id in self.store.claim_finishing(stale=self.stale, limit=self.batch):
            if self.notify(request_id) in (READY, FAILED):
                renotified += 1
        summary = {"repaired": repaired, "renotified": renotified}
        if repaired or renotified:
            log.warning("recovery put work back on track: %s", summary)
        return summary
