"""The Celery tasks: thin shells around pipeline, callbacks and recovery.

Shared tasks with stable names, so any Celery app gets them (``init_app``) and a
dedicated fleet runs ``celery -A subtitle_tasks worker``. Arguments are ids only:
no token, no callback, no API payload ever travels through the broker from here.

Every task acknowledges early on purpose: the durable record of pending work is
the schedule in Redis (with leases), not the broker message. A worker that dies
holding steps costs seconds (step_watch.py), a message lost otherwise one lease,
never a visibility timeout.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task, shared_task

from .api import request_languages
from .callbacks import Notifier, report_refusal
from .dispatcher import Dispatcher
from .errors import InvalidSubtitleRequest, StateUnavailable
from .pipeline import Pipeline
from .recovery import Recovery
from .runtime import runtime_for
from .step_watch import owner_of

log = logging.getLogger("subtitle_tasks.tasks")

_COMMON = dict(bind=True, ignore_result=True, acks_late=False, serializer="json")


def _notifier(app: Celery, owner: str = "") -> Notifier:
    runtime = runtime_for(app)
    return Notifier.from_settings(runtime.store, app, runtime.settings, owner=owner)


def _pipeline(app: Celery, owner: str = "") -> Pipeline:
    """``owner``: the worker running the step (step_watch.py), named in the locks it takes."""
    runtime = runtime_for(app)
    return Pipeline(runtime.settings, runtime.store, runtime.client_for, _notifier(app, owner).notify,
                    metrics=runtime.metrics, planner=runtime.planner)


@shared_task(name="subtitle_tasks.submit", **_COMMON)
def submit(self: Task, generation_id: str) -> str:
    """POST the generation to DatoCMS (or reconcile an earlier POST)."""
    owner = owner_of(self)
    return _pipeline(self.app, owner).advance(generation_id, owner=owner)


@shared_task(name="subtitle_tasks.poll", **_COMMON)
def poll(self: Task, generation_id: str) -> str:
    """Poll the job result, then the track, once; the next poll is scheduled, not slept."""
    owner = owner_of(self)
    return _pipeline(self.app, owner).advance(generation_id, owner=owner)


@shared_task(name="subtitle_tasks.notify", **_COMMON)
def notify(self: Task, request_id: str) -> str:
    """Send a finished request's callbacks (used by cancel() and by recovery)."""
    return _notifier(self.app).notify(request_id)


@shared_task(name="subtitle_tasks.request", bind=True, acks_late=False, serializer="json",
             autoretry_for=(StateUnavailable,), retry_backoff=True, retry_backoff_max=60, max_retries=None)
def request(self: Task, upload_id: str, language_codes: str | list[str], name: str | None = None,
            on_ready: Any = None, on_error: Any = None, request_id: str | None = None, site: str | None = None,
            deadline: float | None = None, check_language: bool = True,
            upload_duration: float | None = None) -> dict[str, Any]:
    """Ask for subtitles from a message: celery beat, or a service that has only the broker.

    JSON arguments only (signatures as dicts). Checked exactly as request_subtitles
    checks them. Without ``request_id`` this message's task id stands in, so a retry
    after StateUnavailable (nothing was written) cannot ask twice. Bad arguments are
    logged and reported to ``on_error`` (when it is itself a valid signature); the
    result says what happened: ``{"requests": [ids]}`` or ``{"refused": {...}}``.
    """
    try:
        handles = request_languages(
            upload_id, language_codes, request_id=request_id or self.request.id, name=name, on_ready=on_ready,
            on_error=on_error, site=site, deadline=deadline, check_language=check_language,
            upload_duration=upload_duration, app=self.app)
    except InvalidSubtitleRequest as exc:
        log.error("subtitle_tasks.request %s refused: %s (upload %r, languages %r)", self.request.id, exc,
                  str(upload_id)[:130], str(language_codes)[:200])
        refused = {"field": exc.field, "message": exc.message}
        report_refusal(self.app, runtime_for(self.app).settings.callback_queue, self.request.id, exc, on_error,
                       upload_id, language_codes)
        return {"refused": refused}
    return {"requests": [h.id for h in handles]}


@shared_task(name="subtitle_tasks.recover", **_COMMON)
def recover(self: Task) -> dict[str, Any]:
    """Celery beat sweep: hand out overdue steps, repair the schedule, finish notifications."""
    runtime = runtime_for(self.app)
    settings = runtime.settings
    dispatcher = Dispatcher.for_celery(self.app, runtime.store, settings)
    dispatched = dispatcher.dispatch_once()
    summary = Recovery(runtime.store, _notifier(self.app).notify, stale=settings.lease).sweep()
    return {"dispatched": dispatched, **summary}


# -- the sweep (sweep.py) ------------------------------------------------------------------
SWEEP_MAX_SECONDS = 300.0  # a beat-run sweep gives its pool slot back; the cursor carries the rest


@shared_task(name="subtitle_tasks.sweep", **_COMMON)
def sweep(self: Task, site: str | None = None, languages: str | list[str] | None = None, since: float | None = None,
          dry_run: bool = False, max_seconds: float | None = SWEEP_MAX_SECONDS) -> dict[str, Any]:
    """Celery beat: ask for the subtitles a site's recent videos lack (see sweep.py).

    ``languages`` defaults to SUBTITLE_TASKS_AUTO_LANGUAGES, ``since`` (seconds) to 7 days.
    Bad arguments are logged and returned as ``{"refused": message}``.
    """
    from .sweep import sweep as run_sweep

    try:
        return run_sweep(site=site, languages=languages, since=since, dry_run=dry_run, max_seconds=max_seconds,
                         app=self.app)
    except ValueError as exc:  # ConfigurationError, a bad tag, since out of range
        log.error("subtitle_tasks.sweep %s refused: %s", self.request.id, exc)
        return {"refused": str(exc)}
