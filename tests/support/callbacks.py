"""Callback tasks for the integration tests: each call is recorded in Redis.

The worker under test imports this module (``--include tests.support.callbacks``);
the test process reads the records back with :func:`read_calls`.
"""

from __future__ import annotations

import json
import os
import time

import redis
from celery import shared_task

import subtitle_tasks


def _calls_key() -> str:
    return f"{os.environ.get('SUBTITLE_TASKS_KEY_PREFIX', 'subtitle_tasks')}:test:calls"


@shared_task(name="tests.record", ignore_result=True, bind=True)
def record(self, payload, kind, tag):
    """on_ready/on_error target: payload is what subtitle_tasks prepended.

    The message's task id tells a second publish (new id) from a broker redelivery (same id).
    """
    _record(self.request.id, payload, kind, tag)


@shared_task(name="tests.record_once", ignore_result=True, bind=True, base=subtitle_tasks.OnceTask)
def record_once(self, payload, kind, tag):
    """record, guarded by OnceTask: repeats of one task id are skipped."""
    _record(self.request.id, payload, kind, tag)


def _record(task_id, payload, kind, tag):
    client = redis.Redis.from_url(os.environ["SUBTITLE_TASKS_REDIS_URL"])
    client.rpush(_calls_key(), json.dumps({"kind": kind, "tag": tag, "payload": payload, "pid": os.getpid(),
                                           "task_id": task_id,
                                           # when it ran, on the machine's monotonic clock (the simulator's too)
                                           "monotonic": time.monotonic()}))
    client.close()


def read_calls(client: redis.Redis, prefix: str) -> list[dict]:
    return [json.loads(raw) for raw in client.lrange(f"{prefix}:test:calls", 0, -1)]
