"""The Celery tasks: thin shells around pipeline, callbacks and recovery.

Shared tasks with stable names, so any Celery app gets them (``init_app``) and a
dedicated fleet runs ``celery -A subtitle_tasks worker``. Arguments are ids only:
no token, no callback, no API payload ever travels through the broker from here.

Every task acknowledges early on purpose: the durable record of pending work is
the schedule in Redis (with leases), not the broker message, so a lost message
costs one lease, never a visibility timeout.
"""

from __future__ import annotations

import logging

from celery import shared_task

from .callbacks import Notifier
from .dispatcher import Dispatcher
from .pipeline import Pipeline
from .recovery import Recovery
from .runtime import runtime_for

log = logging.getLogger("subtitle_tasks.tasks")

_COMMON = dict(bind=True, ignore_result=True, acks_late=False, serializer="json")


def _notifier(app) -> Notifier:
    runtime = runtime_for(app)
    return Notifier.from_settings(runtime.store, app, runtime.settings)


def _pipeline(app) -> Pipeline:
    runtime = runtime_for(app)
    return Pipeline(runtime.settings, runtime.store, runtime.client_for, _notifier(app).notify)


@shared_task(name="subtitle_tasks.submit", **_COMMON)
def submit(self, generation_id: str) -> str:
    """POST the generation to DatoCMS (or reconcile an earlier POST)."""
    return _pipeline(self.app).advance(generation_id)


@shared_task(name="subtitle_tasks.poll", **_COMMON)
def poll(self, generation_id: str) -> str:
    """Poll the job result, then the track, once; the next poll is scheduled, not slept."""
    return _pipeline(self.app).advance(generation_id)


@shared_task(name="subtitle_tasks.notify", **_COMMON)
def notify(self, request_id: str) -> str:
    """Send a finished request's callbacks (used by cancel() and by recovery)."""
    return _notifier(self.app).notify(request_id)


@shared_task(name="subtitle_tasks.recover", **_COMMON)
def recover(self) -> dict:
    """Celery beat sweep: hand out overdue steps, repair the schedule, finish notifications."""
    runtime = runtime_for(self.app)
    settings = runtime.settings
    dispatcher = Dispatcher.for_celery(self.app, runtime.store, settings)
    dispatched = dispatcher.dispatch_once()
    summary = Recovery(runtime.store, _notifier(self.app).notify, stale=settings.lease).sweep()
    return {"dispatched": dispatched, **summary}
