from django.db import models


class Video(models.Model):
    title = models.CharField(max_length=200)
    upload_id = models.CharField(max_length=128)  # the DatoCMS upload of the video file
    # Written by the view: the latest subtitle_tasks request (for status and cancel).
    subtitles_request_id = models.CharField(max_length=128, blank=True)
    # Written by the callbacks (tasks.py).
    subtitles_track_id = models.CharField(max_length=128, blank=True)
    subtitles_error = models.CharField(max_length=64, blank=True)

    def __str__(self) -> str:
        return self.title
