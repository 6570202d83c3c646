"""Generate-subtitles jobs: what a POST must hold to start one, the job record, what it reports.

Timing
------
A job finishes ``job_seconds`` after its POST was accepted. Its track then
stays ``preparing`` for ``preparing_seconds`` before turning ``ready`` (or
``errored``). The job result is a snapshot taken when the job finished, so it
shows ``preparing`` unless ``preparing_seconds`` is 0. Nothing runs in the
background: every status is computed from ``time.monotonic()`` timestamps
when asked for, so holding 100,000 pending jobs costs only their records.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .replies import _error_document, _error_reply, _Reply

ERRORED_TRACK_MESSAGE = "Subtitles could not be generated for this asset (simulated error)"
ACCEPTED_CONTENT_TYPES = ("application/vnd.api+json", "application/json")
SANDBOX_IMMUTABLE = "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT"

# A plausible BCP 47 tag: language, optional script, optional region, variants.
_LANGUAGE_TAG = re.compile(
    r"[A-Za-z]{2,3}"
    r"(?:-[A-Za-z]{4})?"
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"
)


@dataclass(slots=True)
class _Job:
    """One generate-subtitles job; kept small because benchmarks hold 100k."""

    job_id: str
    upload_id: str
    environment: str | None
    language_code: str
    name: str | None
    kind: str
    done_at: float  # math.inf for a stuck job
    preparing_seconds: float

    @property
    def track_id(self) -> str:
        return f"sim-track-{self.job_id}"

    def is_done(self, now: float) -> bool:
        return now >= self.done_at

    def creates_track(self) -> bool:
        return self.kind not in ("no-audio", "mux-error")

    def track_status(self, now: float) -> str:
        if now < self.done_at + self.preparing_seconds:
            return "preparing"
        return "errored" if self.kind == "errored" else "ready"


def _validate_attributes(attributes: dict[str, Any]) -> tuple[str, str | None] | _Reply:
    language_code = attributes.get("language_code")
    if language_code is None:
        return _error_reply(422, "INVALID_FIELD",
                            {"field": "language_code", "code": "VALIDATION_REQUIRED"})
    if not isinstance(language_code, str) or not _LANGUAGE_TAG.fullmatch(language_code):
        return _error_reply(422, "INVALID_FIELD", {
            "field": "language_code", "code": "VALIDATION_FORMAT", "value": language_code,
            "message": "must be a valid BCP 47 language tag",
        })
    name = attributes.get("name")
    if name is not None and not isinstance(name, str):
        return _error_reply(422, "INVALID_FIELD", {"field": "name", "code": "VALIDATION_FORMAT"})
    return language_code, name


def _track_resource(job: _Job, status: str) -> dict[str, Any]:
    return {
        "id": job.track_id,
        "type": "upload_track",
        "attributes": {
            "type": "subtitles",
            "name": job.name,
            "language_code": job.language_code,
            "closed_captions": False,
            "status": status,
            "error": ERRORED_TRACK_MESSAGE if status == "errored" else None,
        },
        "relationships": {"upload": {"data": {"type": "upload", "id": job.upload_id}}},
    }


def _job_outcome(job: _Job) -> tuple[int, dict[str, Any]]:
    """The (status, payload) a finished job reports: a snapshot taken when it finished."""
    if job.kind == "no-audio":
        return 422, _error_document("NO_PRIMARY_AUDIO_TRACK", {"upload_id": job.upload_id})
    if job.kind == "mux-error":
        return 500, _error_document("MUX_ERROR", {"upload_id": job.upload_id})
    return 200, {"data": _track_resource(job, job.track_status(job.done_at))}
