"""Settings of the example project.

Everything deployment-specific comes from the environment, with defaults that work on
a laptop with a local Redis. subtitle-tasks reads the same names from the environment
first and from here second (README.md, "Configuration"), so the SUBTITLE_TASKS_* and
DATOCMS_* lines below only document the defaults this project picked.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",")

INSTALLED_APPS = [
    "videos",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "mysite.urls"

# A file, so that web processes and workers (separate processes) share it.
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_DB_PATH", str(BASE_DIR / "db.sqlite3")),
        # A worker's callback and a web request may write at once; wait for the lock.
        "OPTIONS": {"timeout": 20},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Where alert_editors mails (videos/tasks.py); empty: it only logs.
MANAGERS = []

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"videos": {"handlers": ["console"], "level": "INFO"}},
}

# --- Celery (read by mysite/celery.py through the CELERY_ namespace) ----------
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]  # init_app refuses an app that does not accept JSON
CELERY_TASK_IGNORE_RESULT = True
# Never CELERY_TASK_ALWAYS_EAGER = True, not even in tests: init_app refuses it (the
# pipeline waits between polls through real workers).

# --- subtitle-tasks ---------------------------------------------------------
# DATOCMS_API_TOKEN is deliberately not here: only the Celery workers need it, from
# their environment (or DATOCMS_API_TOKEN_FILE), so web processes never hold it.
DATOCMS_BASE_URL = os.environ.get("DATOCMS_BASE_URL", "https://site-api.datocms.com")
# Request state; unset, it lives in the broker's Redis.
SUBTITLE_TASKS_REDIS_URL = os.environ.get("SUBTITLE_TASKS_REDIS_URL")
# One Redis shared by several projects: each needs its own prefix.
SUBTITLE_TASKS_KEY_PREFIX = os.environ.get("SUBTITLE_TASKS_KEY_PREFIX", "mysite_subtitles")
# The pipeline's own queue (unset: "subtitle_tasks"); every worker of the app consumes
# it besides its own, so a backlog of other tasks cannot delay polls.
SUBTITLE_TASKS_QUEUE = os.environ.get("SUBTITLE_TASKS_QUEUE")
