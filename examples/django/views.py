"""videos/views.py: ask for subtitles, read their status, cancel.

    POST /videos/<pk>/subtitles                  {"language_code": "it-IT", "name": "Italiano"}
         -> 202 {"request_id": ...}; 400 {"error", "field"}; 404 no such video
    GET  /subtitle-requests/<request_id>         -> 200 status; 404 unknown
    POST /subtitle-requests/<request_id>/cancel  -> 200; 409 already finished; 404 unknown

These are JSON endpoints without CSRF tokens: put your API authentication in front
of them (csrf_exempt is only for the example).
"""

import json

from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import subtitle_tasks
from subtitle_tasks import InvalidSubtitleRequest, UnknownRequest, request_subtitles

from .models import Video
from .tasks import alert_editors, publish_video

ALLOWED_FIELDS = {"language_code", "name", "deadline"}


def _problem(status, message, field=None):
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return JsonResponse(body, status=status)


@csrf_exempt
@require_POST
def request_video_subtitles(request, pk):
    video = get_object_or_404(Video, pk=pk)
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _problem(400, "expected a JSON object body")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        return _problem(400, f"unknown field {unknown[0]!r}", unknown[0])
    try:
        # Validates everything first (nothing is written on InvalidSubtitleRequest),
        # then one Redis round trip: no DatoCMS call, no broker publish in the request.
        handle = request_subtitles(
            video.upload_id,
            body.get("language_code"),
            name=body.get("name"),
            deadline=body.get("deadline"),
            request_id=request.headers.get("Idempotency-Key"),
            on_ready=publish_video.s(video.pk),
            on_error=alert_editors.s(video.pk),
        )
    except InvalidSubtitleRequest as exc:
        field = "Idempotency-Key" if exc.field == "request_id" else exc.field
        return _problem(400, exc.message, field)
    # The callbacks never touch this field, so there is no race with them.
    Video.objects.filter(pk=video.pk).update(subtitles_request_id=handle.id)
    status_url = reverse("subtitle-status", args=[handle.id])
    response = JsonResponse({"request_id": handle.id, "joined": handle.joined, "status_url": status_url},
                            status=202)
    response["Location"] = status_url
    return response


@require_GET
def subtitle_status(request, request_id):
    try:
        return JsonResponse(subtitle_tasks.status(request_id))
    except UnknownRequest:
        return _problem(404, "no such subtitle request (unknown, or past its retention)")


@csrf_exempt
@require_POST
def cancel_subtitles(request, request_id):
    try:
        cancelled = subtitle_tasks.cancel(request_id)
    except UnknownRequest:
        return _problem(404, "no such subtitle request (unknown, or past its retention)")
    if not cancelled:
        return _problem(409, "the request had already finished")
    return JsonResponse({"request_id": request_id, "cancelled": True})
