"""The lines subtitle-tasks needs in a Django project's settings.py (mysite/settings.py).

subtitle-tasks reads the same names it reads from the environment (README.md,
"Configuration"); the environment wins over these. Celery reads the CELERY_* ones
through ``config_from_object("django.conf:settings", namespace="CELERY")`` in celery.py.
"""

import os

# --- Celery ----------------------------------------------------------------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]        # init_app refuses an app that does not accept JSON
CELERY_TASK_IGNORE_RESULT = True
# Never CELERY_TASK_ALWAYS_EAGER = True, not even in tests: init_app refuses it (the
# pipeline waits between polls through real workers). Tests: the datocms_simulator
# pytest fixture and a real worker.

# --- subtitle-tasks --------------------------------------------------------
# DATOCMS_API_TOKEN: deliberately not here. Only the Celery workers need it; give it to
# their environment from your secret store, so web processes and settings files never
# hold it.

# Where request state lives. Defaults to CELERY_BROKER_URL when that is Redis; set it
# when the broker is RabbitMQ, or to keep state in its own database.
SUBTITLE_TASKS_REDIS_URL = os.environ.get("SUBTITLE_TASKS_REDIS_URL", "redis://127.0.0.1:6379/1")

# A sandbox environment of the DatoCMS project (None: the primary environment).
DATOCMS_ENVIRONMENT = None

# Give up on a request after this many seconds (it ends with "deadline_exceeded").
SUBTITLE_TASKS_DEADLINE = 2 * 60 * 60

# Route subtitle_tasks.* to their own queue, so long backlogs of your other tasks do
# not delay polls: start workers with `-Q celery,subtitles` (or a separate pool for it).
SUBTITLE_TASKS_QUEUE = "subtitles"

# One Redis shared by several projects: give each its own prefix.
SUBTITLE_TASKS_KEY_PREFIX = "mysite_subtitles"

# The rest have sensible defaults (README.md): SUBTITLE_TASKS_POLL_INITIAL,
# SUBTITLE_TASKS_POLL_MAX, SUBTITLE_TASKS_HTTP_TIMEOUT, SUBTITLE_TASKS_LEASE,
# SUBTITLE_TASKS_RETENTION, SUBTITLE_TASKS_RATE_LIMIT, ...
