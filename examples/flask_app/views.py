"""The endpoints, on a blueprint create_app registers.

    POST /videos/<video_id>/subtitles           {"upload_id": ..., "language_code": "it-IT", "name": "Italiano"}
         -> 202 {"request_id", "joined", "status_url"}; 400 {"error", "field"};
            409 the Idempotency-Key was used for another ask; 503 Redis unreachable, retry
    GET  /subtitle-requests/<request_id>        -> 200 status; 404 unknown
    POST /subtitle-requests/<request_id>/cancel -> 200; 409 already finished; 404 unknown
    GET  /videos/<video_id>                     -> what the callbacks recorded for the video
"""

from flask import Blueprint, current_app, jsonify, request, url_for

import subtitle_tasks
from subtitle_tasks import IdempotencyConflict, InvalidSubtitleRequest, StateUnavailable, UnknownRequest

from .db import get_db
from .tasks import alert_editors, publish_video

bp = Blueprint("subtitles", __name__)

ALLOWED_FIELDS = {"upload_id", "language_code", "name", "deadline"}
UNKNOWN = "no such subtitle request (unknown, or past its retention)"


def _celery():
    # This Flask app's own Celery app: subtitle_tasks uses its settings (key prefix, queue).
    return current_app.extensions["celery"]


def _problem(status, message, field=None):
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return jsonify(body), status


@bp.post("/videos/<int:video_id>/subtitles")
def create_subtitles(video_id):
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _problem(400, "expected a JSON object body")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        return _problem(400, f"unknown field {unknown[0]!r}", unknown[0])
    key = request.headers.get("Idempotency-Key")
    try:
        # Checks everything before writing (nothing is written on a refusal), then one
        # Redis round trip: no DatoCMS call and no broker publish in the web request.
        handle = subtitle_tasks.request_subtitles(
            body.get("upload_id"),
            body.get("language_code"),
            name=body.get("name"),
            deadline=body.get("deadline"),
            # Scoped to the video, so two videos' keys never meet.
            request_id=f"video-{video_id}-{key}" if key else None,
            on_ready=publish_video.s(video_id),
            on_error=alert_editors.s(video_id),
            app=_celery(),
        )
    except IdempotencyConflict as exc:
        return _problem(409, exc.message, "Idempotency-Key")
    except InvalidSubtitleRequest as exc:
        # request_id is built from the header, so name the header for the client.
        return _problem(400, exc.message, "Idempotency-Key" if exc.field == "request_id" else exc.field)
    except StateUnavailable:
        return _problem(503, "subtitle requests are unavailable right now; retry")
    status_url = url_for(".subtitle_status", request_id=handle.id)
    return jsonify(request_id=handle.id, joined=handle.joined, status_url=status_url), 202, {"Location": status_url}


@bp.get("/subtitle-requests/<request_id>")
def subtitle_status(request_id):
    try:
        return jsonify(subtitle_tasks.status(request_id, app=_celery()))
    except UnknownRequest:
        return _problem(404, UNKNOWN)


@bp.post("/subtitle-requests/<request_id>/cancel")
def cancel_subtitles(request_id):
    try:
        cancelled = subtitle_tasks.cancel(request_id, app=_celery())
    except UnknownRequest:
        return _problem(404, UNKNOWN)
    if not cancelled:
        return _problem(409, "the request had already finished")
    # alert_editors runs with code "cancelled" from a worker shortly.
    return jsonify(request_id=request_id, cancelled=True)


@bp.get("/videos/<int:video_id>")
def show_video(video_id):
    row = get_db().execute("SELECT * FROM video_subtitles WHERE video_id = ?", (video_id,)).fetchone()
    return jsonify(video_id=video_id, subtitles=dict(row) if row else None)
