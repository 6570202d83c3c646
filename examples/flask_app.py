"""A Flask app that asks DatoCMS for subtitles through subtitle-tasks.

One module holds the web app and its Celery app; both processes import it, so both
call ``subtitle_tasks.init_app`` (see examples/README.md)::

    cd examples
    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0
    DATOCMS_API_TOKEN=... celery -A flask_app:celery_app worker -O fair   # token: workers only
    flask --app flask_app run

Endpoints:

    POST /videos/<video_id>/subtitles         {"upload_id": ..., "language_code": "it-IT", "name": "Italiano"}
         -> 202 {"request_id": ...}  (header Idempotency-Key makes a retried post return the same request)
    GET  /subtitle-requests/<request_id>      -> 200 status, 404 unknown
    POST /subtitle-requests/<request_id>/cancel -> 200 cancelled, 409 already finished, 404 unknown
    GET  /videos/<video_id>                   -> what the callbacks recorded for the video

The "video store" is a Redis hash per video so that the example has somewhere to show
what the callbacks did; a real app would update its database there.
"""

from __future__ import annotations

import logging
import os

import redis
from celery import Celery
from flask import Flask, jsonify, request, url_for

import subtitle_tasks
from subtitle_tasks import InvalidSubtitleRequest, UnknownRequest, request_subtitles

log = logging.getLogger("flask_example")

BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")

celery_app = Celery("flask_example", broker=BROKER_URL)
celery_app.conf.update(
    task_serializer="json",
    accept_content=["json"],     # init_app refuses an app that does not accept JSON
    task_ignore_result=True,     # nothing here reads task results
    broker_connection_retry_on_startup=True,
)

# In the worker: registers subtitle_tasks.* and starts the dispatcher thread. In the web
# process: makes request_subtitles()/cancel() use this app and its routes. Settings come
# from the environment (SUBTITLE_TASKS_REDIS_URL defaults to a Redis broker). Raises
# ConfigurationError at import, so a misconfigured deploy fails at start, not per request.
init_report = subtitle_tasks.init_app(celery_app)

_video_store: redis.Redis | None = None


def video_store() -> redis.Redis:
    global _video_store
    if _video_store is None:
        url = os.environ.get("EXAMPLE_VIDEO_STORE_URL") or init_report.settings.state_url
        _video_store = redis.Redis.from_url(url, decode_responses=True)
    return _video_store


def _video_key(video_id: str) -> str:
    return f"flask_example:video:{video_id}"


# --------------------------------------------------------------------------- callbacks
# The first argument is what subtitle_tasks prepends: the ready upload_track resource,
# or the error dict. Exactly one of the two fires per request; in the rare crash
# windows the README describes it can fire twice, so keep them idempotent (set, don't
# append).

@celery_app.task(name="flask_example.publish_video")
def publish_video(track: dict, video_id: str) -> None:
    video_store().hset(_video_key(video_id), mapping={
        "subtitles_track_id": track["id"],
        "subtitles_status": track["attributes"]["status"],
        "subtitles_language": track["attributes"].get("language_code") or "",
    })
    log.warning("video %s: subtitles track %s is ready", video_id, track["id"])


@celery_app.task(name="flask_example.alert_editors")
def alert_editors(error: dict, video_id: str) -> None:
    video_store().hset(_video_key(video_id), mapping={
        "subtitles_status": "failed",
        "subtitles_error": error["code"],
        "subtitles_error_message": error.get("message") or "",
    })
    log.warning("video %s: subtitles failed: %s (%s)", video_id, error["code"], error.get("message"))


# --------------------------------------------------------------------------- web

app = Flask(__name__)

ALLOWED_FIELDS = {"upload_id", "language_code", "name", "deadline"}


def _problem(status: int, message: str, field: str | None = None):
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return jsonify(body), status


@app.post("/videos/<video_id>/subtitles")
def create_subtitles(video_id: str):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _problem(400, "expected a JSON object body")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        return _problem(400, f"unknown field {unknown[0]!r}", unknown[0])
    try:
        # Types and formats are checked by request_subtitles itself; it raises before
        # writing anything, and makes one Redis round trip otherwise (never the API).
        handle = request_subtitles(
            body.get("upload_id"),
            body.get("language_code"),
            name=body.get("name"),
            deadline=body.get("deadline"),
            request_id=request.headers.get("Idempotency-Key"),
            on_ready=publish_video.s(video_id),
            on_error=alert_editors.s(video_id),
        )
    except InvalidSubtitleRequest as exc:
        # request_id came from the header, so name the header for the client.
        field = "Idempotency-Key" if exc.field == "request_id" else exc.field
        return _problem(400, exc.message, field)
    status_url = url_for("subtitle_status", request_id=handle.id)
    return jsonify(request_id=handle.id, joined=handle.joined, status_url=status_url), 202, {"Location": status_url}


@app.get("/subtitle-requests/<request_id>")
def subtitle_status(request_id: str):
    try:
        return jsonify(subtitle_tasks.status(request_id))
    except UnknownRequest:
        return _problem(404, "no such subtitle request (unknown, or past its retention)")


@app.post("/subtitle-requests/<request_id>/cancel")
def cancel_subtitles(request_id: str):
    try:
        cancelled = subtitle_tasks.cancel(request_id)
    except UnknownRequest:
        return _problem(404, "no such subtitle request (unknown, or past its retention)")
    if not cancelled:
        return _problem(409, "the request had already finished")
    # on_error fires with code "cancelled" from a worker shortly.
    return jsonify(request_id=request_id, cancelled=True)


@app.get("/videos/<video_id>")
def show_video(video_id: str):
    return jsonify(video_id=video_id, **video_store().hgetall(_video_key(video_id)))
