"""The baseline for bench.scale: waiting the conventional Celery way.

``poll(job_id)`` runs once (where a real task would POST or poll the API) and then
``raise self.retry(countdown=...)``: the retry is a new broker message with an ETA.
On a Redis broker the worker fetches such a message at once and keeps it in its
own memory (and in the broker's ``unacked`` hash) until the ETA passes.

No HTTP is made here on purpose: what is compared is the waiting mechanism, not
the API calls around it.

Run by bench.scale as ``celery -A bench.baseline_app worker``; configured through
the environment: ``CELERY_BROKER_URL``, ``BENCH_COUNTDOWN`` (seconds) and
``BENCH_COUNTER_KEY`` (a Redis key counted up once per first run, so the
benchmark knows when every task has been retried).
"""

from __future__ import annotations

import os

import redis
from celery import Celery

QUEUE = "bench_baseline"
TASK_NAME = "bench.baseline.poll"
COUNTER_KEY = os.environ.get("BENCH_COUNTER_KEY", "bench:first_runs")
COUNTDOWN = float(os.environ.get("BENCH_COUNTDOWN", "1800"))

app = Celery("bench_baseline", broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
             set_as_current=False)
# The same worker settings subtitle_tasks' dedicated app uses (celery_app.create_app).
app.conf.update(
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)

_client: redis.Redis | None = None
_client_pid: int | None = None


def _redis() -> redis.Redis:
    # One connection per (forked) process.
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        _client = redis.Redis.from_url(app.conf.broker_url)
        _client_pid = os.getpid()
    return _client


@app.task(bind=True, name=TASK_NAME, max_retries=None, ignore_result=True, acks_late=False, serializer="json")
def poll(self, job_id: str) -> None:
    """Poll a job that is never done: count the first run, then wait with a countdown retry."""
    if self.request.retries == 0:
        _redis().incr(COUNTER_KEY)
    raise self.retry(countdown=COUNTDOWN)
