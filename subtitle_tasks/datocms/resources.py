"""Typed views of the few DatoCMS JSON:API objects this package reads.

Parsers are strict about what the code relies on (ids, types, the track
status) and lenient about the rest (names may be null, unknown attributes are
ignored), so that additions to an experimental API do not break polling.
Malformed input raises :class:`MalformedResource`, a ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "TRACK_STATUSES",
    "ApiErrorEntry",
    "JobResult",
    "MalformedResource",
    "Upload",
    "UploadTrack",
    "parse_api_errors",
    "parse_job_result",
]

#: Track statuses documented by DatoCMS.  Others are accepted (the API is
#: experimental) but are none of ready / errored / preparing.
TRACK_STATUSES = frozenset({"preparing", "ready", "errored"})


class MalformedResource(ValueError):
    """A JSON:API object does not have the shape this package relies on."""


def _show(value: Any) -> str:
    """A short ``repr`` for messages, whatever the value (a parser must not fail
    while describing what it refuses: ``repr`` of a huge int raises)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"
    return text if len(text) <= 80 else text[:77] + "..."


def _id_text(value: Any) -> str | None:
    """A JSON:API id as text (strings; integers tolerated), else None."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return str(value)
        except ValueError:  # past int-to-str digit limits: no id anyone issued
            return None
    return None


def _require_mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedResource(f"{what} must be an object, got {type(value).__name__}")
    return value


def _require_id(value: Any, what: str) -> str:
    # JSON:API ids are strings; tolerate integers, refuse anything else.
    text = _id_text(value)
    if text is None:
        raise MalformedResource(f"{what} must be a non-empty string, got {_show(value)}")
    return text


def _optional_str(attrs: Mapping[str, Any], key: str, what: str) -> str | None:
    value = attrs.get(key)
    if value is not None and not isinstance(value, str):
        raise MalformedResource(f"{what}.{key} must be a string or null, got {_show(value)}")
    return value


# --------------------------------------------------------------------------
# api_error documents
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiErrorEntry:
    """One ``api_error`` object of a DatoCMS error document."""

    id: str | None
    code: str | None
    transient: bool
    details: dict[str, Any]
    doc_url: str | None = None


def parse_api_errors(body: Any) -> list[ApiErrorEntry]:
    """The ``api_error`` entries of ``{"data": [{"type": "api_error", ...}]}``.

    Returns ``[]`` when ``body`` is not an error document (never raises):
    error answers are parsed on a best-effort basis, the HTTP status decides
    the rest.
    """
    if not isinstance(body, Mapping):
        return []
    data = body.get("data")
    if not isinstance(data, list):
        return []
    entries = []
    for item in data:
        if not isinstance(item, Mapping) or item.get("type") != "api_error":
            continue
        attrs = item.get("attributes")
        attrs = attrs if isinstance(attrs, Mapping) else {}
        code = attrs.get("code")
        details = attrs.get("details")
        doc_url = attrs.get("doc_url")
        raw_id = item.get("id")
        entries.append(
            ApiErrorEntry(
                id=_id_text(raw_id),
                code=code if isinstance(code, str) and code else None,
                transient=attrs.get("transient") is True,
                details=dict(details) if isinstance(details, Mapping) else {},
                doc_url=doc_url if isinstance(doc_url, str) else None,
            )
        )
    return entries


# --------------------------------------------------------------------------
# upload_track
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadTrack:
    """An ``upload_track`` resource (a subtitles or audio track of a video).

    ``resource`` is the raw JSON:API object exactly as received, meant to be
    handed to callbacks unchanged; it is left out of equality, hashing and
    ``repr``.
    """

    id: str
    upload_id: str | None
    track_type: str
    name: str | None
    language_code: str | None
    closed_captions: bool | None
    status: str
    error: str | None
    resource: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_ready(self) -> bool:
        return self.status == "ready"

    @property
    def is_errored(self) -> bool:
        return self.status == "errored"

    @property
    def is_preparing(self) -> bool:
        return self.status == "preparing"

    @classmethod
    def from_resource(cls, obj: Any, *, upload_id: str | None = None) -> UploadTrack:
        """Build from a JSON:API ``upload_track`` object.

        ``upload_id`` is read from ``relationships.upload.data.id``; the
        keyword is the fallback when the relationship is absent (e.g. when the
        track came from ``GET /uploads/{upload_id}/tracks``).

        Raises :class:`MalformedResource` when the object is not an
        ``upload_track`` or lacks an id, attributes or a string status.
        """
        obj = _require_mapping(obj, "upload_track")
        if obj.get("type") != "upload_track":
            raise MalformedResource(f"expected type 'upload_track', got {_show(obj.get('type'))}")
        track_id = _require_id(obj.get("id"), "upload_track.id")
        attrs = _require_mapping(obj.get("attributes"), "upload_track.attributes")

        status = attrs.get("status")
        if not isinstance(status, str) or not status:
            raise MalformedResource(f"upload_track.attributes.status must be a string, got {_show(status)}")
        track_type = attrs.get("type")
        if not isinstance(track_type, str) or not track_type:
            raise MalformedResource(f"upload_track.attributes.type must be a string, got {_show(track_type)}")
        closed_captions = attrs.get("closed_captions")
        if closed_captions is not None and not isinstance(closed_captions, bool):
            raise MalformedResource(
                f"upload_track.attributes.closed_captions must be a boolean or null, got {_show(closed_captions)}"
            )

        related = upload_id
        rels = obj.get("relationships")
        if isinstance(rels, Mapping):
            upload = rels.get("upload")
            data = upload.get("data") if isinstance(upload, Mapping) else None
            if isinstance(data, Mapping) and data.get("id") not in (None, ""):
                related = _require_id(data.get("id"), "upload_track.relationships.upload.data.id")

        return cls(
            id=track_id,
            upload_id=related,
            track_type=track_type,
            name=_optional_str(attrs, "name", "upload_track.attributes"),
            language_code=_optional_str(attrs, "language_code", "upload_track.attributes"),
            closed_captions=closed_captions,
            status=status,
            error=_optional_str(attrs, "error", "upload_track.attributes"),
            resource=dict(obj),
        )


# --------------------------------------------------------------------------
# job_result
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobResult:
    """A finished job: ``GET /job-results/{id}`` answered 200.

    ``status`` is the HTTP status the job's own request would have had and
    ``payload`` its JSON body (possibly ``None``).
    """

    id: str
    status: int
    payload: Any = field(repr=False, compare=False, default=None)

    @property
    def succeeded(self) -> bool:
        return 200 <= self.status < 300

    @property
    def errors(self) -> list[ApiErrorEntry]:
        """The payload's ``api_error`` entries (``[]`` when there are none)."""
        return parse_api_errors(self.payload)

    def upload_track(self) -> UploadTrack:
        """The ``upload_track`` a successful job produced.

        Raises :class:`MalformedResource` when the payload holds none.
        """
        payload = _require_mapping(self.payload, "job_result payload")
        return UploadTrack.from_resource(payload.get("data"))


def parse_job_result(body: Any) -> JobResult:
    """Parse ``{"data": {"type": "job_result", "id", "attributes": {"status", "payload"}}}``.

    Raises :class:`MalformedResource` on any other shape.
    """
    body = _require_mapping(body, "job result document")
    data = _require_mapping(body.get("data"), "job result data")
    if data.get("type") != "job_result":
        raise MalformedResource(f"expected type 'job_result', got {_show(data.get('type'))}")
    job_id = _require_id(data.get("id"), "job_result.id")
    attrs = _require_mapping(data.get("attributes"), "job_result.attributes")
    status = attrs.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise MalformedResource(f"job_result.attributes.status must be an HTTP status, got {_show(status)}")
    return JobResult(id=job_id, status=status, payload=attrs.get("payload"))


# --------------------------------------------------------------------------
# upload (GET /uploads)
# --------------------------------------------------------------------------


def _timestamp(value: Any, what: str) -> datetime:
    """An ISO 8601 date-time with a UTC offset (``Z`` included) as an aware datetime."""
    if not isinstance(value, str) or not 10 <= len(value) <= 64 or not value.isascii():
        raise MalformedResource(f"{what} must be an ISO 8601 date-time, got {_show(value)}")
    text = value[:-1] + "+00:00" if value[-1] in "Zz" else value  # Python 3.10 does not read "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except (ValueError, TypeError, OverflowError):
        raise MalformedResource(f"{what} must be an ISO 8601 date-time, got {_show(value)}") from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        # A time without an offset is ambiguous: the 7-day window must not shift by hours.
        raise MalformedResource(f"{what} has no UTC offset: {_show(value)}")
    try:
        parsed.timestamp()
    except (OverflowError, ValueError, OSError):
        raise MalformedResource(f"{what} is out of range: {_show(value)}") from None
    return parsed


def _optional_number(attrs: Mapping[str, Any], key: str, what: str) -> float | None:
    value = attrs.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedResource(f"{what}.{key} must be a number or null, got {_show(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise MalformedResource(f"{what}.{key} must be a finite number >= 0, got {_show(value)}")
    return number


@dataclass(frozen=True)
class Upload:
    """An ``upload`` resource as ``GET /uploads`` lists it (what a sweep reads of it).

    ``created_at`` is timezone-aware. ``mux_playback_id`` is null while Mux has not
    finished processing a video. ``resource`` is the raw JSON:API object, left out of
    equality, hashing and ``repr``.
    """

    id: str
    created_at: datetime
    mime_type: str | None
    is_image: bool | None
    duration: float | None
    frame_rate: float | None
    mux_playback_id: str | None
    mux_mp4_highest_res: str | None
    filename: str | None
    format: str | None
    resource: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_video(self) -> bool:
        """A video by its MIME type; without one, by having a Mux playback id (images never do)."""
        if self.mime_type:
            return self.mime_type.lower().startswith("video/")
        return self.mux_playback_id is not None and self.is_image is not True

    @property
    def on_mux(self) -> bool:
        """Whether Mux has the video ready (subtitles can be asked for)."""
        return self.mux_playback_id is not None

    @classmethod
    def from_resource(cls, obj: Any) -> Upload:
        """Build from a JSON:API ``upload`` object.

        Raises :class:`MalformedResource` when it is not an ``upload``, lacks an id,
        attributes or an offset-qualified ``created_at``, or when an attribute the
        sweep reads has the wrong type.
        """
        obj = _require_mapping(obj, "upload")
        if obj.get("type") != "upload":
            raise MalformedResource(f"expected type 'upload', got {_show(obj.get('type'))}")
        upload_id = _require_id(obj.get("id"), "upload.id")
        attrs = _require_mapping(obj.get("attributes"), "upload.attributes")
        is_image = attrs.get("is_image")
        if is_image is not None and not isinstance(is_image, bool):
            raise MalformedResource(f"upload.attributes.is_image must be a boolean or null, got {_show(is_image)}")
        what = "upload.attributes"
        return cls(
            id=upload_id,
            created_at=_timestamp(attrs.get("created_at"), "upload.attributes.created_at"),
            mime_type=_optional_str(attrs, "mime_type", what),
            is_image=is_image,
            duration=_optional_number(attrs, "duration", what),
            frame_rate=_optional_number(attrs, "frame_rate", what),
            mux_playback_id=_optional_str(attrs, "mux_playback_id", what) or None,
            mux_mp4_highest_res=_optional_str(attrs, "mux_mp4_highest_res", what),
            filename=_optional_str(attrs, "filename", what),
            format=_optional_str(attrs, "format", what),
            resource=dict(obj),
        )
