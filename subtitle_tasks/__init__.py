"""subtitle-tasks: DatoCMS subtitle generation as reliable Celery work.

    from subtitle_tasks import request_subtitles
    handle = request_subtitles(upload_id, "it-IT", on_ready=publish.s(pk), on_error=alert.s(pk))

Workers: ``celery -A subtitle_tasks worker`` (dedicated fleet) or
``subtitle_tasks.init_app(app)`` on an existing Celery app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import RequestHandle, cancel, check_request, request_subtitles, status
from .celery_app import InitReport, init_app
from .errors import (
    ErrorCode,
    IdempotencyConflict,
    InvalidSubtitleRequest,
    JoinLimitReached,
    StateError,
    StateUnavailable,
    UnknownRequest,
)
from .once import OnceTask
from .settings import ConfigurationError, Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "ErrorCode",
    "IdempotencyConflict",
    "InitReport",
    "InvalidSubtitleRequest",
    "JoinLimitReached",
    "OnceTask",
    "RequestHandle",
    "Settings",
    "StateError",
    "StateUnavailable",
    "UnknownRequest",
    "__version__",
    "cancel",
    "check_request",
    "init_app",
    "load_settings",
    "request_subtitles",
    "status",
]

if TYPE_CHECKING:
    from celery import Celery

_app: Celery | None = None  # the dedicated app, once `celery -A subtitle_tasks` asked for it


def __getattr__(name: str) -> Any:
    # `celery -A subtitle_tasks worker` looks up `subtitle_tasks.app`. Built lazily so
    # that merely importing this package in a web app creates no second Celery app.
    global _app
    if name == "app":
        if _app is None:
            from .celery_app import create_app

            _app = create_app()
        return _app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
