"""Follow-up callbacks: checked at the edge, stored as JSON, fired exactly once.

Firing protocol (the only place callbacks are sent)::

    lock P:lock:notify:{request}  ->  request still "finishing"?  ->  hand over signatures
    and settle (finishing -> ready|failed)  ->  unlock

The finishing mark is set atomically by the step that decided the outcome, so only
one process ever starts notifying a request; the lock keeps a recovering sweeper off
a notifier that is merely slow. How the signatures reach the broker, and why that is
exactly once on a Redis broker and at least once (same task id) on RabbitMQ, is
``handoff.py``'s business.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis
from celery import Celery
from celery.canvas import Signature, signature
from kombu.exceptions import OperationalError

from . import validation
from .errors import ErrorCode, InvalidSubtitleRequest, error_fields
from .handoff import HandoffUnsupported, handoff
from .metrics import DECIDED_AT_HEADER
from .settings import Settings
from .state.base import FAILED, FINISHING, OUTCOME_READY, READY, BrokerWrites, Generation, RequestRecord, Store

log = logging.getLogger("subtitle_tasks.callbacks")


# Signature keys whose default values are not stored: a stored request stays a compact
# Redis hash only while each value is short (64 bytes by default).
_SIGNATURE_DEFAULTS: dict[str, Any] = {"args": [], "kwargs": {}, "options": {}, "subtask_type": None,
                                       "immutable": False}


def compact(sig: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sig.items() if not (k in _SIGNATURE_DEFAULTS and v == _SIGNATURE_DEFAULTS[k])}


def expand(stored: Mapping[str, Any]) -> dict[str, Any]:
    return {**{k: (v.copy() if isinstance(v, (list, dict)) else v) for k, v in _SIGNATURE_DEFAULTS.items()},
            **stored}


# Options a callback may carry. Everything else is refused: routing and timing are the
# caller's business; serialisation, ids, links and retries are ours (and JSON only).
ALLOWED_OPTIONS = frozenset({"queue", "exchange", "routing_key", "priority", "countdown", "expires",
                             "time_limit", "soft_time_limit", "ignore_result", "shadow"})
_SIGNATURE_KEYS = frozenset(_SIGNATURE_DEFAULTS) | {"task", "chord_size"}
_TASK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
MAX_CALLBACKS = 20  # per kind (on_ready, on_error)
_LONGEST_WAIT = 30 * 86400.0


def normalize(field: str, callbacks: Any, *, key_prefix: str = "subtitle_tasks") -> list[dict[str, Any]]:
    """None, a signature or a list of them -> compact JSON-safe dicts, or InvalidSubtitleRequest.

    Every check a callback could fail later, in a worker, is made here: shape, task name,
    options (``ALLOWED_OPTIONS``), broker names, JSON. Canvas (chain, group, chord) is
    refused: start it from a task of your own.
    """
    if callbacks is None:
        return []
    if isinstance(callbacks, (list, tuple)):
        items = list(callbacks)
    elif isinstance(callbacks, dict):  # a Signature is a dict too
        items = [callbacks]
    else:
        raise InvalidSubtitleRequest(field, f"expected a Celery signature (task.s(...)) or a list of them, "
                                            f"got {type(callbacks).__name__}")
    if len(items) > MAX_CALLBACKS:
        raise InvalidSubtitleRequest(field, f"{len(items)} callbacks; at most {MAX_CALLBACKS} per kind")
    return [_checked(field, item, key_prefix) for item in items]


def _checked(field: str, item: Any, key_prefix: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise InvalidSubtitleRequest(field, f"expected Celery signatures (task.s(...)), got {type(item).__name__}")
    plain = dict(item)
    unknown = set(plain) - _SIGNATURE_KEYS
    if unknown:
        raise InvalidSubtitleRequest(field, "not a signature: unexpected key(s) "
                                            f"{', '.join(sorted(map(str, unknown)))}")
    if plain.get("subtask_type") is not None or plain.get("chord_size") is not None:
        raise InvalidSubtitleRequest(
            field, f"canvas callbacks ({plain.get('subtask_type') or 'chord'}) are not supported: pass plain "
                   "signatures, and start a chain, group or chord from a task of your own")
    task = plain.get("task")
    if not isinstance(task, str) or not _TASK_NAME.fullmatch(task):
        raise InvalidSubtitleRequest(field, "a callback's task must be a task name such as 'myapp.tasks.publish'")
    args, kwargs = plain.get("args", []), plain.get("kwargs", {})
    if not isinstance(args, (list, tuple)):
        raise InvalidSubtitleRequest(field, f"callback {task!r}: args must be a list, got {type(args).__name__}")
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) for k in kwargs):
        raise InvalidSubtitleRequest(field, f"callback {task!r}: kwargs must be a dict with string keys")
    if not isinstance(plain.get("immutable", False), bool):
        raise InvalidSubtitleRequest(field, f"callback {task!r}: immutable must be true or false")
    options = plain.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidSubtitleRequest(field, f"callback {task!r}: options must be a dict, got {type(options).__name__}")
    for name, value in options.items():
        _check_option(field, task, name, value, key_prefix)
    try:
        # Round-trip now: a callback that cannot travel as JSON must fail in the web
        # request, not hours later in a worker.
        return compact(json.loads(json.dumps(
            {"task": task, "args": list(args), "kwargs": kwargs, "options": options,
             "subtask_type": None, "immutable": plain.get("immutable", False)}, allow_nan=False)))
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidSubtitleRequest(field, f"callback {task!r} is not JSON-serialisable: {str(exc)[:200]}") from None


def _check_option(field: str, task: str, name: Any, value: Any, key_prefix: str) -> None:
    if name not in ALLOWED_OPTIONS:
        raise InvalidSubtitleRequest(field, f"callback {task!r}: option {str(name)[:40]!r} is not allowed "
                                            f"(allowed: {', '.join(sorted(ALLOWED_OPTIONS))})")
    if name in ("queue", "exchange", "routing_key"):
        validation.broker_name(field, name, value, key_prefix)
    elif name == "priority":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
            raise InvalidSubtitleRequest(field, f"callback {task!r}: priority must be a whole number 0-255")
    elif name in ("countdown", "expires", "time_limit", "soft_time_limit"):
        low_ok: Callable[[float], bool] = (lambda v: v >= 0) if name == "countdown" else (lambda v: v > 0)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not (low_ok(value) and value <= _LONGEST_WAIT)):
            raise InvalidSubtitleRequest(field, f"callback {task!r}: {name} must be a number of seconds "
                                                f"up to 30 days")
    elif name == "ignore_result":
        if not isinstance(value, bool):
            raise InvalidSubtitleRequest(field, f"callback {task!r}: ignore_result must be true or false")
    elif name == "shadow" and (not isinstance(value, str) or not _TASK_NAME.fullmatch(value)):
        raise InvalidSubtitleRequest(field, f"callback {task!r}: shadow must be a task name")


def encoded_size(*callback_lists: list[dict[str, Any]]) -> int:
    """Bytes the normalised callbacks take as stored JSON (the per-request cap's measure)."""
    return sum(len(json.dumps(c, separators=(",", ":")).encode()) for c in callback_lists if c)


def report_refusal(app: Celery, default_queue: str | None, message_id: str, exc: InvalidSubtitleRequest,
                   on_error: Any, upload_id: Any, language_codes: Any) -> bool:
    """Send ``on_error`` the refusal of a request that came as a message (``subtitle_tasks.request``).

    The web edge raises instead; a message has no caller to raise to. Only an on_error
    that is itself a valid signature is used (if it is the bad argument, the log line
    is all there is). Returns whether a callback was sent.
    """
    try:
        callbacks = normalize("on_error", on_error)
    except InvalidSubtitleRequest:
        return False
    error = {**_error_dict(error_fields(ErrorCode.INVALID_ARGUMENTS, str(exc)), request_id=None, site=None,
                           upload_id=upload_id if isinstance(upload_id, str) else None,
                           language_code=language_codes if isinstance(language_codes, str) else None),
             "field": exc.field}
    for index, raw in enumerate(callbacks):
        sig = signature(expand(raw), app=app)
        routing = _default_routing(sig, default_queue)
        sig.apply_async(args=(error,), task_id=f"{message_id}-refused-{index}", **routing)
    return bool(callbacks)


def _default_routing(sig: Signature, default_queue: str | None) -> dict[str, str]:
    """Where a callback that names no queue of its own goes (a dedicated fleet sets it)."""
    if default_queue and not any(sig.options.get(k) for k in _ROUTING_OPTIONS):
        return {"queue": default_queue}
    return {}


def error_payload(request: RequestRecord, generation: Generation | None) -> dict[str, Any]:
    """The error dict an on_error callback receives (see errors.py for the vocabulary)."""
    base = request.error or (generation.result if generation else None) or {
        "code": "protocol_error", "message": "the generation's state expired before its callbacks were sent",
    }
    return _error_dict(base, request_id=request.id, site=(generation.site or None) if generation else None,
                       upload_id=request.upload_id, language_code=request.language_code,
                       job_id=generation.job_id if generation else None,
                       track_id=generation.track_id if generation else None)


def _error_dict(base: Mapping[str, Any], *, request_id: str | None, site: str | None, upload_id: str | None,
                language_code: str | None, job_id: str | None = None, track_id: str | None = None) -> dict[str, Any]:
    """Every error dict's keys, in one place (README.md, "Error codes")."""
    return {
        "code": base.get("code"),
        "message": base.get("message"),
        "request_id": request_id,
        "site": site,
        "upload_id": upload_id,
        "language_code": language_code,
        "api_code": base.get("api_code"),
        "api_status": base.get("api_status"),
        "api_request_id": base.get("api_request_id"),
        "job_id": job_id,
        "track_id": track_id,
    }


_ROUTING_OPTIONS = ("queue", "routing_key", "exchange")

# Message header on every callback we send: "request_id|kind|index".
CALLBACK_HEADER = "subtitle_tasks_callback"


def callback_task_id(request_id: str, kind: str, index: int) -> str:
    """The stable task id of a request's ``index``-th ``kind`` ("ready"/"error") callback."""
    return f"{request_id}-{kind}-{index}"


# Failures that say the broker or Redis is away, not that a callback is bad: they never
# count toward giving a callback up (an outage must not drop callbacks).
_OUTAGES = (OperationalError, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError,
            HandoffUnsupported)


def is_outage(exc: BaseException) -> bool:
    """An outage, unless the broker answered with a refusal (kombu wraps Redis's WRONGTYPE
    and the like in the same OperationalError it uses for a lost connection)."""
    if not isinstance(exc, _OUTAGES):
        return False
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, redis.exceptions.ResponseError) or "WRONGTYPE" in str(current):
            return False
        current = current.__cause__ or current.__context__
    return True


class Notifier:
    def __init__(self, store: Store, app: Celery, lock_ttl: float, default_queue: str | None = None,
                 attempts: int = 5, owner: str = ""):
        self.store = store
        # The worker notifying (step_watch.py): named in the notify lock, so that if it dies
        # mid-way the step watch breaks the lock and recovery finishes within seconds.
        self.owner = owner
        self.app = app
        self.lock_ttl = lock_ttl
        # For a callback that names no queue of its own. A dedicated fleet sets it (to
        # "celery") so the app's tasks reach the app's workers, not ours.
        self.default_queue = default_queue
        # Hand-overs that may fail for a reason other than an outage before the last one
        # leaves the failing callbacks out (recorded as undelivered) and settles.
        self.attempts = max(1, attempts)

    @classmethod
    def from_settings(cls, store: Store, app: Celery, settings: Settings, owner: str = "") -> Notifier:
        return cls(store, app, lock_ttl=settings.lease, default_queue=settings.callback_queue,
                   attempts=settings.callback_attempts, owner=owner)

    def notify(self, request_id: str) -> str:
        """Send a finishing request's callbacks once; returns what happened (for logs/tests).

        "deferred": the hand-over failed and the request stays finishing; recovery tries
        again after a lease.
        """
        token = self.store.lock(f"notify:{request_id}", self.lock_ttl, owner=self.owner)
        if token is None:
            return "busy"
        try:
            request = self.store.load_request(request_id)
            if request is None or request.state != FINISHING:
                return "already-settled"
            final, kind, callbacks, first_arg = self._decision(request)
            give_up = request.notify_failures + 1 >= self.attempts
            try:
                settled = self._send_and_settle(request, final, kind, callbacks, first_arg, give_up)
            except Exception as exc:
                if is_outage(exc):
                    log.warning("request %s: callbacks not handed over (%s: %s); recovery retries",
                                request_id, type(exc).__name__, exc)
                    return "deferred"
                failures = self.store.notify_failed(request_id)
                log.warning("request %s: handing over its callbacks failed (attempt %d of %d: %s: %s)",
                            request_id, failures, self.attempts, type(exc).__name__, str(exc)[:300])
                return "deferred"
            log.info("request %s %s", request_id, final)
            return final if settled else "already-settled"
        finally:
            self.store.unlock(f"notify:{request_id}", token)

    def _decision(self, request: RequestRecord) -> tuple[str, str, list[dict[str, Any]], Any]:
        """(final state, callback kind, its signatures, their first argument) for a decided request."""
        generation = self.store.load_generation(request.generation_id)
        if request.error is None and request.outcome == OUTCOME_READY and generation and generation.result:
            return READY, "ready", request.on_ready, generation.result
        return FAILED, "error", request.on_error, error_payload(request, generation)

    def resend(self, request_id: str, kind: str, index: int) -> bool:
        """Publish one callback of a settled request again, under its same task id.

        For a callback whose message was lost with the worker that held it. Returns
        False when the request, or that callback, no longer exists (or was given up).
        """
        request = self.store.load_request(request_id)
        if request is None or request.state not in (READY, FAILED):
            return False
        _, decided_kind, callbacks, first_arg = self._decision(request)
        if kind != decided_kind or not 0 <= index < len(callbacks):
            return False
        if any(entry.get("index") == index for entry in request.undelivered):
            return False
        with self.app.producer_or_acquire() as producer:
            self._publish_one(producer, request_id, kind, index, callbacks[index], first_arg, retry=True)
        return True

    def _send_and_settle(self, request: RequestRecord, final: str, kind: str, callbacks: list[dict[str, Any]],
                         first_arg: Any, give_up: bool) -> bool:
        if not callbacks:
            return self.store.settle(request.id, final)
        undelivered: list[dict[str, Any]] = []

        def failed(index: int, exc: Exception) -> None:
            # Not the last attempt: fail it all (nothing was sent on the transactional path;
            # on the other, what was sent is recorded and not sent again).
            if not give_up or is_outage(exc):
                raise exc
            reason = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.error("request %s: giving up callback %d (%s) after %d attempts: %s",
                      request.id, index, callbacks[index].get("task"), self.attempts, reason)
            undelivered.append({"index": index, "task": callbacks[index].get("task"), "reason": reason})

        with self.app.producer_or_acquire() as producer:
            db = handoff.broker_db(producer, self.store)
            if db is not None:
                # Transactional: each callback's messages are captured on their own, so one
                # that cannot be built is left out alone; settle.lua checks the rest.
                groups: list[BrokerWrites] = []
                for index, raw in enumerate(callbacks):
                    def send(p: Any, i: int = index, r: dict[str, Any] = raw) -> None:
                        self._publish_one(p, request.id, kind, i, r, first_arg, retry=False)

                    try:
                        writes = handoff.capture(producer, db, send)
                    except Exception as exc:  # NotTransactional included: never publish for real here
                        failed(index, exc)
                        continue
                    groups.append(dataclasses.replace(writes, index=index))
                return self.store.settle(request.id, final, groups, undelivered, give_up)
            # Publish, then settle: progress is recorded after each publish, so a retry
            # never sends a sibling that already went out.
            for index in range(request.sent, len(callbacks)):
                try:
                    self._publish_one(producer, request.id, kind, index, callbacks[index], first_arg, retry=True)
                except Exception as exc:
                    failed(index, exc)
                    continue
                self.store.mark_sent(request.id, index + 1)
        return self.store.settle(request.id, final, undelivered=undelivered)

    def _publish_one(self, producer: Any, request_id: str, kind: str, index: int, raw: Mapping[str, Any],
                     first_arg: Any, retry: bool) -> None:
        sig = signature(expand(raw), app=self.app)
        routing = _default_routing(sig, self.default_queue)
        # A stable task id per callback: a repeat (publish-then-settle on RabbitMQ)
        # carries the same id, so a consumer that must act once can key on it. The
        # header marks the message as ours for the receiving worker (callback_watch).
        sig.apply_async(args=(first_arg,), producer=producer, retry=retry,
                        task_id=callback_task_id(request_id, kind, index),
                        headers={CALLBACK_HEADER: f"{request_id}|{kind}|{index}",
                                 DECIDED_AT_HEADER: repr(time.time())}, **routing)
