"""The callbacks subtitle-tasks fires when a request ends.

The first argument is prepended by subtitle-tasks: the ready ``upload_track`` resource
for on_ready, an error dict for on_error (README.md, "Error codes"). Exactly one of the
two fires per request.
"""

import logging

from celery import shared_task

from .db import get_db

log = logging.getLogger(__name__)


@shared_task(name="flask_example.publish_video", ignore_result=True)
def publish_video(track, video_id):
    with get_db() as conn:  # commits
        conn.execute(
            "INSERT INTO video_subtitles (video_id, status, track_id, language_code) VALUES (?, 'ready', ?, ?) "
            "ON CONFLICT (video_id) DO UPDATE SET status = 'ready', track_id = excluded.track_id, "
            "language_code = excluded.language_code, error = NULL, error_message = NULL",
            (video_id, track["id"], track["attributes"].get("language_code")))
    log.info("video %s: subtitles track %s is ready", video_id, track["id"])


@shared_task(name="flask_example.alert_editors", ignore_result=True)
def alert_editors(error, video_id):
    # track_id is left alone: a track an earlier request made is still there.
    with get_db() as conn:
        conn.execute(
            "INSERT INTO video_subtitles (video_id, status, language_code, error, error_message) "
            "VALUES (?, 'failed', ?, ?, ?) "
            "ON CONFLICT (video_id) DO UPDATE SET status = 'failed', language_code = excluded.language_code, "
            "error = excluded.error, error_message = excluded.error_message",
            (video_id, error.get("language_code"), error["code"], error.get("message")))
    log.warning("video %s: subtitles failed: %s (%s)", video_id, error["code"], error.get("message"))
