"""An app that is not ours: a project's own Celery app that adopts subtitle_tasks."""

import os

from celery import Celery

import subtitle_tasks

app = Celery("foreign_project", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(task_default_queue=os.environ["FOREIGN_QUEUE"], task_serializer="json",
                accept_content=["json"], task_routes={"foreign.*": {"queue": os.environ["FOREIGN_QUEUE"]}})


@app.task(name="foreign.publish_video", ignore_result=True)
def publish_video(track, video_pk):
    import redis

    client = redis.Redis.from_url(os.environ["SUBTITLE_TASKS_REDIS_URL"])
    client.rpush(f"{os.environ['SUBTITLE_TASKS_KEY_PREFIX']}:foreign:published", f"{video_pk}:{track['id']}")


@app.task(name="foreign.busy", ignore_result=True)
def busy(seconds):
    """One of the app's own tasks that takes ``seconds`` (bench/burst.py queues a thousand)."""
    import time

    time.sleep(seconds)


report = subtitle_tasks.init_app(app)
