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

import json
import logging
from typing import Any, Iterable

from celery import Celery
from celery.canvas import Signature, signature

from .errors import InvalidSubtitleRequest
from .handoff import NotTransactional, handoff
from .state import FAILED, FINISHING, OUTCOME_READY, READY, Generation, RequestRecord, Store

log = logging.getLogger("subtitle_tasks.callbacks")


# Signature keys whose default values are not stored: a stored request stays a compact
# Redis hash only while each value is short (64 bytes by default).
_SIGNATURE_DEFAULTS = {"args": [], "kwargs": {}, "options": {}, "subtask_type": None, "immutable": False}


def compact(sig: dict) -> dict:
    return {k: v for k, v in sig.items() if not (k in _SIGNATURE_DEFAULTS and v == _SIGNATURE_DEFAULTS[k])}


def expand(stored: dict) -> dict:
    return {**{k: (v.copy() if isinstance(v, (list, dict)) else v) for k, v in _SIGNATURE_DEFAULTS.items()},
            **stored}


def normalize(field: str, callbacks: Any) -> list[dict]:
    """None, a signature or a list of them -> compact JSON-safe dicts (or InvalidSubtitleRequest)."""
    if callbacks is None:
        return []
    items: Iterable[Any] = callbacks if isinstance(callbacks, (list, tuple)) else [callbacks]
    out = []
    for item in items:
        if not isinstance(item, (Signature, dict)) or "task" not in item:
            raise InvalidSubtitleRequest(field, f"expected Celery signatures (task.s(...)), got {type(item).__name__}")
        plain = dict(signature(item))
        try:
            # Round-trip now: a callback that cannot travel as JSON must fail in the web
            # request, not hours later in a worker.
            out.append(compact(json.loads(json.dumps(plain))))
        except (TypeError, ValueError) as exc:
            raise InvalidSubtitleRequest(field, f"callback {plain.get('task')!r} is not JSON-serialisable: {exc}") from None
    return out


def error_payload(request: RequestRecord, generation: Generation | None) -> dict:
    """The error dict an on_error callback receives (see errors.py for the vocabulary)."""
    base = request.error or (generation.result if generation else None) or {
        "code": "protocol_error", "message": "the generation's state expired before its callbacks were sent",
    }
    payload = {
        "code": base.get("code"),
        "message": base.get("message"),
        "request_id": request.id,
        "upload_id": request.upload_id,
        "language_code": request.language_code,
        "api_code": base.get("api_code"),
        "api_status": base.get("api_status"),
        "api_request_id": base.get("api_request_id"),
        "job_id": generation.job_id if generation else None,
        "track_id": generation.track_id if generation else None,
    }
    return payload


_ROUTING_OPTIONS = ("queue", "routing_key", "exchange")

# Message header on every callback we send: "request_id|kind|index".
CALLBACK_HEADER = "subtitle_tasks_callback"


def callback_task_id(request_id: str, kind: str, index: int) -> str:
    """The stable task id of a request's ``index``-th ``kind`` ("ready"/"error") callback."""
    return f"{request_id}-{kind}-{index}"


class Notifier:
    def __init__(self, store: Store, app: Celery, lock_ttl: float, default_queue: str | None = None):
        self.store = store
        self.app = app
        self.lock_ttl = lock_ttl
        # For a callback that names no queue of its own. A dedicated fleet sets it (to
        # "celery") so the app's tasks reach the app's workers, not ours.
        self.default_queue = default_queue

    def notify(self, request_id: str) -> str:
        """Send a finishing request's callbacks once; returns what happened (for logs/tests)."""
        token = self.store.lock(f"notify:{request_id}", self.lock_ttl)
        if token is None:
            return "busy"
        try:
            request = self.store.load_request(request_id)
            if request is None or request.state != FINISHING:
                return "already-settled"
            final, kind, callbacks, first_arg = self._decision(request)
            settled = self._send_and_settle(request.id, final, kind, callbacks, first_arg)
            log.info("request %s %s", request_id, final)
            return final if settled else "already-settled"
        finally:
            self.store.unlock(f"notify:{request_id}", token)

    def _decision(self, request: RequestRecord) -> tuple[str, str, list[dict], Any]:
        """(final state, callback kind, its signatures, their first argument) for a decided request."""
        generation = self.store.load_generation(request.generation_id)
        if request.error is None and request.outcome == OUTCOME_READY and generation and generation.result:
            return READY, "ready", request.on_ready, generation.result
        return FAILED, "error", request.on_error, error_payload(request, generation)

    def resend(self, request_id: str, kind: str, index: int) -> bool:
        """Publish one callback of a settled request again, under its same task id.

        For a callback whose message was lost with the worker that held it. Returns
        False when the request, or that callback, no longer exists.
        """
        request = self.store.load_request(request_id)
        if request is None or request.state not in (READY, FAILED):
            return False
        _, decided_kind, callbacks, first_arg = self._decision(request)
        if kind != decided_kind or not 0 <= index < len(callbacks):
            return False
        with self.app.producer_or_acquire() as producer:
            self._publish_one(producer, request_id, kind, index, callbacks[index], first_arg, retry=True)
        return True

    def _send_and_settle(self, request_id: str, final: str, kind: str, callbacks: list[dict],
                         first_arg: Any) -> bool:
        if not callbacks:
            return self.store.settle(request_id, final)
        with self.app.producer_or_acquire() as producer:
            db = handoff.broker_db(producer, self.store)
            if db is not None:
                try:
                    writes = handoff.capture(
                        producer, db, lambda p: self._publish(p, request_id, kind, callbacks, first_arg, retry=False))
                except NotTransactional as exc:
                    log.warning("request %s: %s; publishing before settling instead", request_id, exc)
                else:
                    return self.store.settle(request_id, final, writes)
            self._publish(producer, request_id, kind, callbacks, first_arg, retry=True)
        return self.store.settle(request_id, final)

    def _publish(self, producer: Any, request_id: str, kind: str, callbacks: list[dict], first_arg: Any,
                 retry: bool) -> None:
        for index, raw in enumerate(callbacks):
            self._publish_one(producer, request_id, kind, index, raw, first_arg, retry)

    def _publish_one(self, producer: Any, request_id: str, kind: str, index: int, raw: dict, first_arg: Any,
                     retry: bool) -> None:
        sig = signature(expand(raw), app=self.app)
        routing = {}
        if self.default_queue and not any(sig.options.get(k) for k in _ROUTING_OPTIONS):
            routing = {"queue": self.default_queue}
        # A stable task id per callback: a repeat (publish-then-settle on RabbitMQ)
        # carries the same id, so a consumer that must act once can key on it. The
        # header marks the message as ours for the receiving worker (callback_watch).
        sig.apply_async(args=(first_arg,), producer=producer, retry=retry,
                        task_id=callback_task_id(request_id, kind, index),
                        headers={CALLBACK_HEADER: f"{request_id}|{kind}|{index}"}, **routing)
