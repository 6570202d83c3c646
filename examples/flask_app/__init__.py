"""A Flask app (application factory) that asks DatoCMS for subtitles through subtitle-tasks.

    flask --app flask_app run                                 # the web app (create_app)
    celery -A flask_app.worker:celery_app worker              # its workers; DATOCMS_API_TOKEN here only

Endpoints (views.py): POST /videos/<id>/subtitles, GET /subtitle-requests/<id>,
POST /subtitle-requests/<id>/cancel, GET /videos/<id>.
"""

import os

from flask import Flask

from . import db, views
from .celery_setup import celery_init_app


def create_app(config=None):
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        # The callbacks' outcomes; a file, because workers and web processes both open it.
        DATABASE=os.path.join(app.instance_path, "videos.sqlite"),
        CELERY={
            "broker_url": os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
            "task_serializer": "json",
            "accept_content": ["json"],  # init_app refuses an app that does not accept JSON
            "task_ignore_result": True,
        },
        # Keyword overrides for subtitle_tasks.init_app (key_prefix, queue, ...); the
        # environment (SUBTITLE_TASKS_*, DATOCMS_*) supplies whatever is not here.
        SUBTITLE_TASKS={},
    )
    app.config.from_prefixed_env()  # FLASK_DATABASE=/srv/videos.sqlite and the like
    if config:
        app.config.from_mapping(config)
    os.makedirs(os.path.dirname(app.config["DATABASE"]) or ".", exist_ok=True)

    db.init_app(app)
    celery_init_app(app)
    app.register_blueprint(views.bp)
    return app
