"""The callbacks subtitle-tasks fires when a request ends.

The first argument is prepended by subtitle-tasks: the ready ``upload_track`` resource
for on_ready, an error dict for on_error (README.md, "Error codes"). Exactly one of the
two fires per request; in the rare crash windows the README names one can fire twice,
so both only set fields: running one twice leaves the row as running it once did.
"""

import logging

from celery import shared_task
from django.core.mail import mail_managers

from .models import Video

log = logging.getLogger(__name__)


@shared_task(name="videos.publish_video", ignore_result=True)
def publish_video(track, video_pk):
    updated = Video.objects.filter(pk=video_pk).update(subtitles_track_id=track["id"], subtitles_error="")
    if updated:
        log.info("video %s: subtitles track %s is ready", video_pk, track["id"])
    else:
        log.warning("subtitles track %s is ready but video %s is gone", track["id"], video_pk)


@shared_task(name="videos.alert_editors", ignore_result=True)
def alert_editors(error, video_pk):
    Video.objects.filter(pk=video_pk).update(subtitles_error=error["code"])
    log.warning("video %s: subtitles failed: %s (%s)", video_pk, error["code"], error["message"])
    if error["code"] == "cancelled":
        return  # somebody asked for it
    mail_managers(  # a no-op while settings.MANAGERS is empty
        f"Subtitles failed for video {video_pk}: {error['code']}",
        f"{error['message']}\n\nupload {error['upload_id']}, language {error['language_code']}, "
        f"DatoCMS code {error['api_code']}, request {error['request_id']}",
        fail_silently=True,
    )
