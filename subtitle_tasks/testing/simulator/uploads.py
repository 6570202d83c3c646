"""Uploads: the kinds that pick how a generate-subtitles job goes, and the uploads ``GET /uploads`` lists.

Upload kinds
------------
Any upload id exists and is a video with an audio track. Other behaviours are
picked per upload, like test card numbers, either with
``sim.set_upload(upload_id, kind)`` or by starting the id with a magic prefix:

==============  ============  ==============================================
prefix          kind          behaviour
==============  ============  ==============================================
(none)          ``video``     job succeeds; track preparing, then ``ready``
``missing-``    ``missing``   404 ``NOT_FOUND`` on POST and on the track list
``not-video-``  ``not-video`` POST answers 422 ``NOT_A_VIDEO``
``no-audio-``   ``no-audio``  job fails: result status 422,
                              ``NO_PRIMARY_AUDIO_TRACK``
``mux-error-``  ``mux-error`` job fails: result status 500, ``MUX_ERROR``
``errored-``    ``errored``   track goes ``preparing`` -> ``errored``
``stuck-``      ``stuck``     the job never finishes (404 forever)
``slow-``       ``slow``      ``preparing`` lasts 10x ``preparing_seconds``
==============  ============  ==============================================

An explicit ``set_upload`` wins over the prefix. Upload kinds are shared by
all environments; tracks are kept per (environment, upload).

Listed uploads
--------------
``GET /uploads`` lists only uploads added with ``sim.add_upload(upload_id,
created_at=... | age=..., kind="video" | "image" | "audio", duration=...,
mux_ready=True, environment=None)``, per environment as tracks are (re-adding
an id replaces it; ``sim.remove_upload`` deletes it). Each is a realistic
``upload`` resource (``size``, ``path``, ``filename``, ``url``, ``format``,
``mime_type``, ``duration``, ``frame_rate``, ``mux_playback_id`` (``null``
while Mux is still processing: ``mux_ready=False``), ``mux_mp4_highest_res``,
``md5``, ``is_image``, ``created_at``/``updated_at`` in ISO 8601, ...). An
added image or audio upload answers ``NOT_A_VIDEO`` to a generate POST unless
``set_upload`` says otherwise. Query parameters, as DatoCMS takes them:
``filter[fields][type][eq]`` (keep one type; absent: every upload),
``filter[ids]`` (comma-separated), ``order_by`` (``_created_at_DESC`` or
``_created_at_ASC``, ties by id; default ascending), ``page[offset]`` (default 0)
and ``page[limit]`` (default 30, at most ``MAX_PAGE_LIMIT`` = 500). An
out-of-range or malformed value, or any other parameter, answers 422
``INVALID_FIELD`` naming it. The answer is ``{"data": [...], "meta":
{"total_count": N}}``, N counting every match, not only the page. Auth,
headers, the rate limit and faults apply as to every API endpoint.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .config import _require_non_negative
from .replies import _error_reply, _Reply

UPLOAD_KINDS = (
    "video", "missing", "not-video", "no-audio", "mux-error", "errored", "stuck", "slow",
)
MAGIC_PREFIXES = {f"{kind}-": kind for kind in UPLOAD_KINDS if kind != "video"}

SLOW_UPLOAD_PREPARING_FACTOR = 10

# What GET /uploads takes; DatoCMS documents 500 as page[limit]'s maximum.
LIST_UPLOADS_PARAMETERS = frozenset({
    "filter[fields][type][eq]", "filter[ids]", "order_by", "page[offset]", "page[limit]"})
MAX_PAGE_LIMIT = 500
DEFAULT_PAGE_LIMIT = 30
MEDIA_KINDS = ("video", "image", "audio")
DEFAULT_MEDIA_SECONDS = 62
SIMULATED_SITE_ID = 4242  # the number DatoCMS puts first in an asset's path
_MEDIA_FILES = {"video": ("mp4", "video/mp4"), "image": ("jpg", "image/jpeg"), "audio": ("mp3", "audio/mpeg")}
_DIGITS = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class _ListedUpload:
    upload_id: str
    created_at: float  # Unix seconds
    kind: str  # one of MEDIA_KINDS
    duration: float | None
    mux_ready: bool


def _require_finite(name: str, value: Any) -> None:
    _require_non_negative(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite")


def _unix_seconds(value: datetime | float | str) -> float:
    if isinstance(value, str):
        text = value.strip()
        value = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" and text else text)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("created_at must be timezone-aware")
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("created_at must be a datetime, Unix seconds or ISO 8601 text")
    return float(value)


def _iso(stamp: float) -> str:
    return datetime.fromtimestamp(stamp, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _upload_resource(upload: _ListedUpload) -> dict[str, Any]:
    """An ``upload`` resource with the attributes DatoCMS gives, derived from the id (stable)."""
    extension, mime_type = _MEDIA_FILES[upload.kind]
    digest = hashlib.md5(upload.upload_id.encode()).hexdigest()
    basename = re.sub(r"[^a-z0-9-]+", "-", upload.upload_id.lower()).strip("-") or "upload"
    path = f"/{SIMULATED_SITE_ID}/{int(upload.created_at)}-{basename}.{extension}"
    video = upload.kind == "video"
    muxed = video and upload.mux_ready
    return {
        "id": upload.upload_id,
        "type": "upload",
        "attributes": {
            "size": 100_000 + int(digest[:6], 16),
            "width": None if upload.kind == "audio" else 1920,
            "height": None if upload.kind == "audio" else 1080,
            "path": path,
            "basename": basename,
            "filename": f"{basename}.{extension}",
            "url": f"https://www.datocms-assets.com{path}",
            "format": extension,
            "mime_type": mime_type,
            "author": None,
            "copyright": None,
            "notes": None,
            "md5": digest,
            "duration": None if upload.duration is None else round(upload.duration),
            "frame_rate": 30 if video else None,
            "blurhash": None,
            "thumbhash": None,
            "mux_playback_id": f"sim{digest[:20]}" if muxed else None,
            "mux_mp4_highest_res": "high" if muxed else None,
            "default_field_metadata": {},
            "is_image": upload.kind == "image",
            "created_at": _iso(upload.created_at),
            "updated_at": _iso(upload.created_at),
            "tags": [],
            "smart_tags": [],
            "exif_info": {},
            "colors": [],
        },
        "relationships": {"upload_collection": {"data": None}},
    }


def _invalid_field(field_name: str, code: str, value: Any, message: str) -> _Reply:
    return _error_reply(422, "INVALID_FIELD", {"field": field_name, "code": code, "value": value,
                                                "message": message})


def _last_value(query: dict[str, list[str]], name: str) -> str | None:
    """The value a query parameter was last given, if any."""
    values = query.get(name)
    return values[-1] if values else None


def _query_int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int | _Reply:
    values = query.get(name)
    if not values:
        return default
    raw = values[-1]
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        return _invalid_field(name, "VALIDATION_INVALID", raw, f"must be a whole number from {low} to {high}")
    return int(raw)
