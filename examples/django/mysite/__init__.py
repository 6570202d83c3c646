# Every Django process (runserver, manage.py, the celery worker) imports this package,
# so every one of them creates the Celery app and runs subtitle_tasks.init_app on it.
from .celery import app as celery_app

__all__ = ("celery_app",)
