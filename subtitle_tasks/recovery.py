"""Recovery: puts lost work back on track. Safe to run anywhere, any number at once.

Run by celery beat (``subtitle_tasks.recover``, scheduled by init_app) and, so a
fleet heals even without beat, by every worker's dispatcher thread once a lease.

- re-adds in-flight generations missing from the schedule (a lost write, an edit);
- sends the callbacks of requests whose notifier died between deciding and settling.

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

    def sweep(self) -> dict[str, int]:
        repaired = self.store.repair_orphans()
        renotified = 0
        for request_id in self.store.claim_finishing(stale=self.stale, limit=self.batch):
            if self.notify(request_id) in (READY, FAILED):
                renotified += 1
        summary = {"repaired": repaired, "renotified": renotified}
        if repaired or renotified:
            log.warning("recovery put work back on track: %s", summary)
        return summary
