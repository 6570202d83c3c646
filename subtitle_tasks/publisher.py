"""The bare publisher: an app to send our own tasks with, from a process that wired none.

A web process that never called ``init_app`` and calls ``cancel()`` must not build the
dedicated worker app (that would configure the process); it publishes through a plain
Celery app built from the same settings request_subtitles uses.
"""

from __future__ import annotations

from celery import Celery

from .settings import Settings

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"  # the dedicated app's broker when none is set



_publisher: tuple[Settings, Celery] | None = None  # the last one built, with its settings


def publishing_app(app: Celery | None, settings: Settings) -> Celery:
    """The app to publish our own tasks with: ``app`` when given, else a bare publisher.

    The bare one is built from ``settings`` (the ones request_subtitles uses) and
    configures nothing: a web process that only calls cancel() must not have its
    state re-pointed by building the dedicated worker app.
    """
    global _publisher
    if app is not None:
        return app
    if _publisher is None or _publisher[0] is not settings:
        app = Celery("subtitle_tasks-publisher", broker=settings.broker_url or DEFAULT_BROKER, set_as_current=False)
        app.conf.task_default_queue = settings.step_queue
        _publisher = (settings, app)
    return _publisher[1]
