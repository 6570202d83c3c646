"""The project's Celery app, with subtitle-tasks wired in.

Workers: ``celery -A mysite worker`` (from this directory; the DatoCMS token goes in
the workers' environment only).
"""

import os

from celery import Celery

import subtitle_tasks

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

app = Celery("mysite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# In workers: registers subtitle_tasks.*, adds the dispatcher thread, routes them to
# their own queue and consumes it too. In web processes: request_subtitles(), status() and
# cancel() use this app's settings. A bad setting raises ConfigurationError here, at
# start. subtitle-tasks loads Django's lazy settings itself, so nothing has to touch
# them first.
subtitle_tasks.init_app(app)
