"""``OnceTask``: a base for your callback tasks that must act once per callback id.

Every callback message subtitle-tasks sends has a stable task id
(``{request_id}-{ready|error}-{index}``). On a Redis broker sharing the state's server
each is queued exactly once; on RabbitMQ a notifier killed between publishing and
settling gets the callback published again under the same id (``handoff.py``), and
any broker redelivers an ``acks_late`` task whose worker died. A task built on
``OnceTask`` keeps one record per id in the state Redis::

    P:lock:once:{task_id}   the claim while it runs (a lease, or the task's time limit)
    P:once:{task_id}        "it ran" (kept for SUBTITLE_TASKS_RETENTION)

* not claimed, not done: claim, run, mark done, release (a run that raised marks
  nothing, so a retry may run);
* done: a repeat; skipped, returns None;
* claimed: another worker is on it now, or died on it; retried after one lease, when
  the claim has either been marked done or expired.

Use it as ``@app.task(bind=True, base=OnceTask)``. Ids that are not ours pass through
the same way, so it is a general "one run per task id" guard.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task

from .runtime import runtime_for

log = logging.getLogger("subtitle_tasks.once")


# Celery ships no type information: Task is Any to mypy.
class OnceTask(Task):  # type: ignore[misc]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        task_id = self.request.id
        if task_id is None:  # called as a plain function, not a delivery
            return super().__call__(*args, **kwargs)
        runtime = runtime_for(self.app)
        store, settings = runtime.store, runtime.settings
        # The claim must outlast the run, or a repeat could start beside it.
        claim_ttl = max(settings.lease, float(self.time_limit or self.app.conf.task_time_limit or 0))
        token = store.lock(f"once:{task_id}", claim_ttl)
        if token is None:
            if store.once_done(task_id):
                return self._repeat(task_id)
            # Another worker is running it now, or died on it: look again once the claim
            # has had time to finish or expire.
            raise self.retry(countdown=settings.lease, max_retries=None)
        try:
            if store.once_done(task_id):  # finished between our look and our claim
                return self._repeat(task_id)
            result = super().__call__(*args, **kwargs)
            store.mark_once(task_id, settings.retention)
            return result
        finally:
            store.unlock(f"once:{task_id}", token)  # a failed run leaves no mark: a retry may run

    @staticmethod
    def _repeat(task_id: str) -> None:
        log.info("task %s already ran; this delivery is a repeat", task_id)
        return None
