"""The edge: what a web request calls. One Redis round trip, no broker, no API call."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec, TypedDict, TypeVar

import redis

from . import logs, schedule, validation
from .callbacks import encoded_size, error_payload, normalize
from .errors import (
    ErrorCode,
    IdempotencyConflict,
    InvalidSubtitleRequest,
    JoinLimitReached,
    StateError,
    StateUnavailable,
    UnknownRequest,
)
from .runtime import Runtime, attached, runtime_for
from .settings import Settings
from .sites import Site, SiteRegistry
from .state.base import DONE, OUTCOME_ERROR, OUTCOME_READY, WAITING

log = logging.getLogger("subtitle_tasks")


MAX_LANGUAGES = 22  # every language Mux captions, once each


def _current_app() -> Any:
    from celery import current_app

    return current_app._get_current_object()


def new_id() -> str:
    """128 random bits in 22 URL-safe characters (ids are repeated in several keys)."""
    return secrets.token_urlsafe(16)


# Redis could not be reached, or could not take a write now: nothing was written and a
# retry may succeed. Any other Redis error is a refusal (StateError).
_UNREACHABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _state_errors_as_unavailable(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Redis trouble reaches the web app as one clear exception whose class says what to do."""
    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except _UNREACHABLE as exc:
            raise StateUnavailable(f"request state store unreachable ({type(exc).__name__})") from None
        except redis.exceptions.RedisError as exc:
            raise StateError(f"request state store refused the call ({type(exc).__name__}: {str(exc)[:300]})") from None
    return wrapper


def fingerprint(**params: Any) -> str:
    """A short digest of a request's parameters: the same request id must mean the same ask."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()[:12]).decode()


@dataclass(frozen=True)
class RequestHandle:
    """What request_subtitles returns: keep ``id`` to ask for status or cancel later."""

    id: str
    generation_id: str
    joined: bool  # shares a generation already in flight for the same upload and language

    def status(self) -> RequestStatus:
        return status(self.id)

    def cancel(self) -> bool:
        return cancel(self.id)


@dataclass(frozen=True)
class _Checked:
    """One request's input after every edge check, ready for its single create call."""

    request_id: str
    upload_id: str
    language_code: str
    name: str | None
    site: Site
    on_ready: list[dict[str, Any]]
    on_error: list[dict[str, Any]]
    ttl: float
    fingerprint: str
    duration_band: int | None = None


def _check(settings: Settings, sites: SiteRegistry, upload_id: Any, language_code: Any, *, name: Any,
           on_ready: Any, on_error: Any, deadline: Any, request_id: Any, check_language: bool,
           site: Any, upload_duration: Any = None) -> _Checked:
    """Every check request_subtitles makes, with no I/O (InvalidSubtitleRequest on a failure)."""
    target = validation.site(site, sites)
    upload_id = validation.upload_id(upload_id)
    language_code = validation.language_code(language_code, check_supported=check_language)
    name = validation.track_name(name)
    ttl = validation.deadline(deadline, settings.deadline)
    rid = validation.request_id(request_id) or new_id()
    # A hint, not part of the ask: the fingerprint leaves it out, so a retry may differ in it.
    band = schedule.duration_band(validation.upload_duration(upload_duration))
    ready = normalize("on_ready", on_ready, key_prefix=settings.key_prefix)
    error = normalize("on_error", on_error, key_prefix=settings.key_prefix)
    size = encoded_size(ready, error)
    if size > settings.max_callback_bytes:
        raise InvalidSubtitleRequest(
            "on_ready" if encoded_size(ready) >= encoded_size(error) else "on_error",
            f"callbacks take {size} bytes as JSON, over the {settings.max_callback_bytes} allowed "
            "(SUBTITLE_TASKS_MAX_CALLBACK_BYTES): pass ids your task can look up, not payloads")
    digest = fingerprint(upload_id=upload_id, language_code=language_code, name=name,
                         environment=target.environment, on_ready=ready, on_error=error, deadline=deadline,
                         site=target.alias)
    return _Checked(rid, upload_id, language_code, name, target, ready, error, ttl, digest, band)


def _create(runtime: Runtime, checked: _Checked) -> RequestHandle:
    """The one Redis round trip of a checked request."""
    settings = runtime.settings
    created = runtime.store.create_request(
        request_id=checked.request_id, generation_id=new_id(), upload_id=checked.upload_id,
        language_code=checked.language_code, name=checked.name, environment=checked.site.environment,
        on_ready=checked.on_ready, on_error=checked.on_error, ttl=checked.ttl, fingerprint=checked.fingerprint,
        max_joins=settings.max_joins, site=checked.site.alias, duration_band=checked.duration_band,
    )
    if created.conflict:
        raise IdempotencyConflict("request_id", f"request {checked.request_id!r} exists with other parameters; "
                                                "use a new request id for a new ask")
    if created.full:
        raise JoinLimitReached("upload_id", f"the generation in flight for {checked.upload_id} "
                                            f"({checked.language_code}) already has {settings.max_joins} requests "
                                            "(SUBTITLE_TASKS_MAX_JOINS); ask again when it has finished")
    log.info("request %s for upload %s (%s, site %s) %s generation %s", checked.request_id, checked.upload_id,
             checked.language_code, checked.site.label, "joined" if created.joined else "started",
             created.generation_id,
             extra=logs.context(request_id=checked.request_id, generation_id=created.generation_id,
                                site=checked.site.label, upload_id=checked.upload_id,
                                language_code=checked.language_code))
    return RequestHandle(checked.request_id, created.generation_id, created.joined)


@_state_errors_as_unavailable
def request_subtitles(upload_id: str, language_code: str, *, name: str | None = None,
                      on_ready: Any = None, on_error: Any = None, deadline: float | None = None,
                      request_id: str | None = None, check_language: bool = True,
                      site: str | None = None, upload_duration: float | None = None,
                      app: Any = None) -> RequestHandle:
    """Ask for a subtitles track; returns at once.

    Raises InvalidSubtitleRequest (or its subclasses IdempotencyConflict and
    JoinLimitReached) on input that cannot be accepted, StateUnavailable when Redis
    is unreachable (retry) and StateError when it refused; in every case nothing was
    written.

    ``on_ready`` signatures get the ready ``upload_track`` resource as first argument,
    ``on_error`` signatures an error dict (see errors.py); exactly one kind fires, once.
    ``request_id`` makes the call idempotent: the same id with the same parameters
    returns the same request; with other parameters it raises IdempotencyConflict.
    ``site``: the alias of a configured site (SUBTITLE_TASKS_SITES); None for the one
    DATOCMS_API_TOKEN describes. No token is needed here: only workers read tokens.
    ``upload_duration``: the video's length in seconds, if the caller knows it (the
    sweep does); a hint only, for the learned poll schedule, which plans from the
    timing of uploads of about that length once the site's data show it predicts.
    ``app``: the Celery app whose settings apply, when init_app wired several
    (``runtime.runtime_for`` says which one is used without it).
    """
    runtime = runtime_for(app)
    return _create(runtime, _check(
        runtime.settings, runtime.sites, upload_id, language_code, name=name, on_ready=on_ready,
        on_error=on_error, deadline=deadline, request_id=request_id, check_language=check_language, site=site,
        upload_duration=upload_duration))


def check_request(upload_id: str, language_code: str, *, name: str | None = None, on_ready: Any = None,
                  on_error: Any = None, deadline: float | None = None, request_id: str | None = None,
                  check_language: bool = True, site: str | None = None, upload_duration: float | None = None,
                  app: Any = None) -> None:
    """Every check request_subtitles makes, with no I/O: raises InvalidSubtitleRequest or returns.

    For a view that asks from ``transaction.on_commit``: it can answer 400 before its
    transaction commits. What only Redis can tell (IdempotencyConflict,
    JoinLimitReached, StateUnavailable) still comes from request_subtitles.
    """
    runtime = runtime_for(app)
    _check(runtime.settings, runtime.sites, upload_id, language_code, name=name, on_ready=on_ready,
           on_error=on_error, deadline=deadline, request_id=request_id, check_language=check_language, site=site,
           upload_duration=upload_duration)


def language_request_id(request_id: str, language_code: str, several: bool) -> str:
    """The request id of one language of a multi-language ask: ``{id}.{language}``."""
    return f"{request_id}.{language_code}" if several else request_id


@_state_errors_as_unavailable
def request_languages(upload_id: str, language_codes: Any, *, request_id: str | None = None,
                      app: Any = None, **options: Any) -> list[RequestHandle]:
    """``request_subtitles`` for one or more languages of an upload, all checked before any write.

    ``language_codes`` is a tag or a list of distinct tags. With ``request_id`` each
    language's request id is ``{request_id}.{tag}`` (just ``request_id`` for a single
    tag), so repeating the call with the same id is idempotent; without it each gets a
    new id. Takes request_subtitles' other keyword arguments.
    """
    codes = [language_codes] if isinstance(language_codes, str) else language_codes
    if not isinstance(codes, (list, tuple)) or not codes or len(codes) > MAX_LANGUAGES:
        raise InvalidSubtitleRequest("language_code", f"expected 1-{MAX_LANGUAGES} language tags, "
                                                      f"got {validation._show(language_codes)}")
    if len({c.lower() if isinstance(c, str) else c for c in codes}) != len(codes):
        raise InvalidSubtitleRequest("language_code", "the same language is asked for twice")
    runtime = runtime_for(app)
    base = validation.request_id(request_id)
    several = len(codes) > 1
    checked = [_check(runtime.settings, runtime.sites, upload_id, code,
                      request_id=language_request_id(base, code, several) if base and isinstance(code, str) else None,
                      **{"name": None, "on_ready": None, "on_error": None, "deadline": None, "check_language": True,
                         "site": None, **options})
               for code in codes]
    return [_create(runtime, c) for c in checked]


class RequestStatus(TypedDict):
    """What :func:`status` returns (the CLI prints it as JSON)."""

    request_id: str
    site: str | None
    state: str
    upload_id: str
    language_code: str
    generation_id: str
    phase: str | None
    job_id: str | None
    track_id: str | None
    attempts: int | None
    next_poll_in: float | None
    created_at: float
    deadline_at: float
    finished_at: float | None
    error: dict[str, Any] | None
    track: dict[str, Any] | None
    undelivered_callbacks: list[dict[str, Any]]


@_state_errors_as_unavailable
def status(request_id: str, *, app: Any = None) -> RequestStatus:
    """Where a request stands: state, upload, language, job id, track id, attempts, error."""
    store = runtime_for(app).store
    request = store.load_request(request_id)
    if request is None:
        raise UnknownRequest(f"no request {request_id!r} (unknown, or past its retention)")
    gen = store.load_generation(request.generation_id)
    # The very dict on_error received (or will receive), built by the same function.
    error = error_payload(request, gen) if request.outcome == OUTCOME_ERROR else None
    return {
        "request_id": request.id,
        "site": (gen.site or None) if gen else None,  # None: the default site
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
        # Callbacks given up after SUBTITLE_TASKS_CALLBACK_ATTEMPTS failed hand-overs.
        "undelivered_callbacks": list(request.undelivered),
    }


@_state_errors_as_unavailable
def cancel(request_id: str, *, app: Any = None) -> bool:
    """End a waiting request now with a ``cancelled`` error callback. False if it had ended."""
    runtime = runtime_for(app)
    error = {"code": ErrorCode.CANCELLED.value, "message": "cancelled by subtitle_tasks.cancel()"}
    before = runtime.store.cancel(request_id, error)
    if before == "unknown":
        raise UnknownRequest(f"no request {request_id!r} (unknown, or past its retention)")
    if before != WAITING:
        return False
    # Its error callback goes out from a worker; if this publish fails, recovery sends it.
    try:
        from .publisher import publishing_app

        wired = next((a for a in (app, _current_app()) if a is not None and attached(a) is runtime), None)
        publishing_app(wired, runtime.settings).send_task("subtitle_tasks.notify", args=[request_id],
                                                          queue=runtime.settings.step_queue)
    except Exception as exc:  # the request is already cancelled; only the callback is delayed
        log.warning("cancel %s: could not enqueue its callback now (%s); recovery will", request_id, exc)
    return True
