"""A small, synchronous DatoCMS HTTP client for the generate-subtitles flow.

It knows HTTP and DatoCMS, nothing of Celery or Redis:

* one ``requests.Session`` (injectable, so tests swap the transport for an
  in-memory fake and never touch the network);
* every failure becomes exactly one exception from
  :mod:`subtitle_tasks.datocms.exceptions`, whose class says what to do;
* short hiccups are retried inline, decided in one place
  (:meth:`DatoCMSClient._should_retry`); anything that needs a long wait is
  raised for the caller to reschedule;
* the API token never leaves the ``Authorization`` header: not in exceptions,
  logs, ``repr``, or the resources it returns (a server echoing it gets it
  redacted), and it is only ever sent over https (or to loopback);
* answers are bounded: at most ``max_response_bytes`` are read, within
  ``max_call_seconds`` of wall-clock time, and redirects are never followed.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any, NamedTuple, Protocol, runtime_checkable
from urllib.parse import quote, urlencode, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ClosedPoolError, ConnectTimeoutError, DecodeError, MaxRetryError, ReadTimeoutError

from ..backoff import retry_delay
from .exceptions import (
    DatoCMSError,
    Forbidden,
    InvalidRequest,
    InvalidType,
    JobFailed,
    NetworkError,
    NotFound,
    PermanentError,
    ProtocolError,
    RateLimited,
    RetryableError,
    SandboxImmutable,
    ServerError,
    TransientAPIError,
    Unauthorized,
    UnexpectedServerError,
)
from .resources import (
    ApiErrorEntry,
    MalformedResource,
    Upload,
    UploadTrack,
    parse_api_errors,
    parse_job_result,
)

__all__ = [
    "API_VERSION",
    "BODY_TYPE_SUBTITLES_GENERATION",
    "BODY_TYPE_UPLOAD_TRACK",
    "DEFAULT_BASE_URL",
    "DatoCMSClient",
    "RateLimiter",
]

logger = logging.getLogger("subtitle_tasks.datocms")

DEFAULT_BASE_URL = "https://site-api.datocms.com"
API_VERSION = "3"
JSON_API_MEDIA_TYPE = "application/vnd.api+json"

#: The body ``type`` the endpoint's documentation page asks for.
BODY_TYPE_UPLOAD_TRACK = "upload_track"
#: The body ``type`` the official JS client sends since cma-client 5.6.0.
BODY_TYPE_SUBTITLES_GENERATION = "subtitles_generation"

# Methods whose repetition cannot create a second side effect.
_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

# Transport errors that mean "the request could not be sent", not "no answer".
_LOCAL_REQUEST_ERRORS = (
    requests.exceptions.InvalidURL,
    requests.exceptions.MissingSchema,
    requests.exceptions.InvalidSchema,
    requests.exceptions.URLRequired,
    requests.exceptions.InvalidHeader,
    requests.exceptions.InvalidJSONError,
)

_REDACTED = "[REDACTED]"
_NOT_JSON = object()
_MAX_TEXT = 500

#: Default cap on an answer's size; DatoCMS's answers here are a few kB.
DEFAULT_MAX_RESPONSE_BYTES = 1 << 20
#: Default wall-clock budget of one HTTP request, body included.
DEFAULT_MAX_CALL_SECONDS = 30.0
# How much one read asks for; with read1 it is an upper bound, not a wait.
_READ_CHUNK = 64 * 1024
# Deeper JSON is not a DatoCMS answer; refusing it keeps every later walk
# (redaction, summaries, storing the resource) far from the recursion limit.
_MAX_JSON_DEPTH = 64
# 5xx statuses that mean "a gateway or an overloaded server", which waiting
# does fix; any other 5xx not flagged transient looks like a fault.
_GATEWAY_STATUSES = frozenset({502, 503, 504})

# Error codes whose details name the offending field.
_FIELD_ERROR_CODES = frozenset({"INVALID_FIELD", "INVALID_ATTRIBUTES"})
# Keys of an api_error's details that name a field (lowercase).
_FIELD_KEYS = frozenset({
    "field", "fields", "field_api_key", "attribute", "attributes", "param", "parameter",
    "parameters", "path", "pointer", "source", "key",
})
_PATH_SEPARATORS = re.compile(r"[./\[\]#]+")

#: ``page[limit]``'s documented maximum on ``GET /uploads``.
MAX_UPLOADS_PAGE = 500

# urllib3 2.x has BaseHTTPResponse; 1.x only HTTPResponse.
_URLLIB3_RESPONSE = getattr(urllib3.response, "BaseHTTPResponse", urllib3.response.HTTPResponse)


@runtime_checkable
class RateLimiter(Protocol):
    """A fleet-wide request budget, shared by every worker using one token.

    The client calls :meth:`acquire` before each HTTP request and
    :meth:`penalize` when DatoCMS answers 429.

    Optionally, a limiter may also have ``observe(limit, remaining)``: the
    client then calls it after every answer (errors and 429s included) with
    ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining`` as ints, ``None`` for a
    missing or unusable header, so the budget can follow the server's count.
    It is not part of this Protocol, so limiters without it still qualify.
    """

    def acquire(self) -> None:
        """Take one request slot: return at once or after a brief wait, or
        raise :class:`~subtitle_tasks.datocms.exceptions.RateLimited` (with
        ``retry_after`` set) when the shared quota is spent."""

    def penalize(self, seconds: float) -> None:
        """DatoCMS said 429: tell the whole fleet to hold off for ``seconds``."""


class _Answer(NamedTuple):
    status: int
    body: Any
    request_id: str | None


class _BearerAuth(requests.auth.AuthBase):
    """Sets the Authorization header.

    Passing an auth object (rather than a plain header) also stops requests
    from replacing our header with credentials from ``~/.netrc``.
    """

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "<BearerAuth [REDACTED]>"


def _package_version() -> str:
    try:
        return metadata.version("subtitle-tasks")
    except metadata.PackageNotFoundError:
        pass
    version = getattr(sys.modules.get("subtitle_tasks"), "__version__", None)
    return version if isinstance(version, str) and version else "0+unknown"


def _header_safe(value: str) -> bool:
    return bool(value) and value == value.strip() and all(31 < ord(ch) < 127 for ch in value)


def _segment(value: Any, name: str) -> str:
    """One URL path segment, percent-encoded (``/`` included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if value in (".", ".."):
        # URL normalisation would turn these into a different path.
        raise ValueError(f"{name} cannot be {value!r}")
    return quote(value, safe="")


def _parse_reset(raw: str | None) -> float | None:
    """``X-RateLimit-Reset`` (seconds until the quota refills) or ``None``."""
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except (TypeError, ValueError):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return value


def _parse_count(raw: str | None) -> int | None:
    """A whole-number rate-limit header (``X-RateLimit-Limit``/``-Remaining``) or ``None``."""
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        return None
    return int(raw)


def _never_sent(err: BaseException) -> bool:
    """True only when the transport error certainly happened before any byte
    of the request reached the server (DNS failure, connection refused,
    connect timeout, closed pool).  Anything else counts as possibly sent."""
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return True
    pending: list[Any] = [err]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        # NewConnectionError and NameResolutionError subclass ConnectTimeoutError.
        if isinstance(current, (ConnectTimeoutError, ClosedPoolError)):
            return True
        if isinstance(current, MaxRetryError):
            pending.append(current.reason)
        # requests wraps the urllib3 error as the first argument; only follow
        # explicit wrapping, not __context__, which may hold an older attempt.
        pending.extend(arg for arg in current.args if isinstance(arg, BaseException))
    return False


def _is_loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 or ``localhost``: traffic that never leaves the machine."""
    if not host:
        return False
    host = host.rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _names_type(value: Any) -> bool:
    """Whether a details value names the body's ``type`` member: ``"type"``,
    ``"data.type"``, ``"/data/type"``, ``["type"]``, ``{"pointer": "/data/type"}``...
    but not ``attributes.type`` (a track attribute we never send) nor any
    other field."""
    if isinstance(value, str):
        segments = [part for part in _PATH_SEPARATORS.split(value.strip().lower()) if part]
        while segments and segments[0] == "data":
            segments.pop(0)
        return segments == ["type"]
    if isinstance(value, (list, tuple)):
        return any(_names_type(item) for item in value)
    if isinstance(value, Mapping):
        return _details_name_type(value)
    return False


def _details_name_type(details: Mapping[str, Any]) -> bool:
    for key, value in details.items():
        if isinstance(key, str) and key.lower() in _FIELD_KEYS and _names_type(value):
            return True
        # Nested error lists ({"errors": [{"field": "type"}]}); depth is bounded
        # by _MAX_JSON_DEPTH.
        if isinstance(value, Mapping) and _details_name_type(value):
            return True
        if isinstance(value, list) and any(isinstance(v, Mapping) and _details_name_type(v) for v in value):
            return True
    return False


def _points_at_type(entry: ApiErrorEntry, status: int) -> bool:
    """An api_error refusing the body's JSON:API ``type``."""
    if entry.code == "INVALID_TYPE":
        return True
    return (status == 422 or entry.code in _FIELD_ERROR_CODES) and _details_name_type(entry.details)


def _content_length(raw: str | None) -> int | None:
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def _read_some(raw: Any, size: int) -> bytes:
    """Up to ``size`` bytes of the body, decoded.

    ``read1`` (urllib3 >= 2.3, file objects) makes at most one socket read, so
    the call budget is checked between reads even against a server that
    trickles one byte at a time; a plain ``read(size)`` would block until
    ``size`` bytes arrived.
    """
    read: Callable[..., bytes] = getattr(raw, "read1", None) or raw.read
    if isinstance(raw, _URLLIB3_RESPONSE):
        # requests builds its urllib3 response with decode_content=False.
        return read(size, decode_content=True)
    return read(size)


def _too_deep(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests containers deeper than ``limit`` (iteratively)."""
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _first_relevant(errors: list[ApiErrorEntry]) -> ApiErrorEntry | None:
    """The entry that decides the class: a transient one if any, else the first."""
    for entry in errors:
        if entry.transient:
            return entry
    return errors[0] if errors else None


class DatoCMSClient:
    """Calls the three endpoints the subtitle flow needs.

    Args:
        token: a DatoCMS API token with upload permissions.
        base_url: API root, ``https://site-api.datocms.com`` by default.  Must
            be https unless the host is loopback or ``allow_insecure_http``.
        environment: sandbox environment name (sent as ``X-Environment``);
            ``None`` targets the primary environment.
        timeout: per-request timeout in seconds, or a ``(connect, read)`` pair.
            requests applies it to each socket operation, not to the call.
        max_response_bytes: the largest answer read (decoded); a larger one
            raises :class:`ProtocolError` without being read whole.
        max_call_seconds: wall-clock budget of one HTTP request, from sending
            to the end of the body; past it the call raises
            :class:`NetworkError` (``request_sent=True``).  Checked after the
            headers and between body reads, so a single read may overrun it
            by up to the read timeout.
        allow_insecure_http: accept an ``http://`` base URL to a host that is
            not loopback (the token would cross the network in clear text).
        session: a ``requests.Session`` to use.  The client closes only a
            session it created itself.
        rate_limiter: a :class:`RateLimiter` shared by the fleet, or ``None``.
        on_answer: called with the HTTP status of every answer (metrics); its
            errors are logged, never raised.
        max_inline_retries: how many times one call may be retried inline.
        max_inline_wait: the longest delay (seconds) worth waiting inline;
            longer waits are raised to the caller.
        sleep, rng: injectable for tests (``time.sleep``, ``random.random``).

    The client is safe to share between threads as far as ``requests.Session``
    is; one client per process is the intended use.
    """

    def __init__(
        self,
        token: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        environment: str | None = None,
        timeout: float | tuple[float, float] = 10.0,
        session: requests.Session | None = None,
        rate_limiter: RateLimiter | None = None,
        max_inline_retries: int = 2,
        max_inline_wait: float = 1.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_call_seconds: float = DEFAULT_MAX_CALL_SECONDS,
        allow_insecure_http: bool = False,
        on_answer: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not isinstance(token, str) or not _header_safe(token):
            # Never echo the value: it is a secret.
            raise ValueError("token must be a non-empty string of printable ASCII without spaces around it")
        if not isinstance(base_url, str):
            raise ValueError(f"base_url must be a string, got {type(base_url).__name__}")
        base_url = base_url.strip().rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"base_url must be an http(s) URL without query or fragment, got {base_url!r}")
        if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
            raise ValueError(
                f"base_url {base_url!r} is plain http: the API token would cross the network unencrypted. "
                "Use https; http is accepted only for loopback hosts (127.0.0.0/8, ::1, localhost) "
                "or with allow_insecure_http=True"
            )
        if environment is not None and (not isinstance(environment, str) or not _header_safe(environment)):
            raise ValueError(f"environment must be a non-empty header-safe string or None, got {environment!r}")
        self._timeout = self._check_timeout(timeout)
        if isinstance(max_inline_retries, bool) or not isinstance(max_inline_retries, int) or max_inline_retries < 0:
            raise ValueError(f"max_inline_retries must be an int >= 0, got {max_inline_retries!r}")
        if isinstance(max_inline_wait, bool) or not isinstance(max_inline_wait, (int, float)) or not (
            0 <= max_inline_wait < math.inf
        ):
            raise ValueError(f"max_inline_wait must be a finite number >= 0, got {max_inline_wait!r}")
        if isinstance(max_response_bytes, bool) or not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise ValueError(f"max_response_bytes must be an int >= 1, got {max_response_bytes!r}")
        if isinstance(max_call_seconds, bool) or not isinstance(max_call_seconds, (int, float)) or not (
            0 < max_call_seconds < math.inf
        ):
            raise ValueError(f"max_call_seconds must be a finite number > 0, got {max_call_seconds!r}")

        self._token = token
        self._auth = _BearerAuth(token)
        self._base_url = base_url
        self._environment = environment
        self._rate_limiter = rate_limiter
        self._on_answer = on_answer
        self._max_inline_retries = max_inline_retries
        self._max_inline_wait = float(max_inline_wait)
        self._max_response_bytes = max_response_bytes
        self._max_call_seconds = float(max_call_seconds)
        self._sleep = sleep
        self._rng = rng
        self._user_agent = f"subtitle-tasks/{_package_version()}"
        if session is None:
            session = self._default_session()
            self._owns_session = True
        else:
            self._owns_session = False
        self._session = session

    # ------------------------------------------------------------------
    # public API
    # ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def environment(self) -> str | None:
        return self._environment

    def generate_subtitles(
        self,
        upload_id: str,
        language_code: str,
        *,
        name: str | None = None,
        body_type: str = BODY_TYPE_UPLOAD_TRACK,
    ) -> str:
        """Start a subtitles-generation job; return its job id.

        ``POST /uploads/{upload_id}/tracks/generate-subtitles``.  The body
        ``type`` is ``body_type`` (``"upload_track"`` per the docs; the
        official JS client sends ``"subtitles_generation"``).  A refused type
        raises :class:`InvalidType`.

        This call is not idempotent: when it fails with ``outcome_unknown``
        set, a job may exist anyway; it is never retried inline in that case.
        """
        path = f"/uploads/{_segment(upload_id, 'upload_id')}/tracks/generate-subtitles"
        if not isinstance(language_code, str) or not language_code.strip():
            raise ValueError(f"language_code must be a non-empty string, got {language_code!r}")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"name must be a string or None, got {name!r}")
        if not isinstance(body_type, str) or not body_type:
            raise ValueError(f"body_type must be a non-empty string, got {body_type!r}")

        attributes: dict[str, Any] = {"language_code": language_code}
        if name is not None:
            attributes["name"] = name
        answer = self._request("POST", path, {"data": {"type": body_type, "attributes": attributes}})

        data = answer.body.get("data") if isinstance(answer.body, Mapping) else None
        job_id = data.get("id") if isinstance(data, Mapping) else None
        if (
            not isinstance(data, Mapping)
            or data.get("type") != "job"
            or isinstance(job_id, bool)
            or not isinstance(job_id, (str, int))
            or job_id == ""
        ):
            raise self._protocol_error("POST", path, answer, "answer holds no job id")
        return str(job_id)

    def get_job_result(self, job_id: str) -> UploadTrack | None:
        """The track a finished job produced, or ``None`` while it runs.

        ``GET /job-results/{job_id}``: a 404 ``NOT_FOUND`` means "not finished
        yet" and returns ``None``.  A finished job whose recorded status is
        not 2xx raises :class:`JobFailed`.  Note that a returned track may
        still be ``preparing``: poll :meth:`list_tracks` until it is ready.
        """
        path = f"/job-results/{_segment(job_id, 'job_id')}"
        try:
            answer = self._request("GET", path)
        except NotFound as exc:
            if exc.code in (None, "NOT_FOUND"):
                return None
            raise

        problem = None
        try:
            result = parse_job_result(answer.body)
        except MalformedResource as exc:
            problem = str(exc)
        if problem is not None:
            raise self._protocol_error("GET", path, answer, problem)

        if not result.succeeded:
            raise self._job_failed(str(job_id), path, answer, result.status, result.payload)

        try:
            track = result.upload_track()
        except MalformedResource as exc:
            problem = f"job payload: {exc}"
        if problem is not None:
            raise self._protocol_error("GET", path, answer, problem)
        return track

    def list_tracks(self, upload_id: str) -> list[UploadTrack]:
        """All tracks of an upload: ``GET /uploads/{upload_id}/tracks``."""
        path = f"/uploads/{_segment(upload_id, 'upload_id')}/tracks"
        answer = self._request("GET", path)
        data = answer.body.get("data") if isinstance(answer.body, Mapping) else None
        if not isinstance(data, list):
            raise self._protocol_error("GET", path, answer, "answer holds no list of tracks")
        tracks: list[UploadTrack] = []
        problem = None
        for obj in data:
            try:
                tracks.append(UploadTrack.from_resource(obj, upload_id=upload_id))
            except MalformedResource as exc:
                problem = str(exc)
                break
        if problem is not None:
            raise self._protocol_error("GET", path, answer, problem)
        return tracks

    # -- listing uploads (the sweep, subtitle_tasks/sweep.py) ------------------------

    @property
    def rate_limiter(self) -> RateLimiter | None:
        """The fleet-wide budget this client draws from (a sweep sizes its own share by it)."""
        return self._rate_limiter

    def list_uploads(
        self, *, video_only: bool = True, newest_first: bool = True, offset: int = 0, limit: int = 100
    ) -> tuple[list[Upload], int]:
        """One page of the site's uploads and how many match in all (``meta.total_count``).

        ``GET /uploads`` with ``filter[fields][type][eq]=video`` (``video_only``),
        ``order_by=_created_at_DESC`` (``newest_first``, else ``_ASC``) and offset
        pagination; ``limit`` is at most :data:`MAX_UPLOADS_PAGE`.
        """
        for name, value, low, high in (("offset", offset, 0, 10 ** 9), ("limit", limit, 1, MAX_UPLOADS_PAGE)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an int from {low} to {high}, got {value!r}")
        params = [("filter[fields][type][eq]", "video")] if video_only else []
        params += [("order_by", "_created_at_DESC" if newest_first else "_created_at_ASC"),
                   ("page[offset]", str(offset)), ("page[limit]", str(limit))]
        path = "/uploads?" + urlencode(params, safe="[]")
        answer = self._request("GET", path)
        body = answer.body if isinstance(answer.body, Mapping) else {}
        data, meta = body.get("data"), body.get("meta")
        total = meta.get("total_count") if isinstance(meta, Mapping) else None
        if not isinstance(data, list):
            raise self._protocol_error("GET", path, answer, "answer holds no list of uploads")
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise self._protocol_error("GET", path, answer, "answer holds no meta.total_count")
        uploads: list[Upload] = []
        problem = None
        for obj in data:
            try:
                uploads.append(Upload.from_resource(obj))
            except MalformedResource as exc:
                problem = str(exc)
                break
        if problem is not None:
            raise self._protocol_error("GET", path, answer, problem)
        return uploads, total

    def close(self) -> None:
        """Release pooled connections (only of a session the client created)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> DatoCMSClient:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DatoCMSClient(base_url={self._base_url!r}, environment={self._environment!r})"

    # ------------------------------------------------------------------
    # the one retry decision
    # ------------------------------------------------------------------

    def _should_retry(self, exc: DatoCMSError, method: str, attempt: int) -> bool:
        """Whether to repeat a failed call inline, after ``attempt`` retries.

        Yes only if all hold:

        * the error is a :class:`RetryableError`;
        * fewer than ``max_inline_retries`` retries were made;
        * repeating cannot duplicate a side effect: idempotent methods always
          qualify; a POST only when the server surely did not act (connect
          failure, 429, 503, a transient api_error with a 4xx status, the
          local limiter refusing) -- see :meth:`_outcome_unknown`;
        * the longest delay the backoff could pick (jitter at its maximum,
          server hint honoured) fits in ``max_inline_wait``.
        """
        if not isinstance(exc, RetryableError):
            return False
        if attempt >= self._max_inline_retries:
            return False
        if self._outcome_unknown(method, exc):
            return False
        worst_case = retry_delay(attempt, hint=exc.retry_after, rng=lambda: 1.0)
        return worst_case <= self._max_inline_wait

    @staticmethod
    def _outcome_unknown(method: str, exc: DatoCMSError) -> bool:
        """Whether a failed non-idempotent call may have been carried out."""
        if method.upper() in _IDEMPOTENT_METHODS:
            return False
        if isinstance(exc, NetworkError):
            return exc.request_sent
        if isinstance(exc, ProtocolError):
            return True  # the server answered 2xx/3xx: it may well have acted
        if isinstance(exc, RateLimited) or exc.status is None:
            return False
        return exc.status >= 500 and exc.status != 503

    # ------------------------------------------------------------------
    # HTTP
    # ------------------------------------------------------------------

    def _request(self, method: str, path: str, body: Any = None) -> _Answer:
        attempt = 0
        while True:
            try:
                return self._send_once(method, path, body)
            except DatoCMSError as exc:
                if not self._should_retry(exc, method, attempt):
                    raise
                delay = retry_delay(attempt, hint=exc.retry_after, rng=self._rng)
                logger.debug(
                    "retrying %s %s in %.3fs after %s (retry %d of %d)",
                    method, path, delay, type(exc).__name__, attempt + 1, self._max_inline_retries,
                )
            self._sleep(delay)
            attempt += 1

    def _send_once(self, method: str, path: str, body: Any) -> _Answer:
        headers = {
            "Accept": "application/json",
            "X-Api-Version": API_VERSION,
            "User-Agent": self._user_agent,
        }
        data = None
        if body is not None:
            headers["Content-Type"] = JSON_API_MEDIA_TYPE
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
        if self._environment is not None:
            headers["X-Environment"] = self._environment

        if self._rate_limiter is not None:
            self._rate_limiter.acquire()  # may raise RateLimited

        started = time.monotonic()
        deadline = started + self._max_call_seconds
        failure: DatoCMSError | None = None
        response = None
        try:
            response = self._session.request(
                method,
                self._base_url + path,
                data=data,
                headers=headers,
                auth=self._auth,
                timeout=self._timeout,
                # A redirect would carry the request (and with a same-host
                # Location, the token) somewhere we did not choose.
                allow_redirects=False,
                # Read the body ourselves, capped in size and time.
                stream=True,
            )
        except requests.exceptions.RequestException as err:
            failure = self._transport_error(err, method, path)
        content = b""
        if response is not None:
            try:
                content, failure = self._read_body(response, method, path, deadline)
            finally:
                response.close()  # frees the connection, or drops one left half-read
            # The server counted this request whatever the body held: every
            # answer's headers feed the shared budget.
            self._observe(response)
            self._count(response.status_code)
        elapsed = time.monotonic() - started
        if failure is not None:
            # Raised outside the except block on purpose: the requests
            # exception holds the prepared request, Authorization header
            # included, and must not ride along as __context__.
            logger.debug("%s %s -> %s after %.3fs", method, path, type(failure).__name__, elapsed)
            raise failure
        assert response is not None

        status = response.status_code
        request_id = self._request_id(response)
        logger.debug("%s %s -> %s (request id %s) in %.3fs", method, path, status, request_id, elapsed)

        # Redacted before anything reads it: a success body becomes resources
        # that are stored (UploadTrack.resource), an error body exceptions.
        parsed = self._redact(self._decode(content))
        if 200 <= status < 300:
            if parsed is _NOT_JSON:
                raise self._protocol_error(method, path, _Answer(status, None, request_id),
                                           "success answer is not JSON")
            return _Answer(status, parsed, request_id)
        raise self._error_from_response(method, path, response, len(content), parsed, request_id)

    def _read_body(
        self, response: requests.Response, method: str, path: str, deadline: float
    ) -> tuple[bytes, DatoCMSError | None]:
        """The whole body, or the failure that stopped reading it.

        Never reads more than ``max_response_bytes`` + 1 bytes (the one that
        proves the answer too large) nor past the call's deadline.  Failures
        are returned, not raised, so the caller raises them outside any
        ``except`` block.
        """
        status = response.status_code
        cap = self._max_response_bytes
        declared = _content_length(response.headers.get("Content-Length"))
        if declared is not None and declared > cap:
            return b"", self._too_large(method, path, response, f"Content-Length {declared}")
        if time.monotonic() > deadline:
            return b"", self._call_timed_out(method, path, "waiting for the answer's headers")

        raw = response.raw
        if raw is None:
            # An in-memory response (a custom adapter or test double): nothing to stream.
            content = response.content or b""
            if len(content) > cap:
                return b"", self._too_large(method, path, response, f"{len(content)} bytes")
            return content, None

        chunks: list[bytes] = []
        size = 0
        failure: DatoCMSError | None = None
        try:
            while True:
                chunk = _read_some(raw, min(_READ_CHUNK, cap + 1 - size))
                if not chunk:
                    break
                size += len(chunk)
                if size > cap:
                    return b"", self._too_large(method, path, response, f"more than {cap} bytes")
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    return b"", self._call_timed_out(method, path, f"reading the answer (status {status})")
        except DecodeError as err:
            failure = self._protocol_error(
                method, path, _Answer(status, None, self._request_id(response)),
                f"answer body could not be decoded ({type(err).__name__})",
            )
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException,
                OSError, ValueError) as err:
            # ValueError: reading a file object that was closed under us.
            failure = self._read_failed(err, method, path, status)
        if failure is not None:
            return b"", failure
        return b"".join(chunks), None

    # ------------------------------------------------------------------
    # mapping to exceptions
    # ------------------------------------------------------------------

    def _request_id(self, response: requests.Response) -> str | None:
        value = response.headers.get("X-Request-Id") or None
        return self._redact(value)[:_MAX_TEXT] if isinstance(value, str) else None

    def _too_large(self, method: str, path: str, response: requests.Response, seen: str) -> ProtocolError:
        # Size comes before status: an answer this large is not DatoCMS's,
        # whatever it claims.
        return self._protocol_error(
            method, path, _Answer(response.status_code, None, self._request_id(response)),
            f"answer exceeds the size cap of {self._max_response_bytes} bytes (max_response_bytes; {seen})",
        )

    def _call_timed_out(self, method: str, path: str, when: str) -> NetworkError:
        exc = NetworkError(
            f"{method} {path}: timed out: call exceeded its {self._max_call_seconds:g}s budget "
            f"(max_call_seconds) {when}",
            request_sent=True,
            details={"exception": "CallBudgetExceeded"},
            method=method,
            path=path,
        )
        exc.outcome_unknown = self._outcome_unknown(method, exc)
        return exc

    def _read_failed(self, err: BaseException, method: str, path: str, status: int) -> NetworkError:
        timed_out = isinstance(err, (ReadTimeoutError, TimeoutError, requests.exceptions.Timeout))
        what = "timed out reading the answer" if timed_out else "connection failed while reading the answer"
        return self._network_error(err, method, path, what, request_sent=True, status=status)

    def _network_error(self, err: BaseException, method: str, path: str, what: str, *,
                       request_sent: bool, status: int | None = None) -> NetworkError:
        """The NetworkError for a transport failure, with the cause's text redacted."""
        text = self._redact(str(err))[:_MAX_TEXT]
        answered = f"{status}; " if status is not None else ""
        exc = NetworkError(
            f"{method} {path}: {what} ({answered}{type(err).__name__}: {text})",
            request_sent=request_sent,
            details={"exception": type(err).__name__},
            method=method,
            path=path,
        )
        exc.outcome_unknown = self._outcome_unknown(method, exc)
        return exc

    def _transport_error(self, err: requests.exceptions.RequestException, method: str, path: str) -> DatoCMSError:
        text = self._redact(str(err))[:_MAX_TEXT]
        if isinstance(err, _LOCAL_REQUEST_ERRORS):
            return PermanentError(
                f"{method} {path}: request could not be built: {text}",
                details={"exception": type(err).__name__},
                method=method,
                path=path,
            )
        sent = not _never_sent(err)
        if not sent:
            what = "could not connect"
        elif isinstance(err, requests.exceptions.Timeout):
            what = "timed out waiting for the answer"
        else:
            what = "connection failed after the request was sent"
        return self._network_error(err, method, path, what, request_sent=sent)

    def _error_from_response(
        self, method: str, path: str, response: requests.Response, size: int, parsed: Any, request_id: str | None
    ) -> DatoCMSError:
        status = response.status_code
        errors = parse_api_errors(parsed) if parsed is not _NOT_JSON else []
        entry = _first_relevant(errors)
        if entry is not None and not entry.transient and 400 <= status < 500 and status not in (401, 403, 404, 429):
            # A refused body type may hide behind another error of the list;
            # it is the one a caller can act on (switch type), so it decides.
            entry = next((e for e in errors if _points_at_type(e, status)), entry)
        code = entry.code if entry else None
        details = self._redact(entry.details) if entry else {}
        request_id = request_id or (entry.id if entry else None)
        reset = _parse_reset(response.headers.get("X-RateLimit-Reset"))

        if parsed is _NOT_JSON:
            content_type = response.headers.get("Content-Type") or "no content type"
            message = f"{method} {path}: answer is not JSON ({content_type}, {size} bytes)"
        elif details:
            message = f"{method} {path} failed: {self._summarize(details)}"
        else:
            message = f"{method} {path} failed ({response.reason or 'no reason given'})"
        # Headers and the reason phrase are the server's text too.
        message = self._redact(message)

        cls: type[DatoCMSError]
        retry_after = reset
        if status == 429:
            cls = RateLimited
            retry_after = reset if reset is not None else 1.0
            code = code or "RATE_LIMIT_EXCEEDED"
            self._penalize(retry_after)
        elif 300 <= status < 400 or status < 200:
            cls = ProtocolError
        elif entry is not None and entry.transient:
            cls = TransientAPIError
        elif status >= 500:
            cls = ServerError if status in _GATEWAY_STATUSES else UnexpectedServerError
        elif parsed is _NOT_JSON:
            cls = ServerError  # a proxy's page in front of DatoCMS, whatever the status
        elif status == 401:
            cls = Unauthorized
        elif code == SandboxImmutable.API_CODE:
            cls = SandboxImmutable
        elif status == 403:
            cls = Forbidden
        elif status == 404:
            cls = NotFound
        elif entry is not None and _points_at_type(entry, status):
            cls = InvalidType
        else:
            cls = InvalidRequest

        exc = cls(
            message,
            status=status,
            code=code,
            request_id=request_id,
            details=details,
            retry_after=retry_after,
            method=method,
            path=path,
        )
        exc.outcome_unknown = self._outcome_unknown(method, exc)
        return exc

    def _protocol_error(self, method: str, path: str, answer: _Answer, problem: str) -> ProtocolError:
        exc = ProtocolError(
            f"{method} {path}: unexpected answer: {self._redact(problem)[:_MAX_TEXT]}",
            status=answer.status,
            request_id=answer.request_id,
            method=method,
            path=path,
        )
        exc.outcome_unknown = self._outcome_unknown(method, exc)
        return exc

    def _job_failed(self, job_id: str, path: str, answer: _Answer, job_status: int, payload: Any) -> JobFailed:
        entry = _first_relevant(parse_api_errors(payload))
        details = self._redact(entry.details) if entry else {}
        message = f"job {job_id} failed"
        if details:
            message += f": {self._summarize(details)}"
        return JobFailed(
            message,
            job_id=job_id,
            transient=bool(entry and entry.transient),
            payload=self._redact(payload),
            status=job_status,
            code=entry.code if entry else None,
            request_id=answer.request_id or (entry.id if entry else None),
            details=details,
            method="GET",
            path=path,
        )

    # ------------------------------------------------------------------
    # helpers
    # ------------------------------------------------------------------

    def _observe(self, response: requests.Response) -> None:
        observe = getattr(self._rate_limiter, "observe", None)
        if observe is None:
            return
        limit = _parse_count(response.headers.get("X-RateLimit-Limit"))
        remaining = _parse_count(response.headers.get("X-RateLimit-Remaining"))
        if limit is None and remaining is None:
            return
        try:
            observe(limit, remaining)
        except Exception:  # advisory: a broken limiter must not hide the answer
            logger.warning("rate limiter observe(%s, %s) failed", limit, remaining, exc_info=True)

    def _count(self, status: int) -> None:
        if self._on_answer is None:
            return
        try:
            self._on_answer(status)
        except Exception:  # advisory, like the limiter's hooks
            logger.warning("on_answer(%s) failed", status, exc_info=True)

    def _penalize(self, seconds: float) -> None:
        if self._rate_limiter is None:
            return
        try:
            self._rate_limiter.penalize(seconds)
        except Exception:  # advisory: a broken limiter must not hide the 429
            logger.warning("rate limiter penalize(%s) failed", seconds, exc_info=True)

    @staticmethod
    def _decode(content: bytes) -> Any:
        if not content or not content.strip():
            return _NOT_JSON
        try:
            value = json.loads(content)
        except (ValueError, RecursionError):
            return _NOT_JSON
        return _NOT_JSON if _too_deep(value, _MAX_JSON_DEPTH) else value

    def _redact(self, value: Any) -> Any:
        """``value`` with every occurrence of the token replaced (keys included).

        Recursive: callers pass only JSON that ``_decode`` bounded in depth.
        """
        if isinstance(value, str):
            return value.replace(self._token, _REDACTED) if self._token in value else value
        if isinstance(value, Mapping):
            return {self._redact(k): self._redact(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._redact(v) for v in value]
        return value

    @staticmethod
    def _summarize(details: Mapping[str, Any]) -> str:
        text = json.dumps(details, sort_keys=True, default=str, ensure_ascii=False)
        return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 3] + "..."

    @staticmethod
    def _check_timeout(timeout: Any) -> float | tuple[float, float]:
        def ok(value: Any) -> bool:
            return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 < value < math.inf

        if isinstance(timeout, tuple) and len(timeout) == 2 and all(ok(v) for v in timeout):
            return (float(timeout[0]), float(timeout[1]))
        if ok(timeout):
            return float(timeout)
        raise ValueError(f"timeout must be a positive number of seconds or a (connect, read) pair, got {timeout!r}")

    @staticmethod
    def _default_session() -> requests.Session:
        session = requests.Session()
        # Retries are decided by the client, never by urllib3.
        adapter = HTTPAdapter(pool_connections=2, pool_maxsize=8, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session
