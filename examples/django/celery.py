"""mysite/celery.py: the project's Celery app, with subtitle-tasks wired in.

mysite/__init__.py imports it, so web processes and workers both run init_app::

    from .celery import app as celery_app

    __all__ = ("celery_app",)

Workers: ``DATOCMS_API_TOKEN=... celery -A mysite worker -Q celery,subtitles -O fair``
(the token only in the workers' environment; ``subtitles`` is SUBTITLE_TASKS_QUEUE).
"""

import os

from celery import Celery

import subtitle_tasks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# In workers: registers subtitle_tasks.*, adds the dispatcher thread, routes to
# SUBTITLE_TASKS_QUEUE. In web processes: request_subtitles()/cancel() use this app.
# A bad setting raises ConfigurationError here, at start.
subtitle_tasks.init_app(app)
