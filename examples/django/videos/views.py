"""Ask for subtitles, read their status, cancel; show a video.

    POST /videos/<pk>/subtitles                  {"language_code": "it-IT", "name": "Italiano"}
         -> 202 {"request_id", "status_url"}; 400 {"error", "field"}; 404 no such video;
            409 the Idempotency-Key was used for another ask; 503 Redis unreachable, retry
    GET  /subtitle-requests/<request_id>         -> 200 status; 404 unknown
    POST /subtitle-requests/<request_id>/cancel  -> 200; 409 already finished; 404 unknown
    GET  /videos/<pk>                            -> the row, with what the callbacks wrote

These are JSON endpoints without CSRF tokens: put your API authentication in front
of them (csrf_exempt is only for the example).
"""

import json
import secrets
from functools import partial

from django.db import transaction
from django.http import JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

import subtitle_tasks
from subtitle_tasks import (
    IdempotencyConflict,
    InvalidSubtitleRequest,
    StateUnavailable,
    UnknownRequest,
    request_subtitles,
)

from .models import Video
from .tasks import alert_editors, publish_video

ALLOWED_FIELDS = {"language_code", "name", "deadline"}
UNKNOWN = "no such subtitle request (unknown, or past its retention)"


def _problem(status, message, field=None):
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return JsonResponse(body, status=status)


def ask_for_subtitles(video_pk, upload_id, request_id, previous_request_id, body):
    """Make the request a committed transaction recorded on the video (an on_commit hook)."""
    try:
        return request_subtitles(
            upload_id,
            body.get("language_code"),
            name=body.get("name"),
            deadline=body.get("deadline"),
            request_id=request_id,
            on_ready=publish_video.s(video_pk),
            on_error=alert_editors.s(video_pk),
        )
    except Exception:
        # Refused, or Redis unreachable: nothing was written there, so the row must not
        # name this request. Put back the one it named before, unless a later ask has
        # replaced it meanwhile.
        Video.objects.filter(pk=video_pk, subtitles_request_id=request_id).update(
            subtitles_request_id=previous_request_id)
        raise


@csrf_exempt
@require_POST
def request_video_subtitles(request, pk):
    try:
        body = json.loads(request.body or b"null")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return _problem(400, "expected a JSON object body")
    unknown = sorted(set(body) - ALLOWED_FIELDS)
    if unknown:
        return _problem(400, f"unknown field {unknown[0]!r}", unknown[0])

    # The request is made only after the commit, but the answer must name it, so the id
    # is chosen here. With an Idempotency-Key a retried post gets the same id and
    # request_subtitles returns the same request; the video's pk keeps keys of
    # different videos apart.
    key = request.headers.get("Idempotency-Key") or secrets.token_urlsafe(12)
    request_id = f"video-{pk}-{key}"
    try:
        with transaction.atomic():
            video = Video.objects.select_for_update().filter(pk=pk).first()
            if video is None:
                return _problem(404, "no such video")
            # Every input check now, with no I/O: bad input is a 400 before anything
            # commits. Only what Redis knows (a reused key, an outage) is left for later.
            subtitle_tasks.check_request(
                video.upload_id, body.get("language_code"), name=body.get("name"), deadline=body.get("deadline"),
                request_id=request_id, on_ready=publish_video.s(video.pk), on_error=alert_editors.s(video.pk))
            ask = partial(ask_for_subtitles, video.pk, video.upload_id, request_id, video.subtitles_request_id, body)
            video.subtitles_request_id = request_id
            video.save(update_fields=["subtitles_request_id"])
            # Runs when the outermost transaction commits: at the end of this block when
            # it is the outermost (so the refusals below answer this post), else at the
            # caller's commit. A rollback drops it: nothing is requested, no worker ever
            # sees a pk that does not exist.
            transaction.on_commit(ask)
    except IdempotencyConflict as exc:
        return _problem(409, exc.message, "Idempotency-Key")
    except InvalidSubtitleRequest as exc:
        # request_id is built from the header, so name the header for the client.
        return _problem(400, exc.message, "Idempotency-Key" if exc.field == "request_id" else exc.field)
    except StateUnavailable:
        return _problem(503, "subtitle requests are unavailable right now; retry")
    status_url = reverse("subtitle-status", args=[request_id])
    response = JsonResponse({"request_id": request_id, "status_url": status_url}, status=202)
    response["Location"] = status_url
    return response


@require_GET
def subtitle_status(request, request_id):
    try:
        return JsonResponse(subtitle_tasks.status(request_id))
    except UnknownRequest:
        return _problem(404, UNKNOWN)


@csrf_exempt
@require_POST
def cancel_subtitles(request, request_id):
    try:
        cancelled = subtitle_tasks.cancel(request_id)
    except UnknownRequest:
        return _problem(404, UNKNOWN)
    if not cancelled:
        return _problem(409, "the request had already finished")
    # alert_editors runs with code "cancelled" from a worker shortly.
    return JsonResponse({"request_id": request_id, "cancelled": True})


@require_GET
def show_video(request, pk):
    video = Video.objects.filter(pk=pk).values(
        "id", "title", "upload_id", "subtitles_request_id", "subtitles_track_id", "subtitles_error").first()
    if video is None:
        return _problem(404, "no such video")
    return JsonResponse(video)
