"""The edge: what a web request calls. One Redis round trip, no broker, no API call."""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from typing import Any

import redis

from . import validation
from .callbacks import error_payload, normalize
from .errors import ErrorCode, StateUnavailable, UnknownRequest
from .runtime import get_runtime
from .state import DONE, OUTCOME_ERROR, OUTCOME_READY, WAITING

log = logging.getLogger("subtitle_tasks")


def new_id() -> str:
    """128 random bits in 22 URL-safe characters (ids are repeated in several keys)."""
    return secrets.token_urlsafe(16)


def _state_errors_as_unavailable(fn):
    """Redis trouble reaches the web app as one clear, retryable exception."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise StateUnavailable(f"request state store unreachable ({type(exc).__name__}: {exc})") from None
    return wrapper


@dataclass(frozen=True)
class RequestHandle:
    """What request_subtitles returns: keep ``id`` to ask for status or cancel later."""

    id: str
    generation_id: str
    joined: bool  # shares a generation already in flight for the same upload and language

    def status(self) -> dict:
        return status(self.id)

    def cancel(self) -> bool:
        return cancel(self.id)


@_state_errors_as_unavailable
def request_subtitles(upload_id: str, language_code: str, *, name: str | None = None,
                      on_ready: Any = None, on_error: Any = None, deadline: float | None = None,
                      request_id: str | None = None, check_language: bool = True) -> RequestHandle:
    """Ask for a subtitles track; returns at once.

    Raises InvalidSubtitleRequest on bad input and StateUnavailable when Redis is
    unreachable; in both cases nothing was written.

    ``on_ready`` signatures get the ready ``upload_track`` resource as first argument,
    ``on_error`` signatures an error dict (see errors.py); exactly one kind fires, once.
    ``request_id`` makes the call idempotent: the same id again returns the same request.
    """
    runtime = get_runtime()
    settings = runtime.settings
    upload_id = validation.upload_id(upload_id)
    language_code = validation.language_code(language_code, check_supported=check_language)
    name = validation.track_name(name)
    ttl = validation.deadline(deadline, settings.deadline)
    rid = validation.request_id(request_id) or new_id()
    created = runtime.store.create_request(
        request_id=rid, generation_id=new_id(), upload_id=upload_id, language_code=language_code,
        name=name, environment=settings.environment, on_ready=normalize("on_ready", on_ready),
        on_error=normalize("on_error", on_error), ttl=ttl,
    )
    log.info("request %s for upload %s (%s) %s generation %s", rid, upload_id, language_code,
             "joined" if created.joined else "started", created.generation_id)
    return RequestHandle(rid, created.generation_id, created.joined)


@_state_errors_as_unavailable
def status(request_id: str) -> dict:
    """Where a request stands: state, upload, language, job id, track id, attempts, error."""
    store = get_runtime().store
    request = store.load_request(request_id)
    if request is None:
        raise UnknownRequest(f"no request {request_id!r} (unknown, or past its retention)")
    gen = store.load_generation(request.generation_id)
    # The very dict on_error received (or will receive), built by the same function.
    error = error_payload(request, gen) if request.outcome == OUTCOME_ERROR else None
    return {
        "request_id": request.id,
        "state": request.state,
        "upload_id": request.upload_id,
        "language_code": request.language_code,
        "generation_id": request.generation_id,
        "phase": gen.phase if gen else None,
        "job_id": gen.job_id if gen else None,
        "track_id": gen.track_id if gen else None,
        "attempts": gen.attempts if gen else None,
        "next_poll_in": max(0.0, gen.due - gen.now) if gen and gen.due and gen.phase != DONE else None,
        "created_at": request.created,
        "deadline_at": request.deadline,
        "finished_at": request.finished,
        "error": error,
        "track": gen.result if gen and request.outcome == OUTCOME_READY else None,
    }


@_state_errors_as_unavailable
def cancel(request_id: str) -> bool:
    """End a waiting request now with a ``cancelled`` error callback. False if it had ended."""
    runtime = get_runtime()
    error = {"code": ErrorCode.CANCELLED.value, "message": "cancelled by subtitle_tasks.cancel()"}
    before = runtime.store.cancel(request_id, error)
    if before == "unknown":
        raise UnknownRequest(f"no request {request_id!r} (unknown, or past its retention)")
    if before != WAITING:
        return False
    # Its error callback goes out from a worker; if this publish fails, recovery sends it.
    try:
        from .celery_app import publishing_app

        publishing_app().send_task("subtitle_tasks.notify", args=[request_id],
                              **({"queue": runtime.settings.queue} if runtime.settings.queue else {}))
    except Exception as exc:  # the request is already cancelled; only the callback is delayed
        log.warning("cancel %s: could not enqueue its callback now (%s); recovery will", request_id, exc)
    return True
