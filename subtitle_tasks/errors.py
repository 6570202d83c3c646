"""The error vocabulary: what an ``on_error`` callback receives, and edge errors.

Every failed request ends with one error dict::

    {"code": "track_errored", "message": "...", "request_id": "...",
     "upload_id": "...", "language_code": "...", "api_code": "MUX_ERROR" | None,
     "api_status": 422 | None, "api_request_id": "..." | None, "job_id": ..., "track_id": ...}

``code`` is one of :class:`ErrorCode`; it is stable and safe to switch on.
``api_code`` is DatoCMS's own code when the API gave one.
"""

from __future__ import annotations

import enum
from typing import Any

from .datocms import exceptions as api


class ErrorCode(str, enum.Enum):
    INVALID_REQUEST = "invalid_request"      # DatoCMS refused the input (bad language, not a video, ...)
    UNAUTHORIZED = "unauthorized"            # the worker's token was refused (401)
    FORBIDDEN = "forbidden"                  # the token lacks a permission (403)
    UPLOAD_NOT_FOUND = "upload_not_found"    # no such upload (404 on submit or on the track list)
    JOB_FAILED = "job_failed"                # the job finished with a non-2xx status
    TRACK_ERRORED = "track_errored"          # the track ended in status "errored"
    TRACK_MISSING = "track_missing"          # the job's track vanished from the upload's track list
    DEADLINE_EXCEEDED = "deadline_exceeded"  # not finished before the request's deadline
    CANCELLED = "cancelled"                  # subtitle_tasks.cancel() ended it
    PROTOCOL_ERROR = "protocol_error"        # a permanent failure none of the codes above describes
    INVALID_ARGUMENTS = "invalid_arguments"  # a subtitle_tasks.request message failed the edge checks
    # The sandbox environment refuses track changes (IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT):
    # nothing about the request is wrong, only the environment it targets.
    SANDBOX_IMMUTABLE = "sandbox_immutable"

    def __str__(self) -> str:
        return self.value


class InvalidSubtitleRequest(ValueError):
    """Raised at the edge (``request_subtitles``) for input that can never succeed.

    Nothing is written or enqueued when this is raised.
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class IdempotencyConflict(InvalidSubtitleRequest):
    """``request_id`` names an existing request made with different parameters.

    Nothing was written. The same id with the same parameters returns the first
    request; a new ask needs a new id. ``field`` is ``"request_id"``.
    """


class JoinLimitReached(InvalidSubtitleRequest):
    """The generation in flight for this upload and language already has the most
    subscribers allowed (``SUBTITLE_TASKS_MAX_JOINS``); nothing was written.

    Ask again once it has finished, or fan out from one callback of your own.
    ``field`` is ``"upload_id"``.
    """


class StateUnavailable(RuntimeError):
    """The Redis holding request state could not be reached; nothing was written.

    Safe to retry (with ``request_id=`` the retry cannot create a second request);
    a web app would answer 503. It means only that: a refusal by a reachable Redis
    is :class:`StateError`.
    """


class StateError(RuntimeError):
    """The state's Redis answered but refused the call (a corrupted key, a script error).

    Every script checks before it writes, so nothing was written; retrying will fail
    the same way until an operator looks (the message says what Redis said).
    """


class UnknownRequest(LookupError):
    """No state is kept for this request id (never existed, or past its retention)."""


def code_for_api_error(exc: api.DatoCMSError) -> ErrorCode:
    """The one ErrorCode a permanent API failure ends a request with."""
    if isinstance(exc, api.Unauthorized):
        return ErrorCode.UNAUTHORIZED
    if isinstance(exc, api.Forbidden):
        return ErrorCode.FORBIDDEN
    if isinstance(exc, api.NotFound):
        return ErrorCode.UPLOAD_NOT_FOUND
    if isinstance(exc, api.SandboxImmutable) or exc.code == api.SandboxImmutable.API_CODE:
        # The same refusal whether the POST or its job reported it.
        return ErrorCode.SANDBOX_IMMUTABLE
    if isinstance(exc, api.JobFailed):
        return ErrorCode.JOB_FAILED
    if isinstance(exc, api.InvalidRequest):
        return ErrorCode.INVALID_REQUEST
    return ErrorCode.PROTOCOL_ERROR


def error_fields(code: ErrorCode, message: str, exc: api.DatoCMSError | None = None) -> dict[str, Any]:
    """The generation-level part of an error dict (request fields are added per request)."""
    return {
        "code": code.value,
        "message": message,
        "api_code": getattr(exc, "code", None),
        "api_status": getattr(exc, "status", None),
        "api_request_id": getattr(exc, "request_id", None),
    }
