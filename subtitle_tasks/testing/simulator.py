"""A local HTTP simulator of DatoCMS's "generate subtitles track" API.

Run it inside a test suite (``Simulator(...).start()``, or the pytest fixtures
``datocms_simulator`` / ``datocms_simulator_factory``) or from a shell
(``subtitle-tasks simulate`` / ``python -m subtitle_tasks.testing.simulator``),
then point a DatoCMS client at ``sim.url`` instead of the real API base URL.

API endpoints (same paths, headers, bodies and error documents as DatoCMS):

* ``POST /uploads/{upload_id}/tracks/generate-subtitles`` -> 202 job
* ``GET  /job-results/{job_id}``  -> 404 ``NOT_FOUND`` while the job runs, then 200
* ``GET  /uploads/{upload_id}/tracks`` -> 200 list of upload_track resources
* ``GET  /uploads`` -> 200 page of upload resources (see "Listed uploads")

Every API request must carry ``Authorization: Bearer <token>`` and
``X-Api-Version: 3``; ``X-Environment`` is optional.

Uploads
-------
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

Environments
------------
``config.environments`` (None: any) lists the ``X-Environment`` names that
exist; others get 422 ``INVALID_ENVIRONMENT``. ``config.immutable_environments``
(empty by default) lists sandboxes whose upload tracks cannot be changed: a
generate-subtitles POST naming one answers 422
``IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT`` (after the upload and body
checks) and creates nothing; reading job results and track lists still works.

Timing
------
A job finishes ``job_seconds`` after its POST was accepted. Its track then
stays ``preparing`` for ``preparing_seconds`` before turning ``ready`` (or
``errored``). The job result is a snapshot taken when the job finished, so it
shows ``preparing`` unless ``preparing_seconds`` is 0. Nothing runs in the
background: every status is computed from ``time.monotonic()`` timestamps
when asked for, so holding 100,000 pending jobs costs only their records.

Rate limit
----------
``rate_limit`` requests per ``rate_window`` seconds for each token, counted
over a *sliding* window (a request is allowed when fewer than ``rate_limit``
accepted requests happened in the last ``rate_window`` seconds). Every API
answer has ``X-RateLimit-Limit`` and ``X-RateLimit-Remaining``; a 429
``RATE_LIMIT_EXCEEDED`` also has ``X-RateLimit-Reset`` (whole seconds, >= 1)
and never ``Retry-After``. Control endpoints are not limited.

Faults
------
``config.faults`` maps a fault name to a probability (0..1). They are drawn
for each API request, before any other handling, from
``random.Random(config.seed)``; the first hit in this order wins:

* ``drop``       close the connection without answering
* ``html_502``   502 with an HTML gateway page (``text/html``)
* ``http_500``   500 ``INTERNAL_SERVER_ERROR`` api_error, not transient
* ``http_503``   503 ``SERVICE_UNAVAILABLE``, ``transient: true``
* ``transient``  409 ``ENVIRONMENT_NOT_READY``, ``transient: true`` (a 4xx on
                 purpose: only the ``transient`` flag says it may be retried)
* ``rate_429``   429 ``RATE_LIMIT_EXCEEDED`` from "platform load", reset 1 s
* ``huge_body``  200 with a JSON document of ``HUGE_BODY_BYTES`` (5 MiB) of
                 padding, which a careful client refuses to read whole
* ``redirect``   302 to the same path on ``REDIRECT_HOST`` (another host,
                 which never resolves); a client must not follow it
* ``drop_after_commit``  POST generate-subtitles only: the job is created
                 normally, then the connection is closed without the 202
* ``echo_token`` job results and track lists only: every track in a 200
                 answer is named ``"echo: Bearer <the request's token>"``, as a
                 careless server echoing credentials would (nothing else changes)

``slow`` is drawn on its own and combines with the others: the answer (or
the drop) comes ``slow_seconds`` late. A faulted request never creates a job,
except with ``drop_after_commit``. ``drop_after_commit`` and ``echo_token``
alter an answer that was handled normally; they are recorded only when they
changed something.

Control endpoints (no auth, no rate limit, no faults, not in the request log)
-----------------------------------------------------------------------------
* ``GET  /_simulator/state``           accepted POSTs, request counts, jobs, config
* ``GET  /_simulator/requests``        the request log (``?limit=N`` for the last N)
* ``GET  /_simulator/jobs``            every job with its phase and track status
* ``POST /_simulator/config``          update the given config fields (JSON object);
                                       like ``configure()``, ``faults`` is replaced whole
* ``POST /_simulator/reset``           forget jobs, uploads, counters and the log
* ``POST /_simulator/uploads/{id}``    ``{"kind": "no-audio"}`` sets an upload's kind
* ``POST /_simulator/add-upload``      ``{"upload_id", "created_at" (ISO 8601 or Unix
                                       seconds) or "age" (seconds ago), "kind",
                                       "duration", "mux_ready", "environment"}``:
                                       ``add_upload()`` for another process
* ``POST /_simulator/complete-jobs``   finish every running job now (not stuck ones)

Tokens are never printed, logged, or shown by the control endpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import json
import math
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterable
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = [
    "BODY_TYPES",
    "FAULT_NAMES",
    "MAGIC_PREFIXES",
    "UPLOAD_KINDS",
    "RequestRecord",
    "Simulator",
    "SimulatorConfig",
    "main",
]

BODY_TYPES = ("upload_track", "subtitles_generation")

# Order matters: it is the order faults are drawn in, and the first hit wins.
EXCLUSIVE_FAULTS = ("drop", "html_502", "http_500", "http_503", "transient", "rate_429", "huge_body", "redirect")
FAULT_NAMES = (*EXCLUSIVE_FAULTS, "slow", "drop_after_commit", "echo_token")
# Routes whose 200 answers hold upload_track resources (what echo_token alters).
TRACK_ROUTES = ("job_result", "upload_tracks")

UPLOAD_KINDS = (
    "video", "missing", "not-video", "no-audio", "mux-error", "errored", "stuck", "slow",
)
MAGIC_PREFIXES = {f"{kind}-": kind for kind in UPLOAD_KINDS if kind != "video"}

SLOW_UPLOAD_PREPARING_FACTOR = 10
ERRORED_TRACK_MESSAGE = "Subtitles could not be generated for this asset (simulated error)"
DOC_URL = "https://www.datocms.com/docs/content-management-api/errors"
ACCEPTED_CONTENT_TYPES = ("application/vnd.api+json", "application/json")
MAX_BODY_BYTES = 1 << 20
# Size of the huge_body fault's answer: well past any sane client cap.
HUGE_BODY_BYTES = 5 << 20
# Where the redirect fault points: another host (.invalid never resolves).
REDIRECT_HOST = "https://elsewhere.invalid"
SANDBOX_IMMUTABLE = "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT"
# Bounded so a long benchmark cannot grow the log without limit.
MAX_LOGGED_REQUESTS = 200_000
# Idle keep-alive connections are closed after this long.
IDLE_CONNECTION_SECONDS = 120

# A plausible BCP 47 tag: language, optional script, optional region, variants.
_LANGUAGE_TAG = re.compile(
    r"[A-Za-z]{2,3}"
    r"(?:-[A-Za-z]{4})?"
    r"(?:-(?:[A-Za-z]{2}|[0-9]{3}))?"
    r"(?:-(?:[A-Za-z0-9]{5,8}|[0-9][A-Za-z0-9]{3}))*"
)

_GATEWAY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>gateway</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


# --------------------------------------------------------------------------- config


def _no_faults() -> dict[str, float]:
    return {name: 0.0 for name in FAULT_NAMES}


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Every duration is in (float) seconds."""

    job_seconds: float = 2.0          # POST accepted -> job result available
    preparing_seconds: float = 3.0    # job done -> track ready (or errored)
    rate_limit: int = 60              # requests per token per rate_window
    rate_window: float = 3.0
    token: str | None = None          # None: any non-empty bearer token is accepted
    insist_type: str | None = None    # None: both BODY_TYPES are accepted
    environments: frozenset[str] | None = None  # None: any X-Environment is accepted
    immutable_environments: frozenset[str] = frozenset()  # sandboxes whose tracks cannot change
    faults: dict[str, float] = field(default_factory=_no_faults)  # name -> probability
    slow_seconds: float = 2.0         # delay added by the "slow" fault
    seed: int | None = None           # seeds the fault draws

    def __post_init__(self) -> None:
        for name in ("job_seconds", "preparing_seconds", "slow_seconds", "rate_window"):
            _require_non_negative(name, getattr(self, name))
        if not _is_int(self.rate_limit) or self.rate_limit < 1:
            raise ValueError("rate_limit must be an integer >= 1")
        if self.rate_window == 0:
            raise ValueError("rate_window must be > 0")
        if self.token is not None and (not isinstance(self.token, str) or not self.token):
            raise ValueError("token must be a non-empty string or None")
        if self.insist_type not in (None, *BODY_TYPES):
            raise ValueError(f"insist_type must be None or one of {BODY_TYPES}")
        if self.environments is not None:
            self.environments = _environment_set(self.environments)
        self.immutable_environments = _environment_set(self.immutable_environments or ())
        self.faults = _complete_faults(self.faults)
        if self.seed is not None and not _is_int(self.seed):
            raise ValueError("seed must be an integer or None")

    def accepted_types(self) -> tuple[str, ...]:
        return (self.insist_type,) if self.insist_type else BODY_TYPES

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view; the token itself is never shown."""
        view = dataclasses.asdict(self)
        view["token"] = None if self.token is None else "<set>"
        view["environments"] = None if self.environments is None else sorted(self.environments)
        view["immutable_environments"] = sorted(self.immutable_environments)
        return view


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_non_negative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0")


def _environment_set(environments: Iterable[str]) -> frozenset[str]:
    if isinstance(environments, str):
        raise ValueError("environments must be a collection of names, not one string")
    names = frozenset(environments)
    if not all(isinstance(name, str) and name for name in names):
        raise ValueError("environments must be non-empty strings")
    return names


def _complete_faults(faults: dict[str, float] | None) -> dict[str, float]:
    complete = _no_faults()
    for name, probability in (faults or {}).items():
        if name not in complete:
            raise ValueError(f"unknown fault {name!r}; known faults: {', '.join(FAULT_NAMES)}")
        _require_non_negative(f"faults[{name!r}]", probability)
        if probability > 1:
            raise ValueError(f"faults[{name!r}] must be a probability between 0 and 1")
        complete[name] = float(probability)
    return complete


# --------------------------------------------------------------------------- records


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


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as the simulator saw it. ``status`` is None when dropped."""

    time: float
    method: str
    path: str
    route: str
    status: int | None
    fault: str | None
    environment: str | None
    body_type: str | None
    authorized: bool
    content_type: str | None
    accept: str | None
    api_version: str | None
    user_agent: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Any  # http.client.HTTPMessage: case-insensitive lookups
    body: bytes
    authorized: bool = False
    rate_remaining: int | None = None  # set once the request took a rate-limit slot

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass
class _Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


# --------------------------------------------------------------------------- replies


def _json_reply(status: int, document: Any, headers: dict[str, str] | None = None) -> _Reply:
    body = json.dumps(document, separators=(",", ":")).encode()
    return _Reply(status=status, body=body, headers=dict(headers or {}))


def _error_document(code: str, details: dict[str, Any] | None = None, transient: bool = False) -> dict:
    attributes: dict[str, Any] = {
        "code": code,
        "details": details or {},
        "doc_url": f"{DOC_URL}#{code}",
    }
    if transient:
        attributes["transient"] = True
    return {"data": [{"id": secrets.token_hex(6), "type": "api_error", "attributes": attributes}]}


def _error_reply(status: int, code: str, details: dict[str, Any] | None = None,
                 transient: bool = False) -> _Reply:
    return _json_reply(status, _error_document(code, details, transient))


def _not_found() -> _Reply:
    return _error_reply(404, "NOT_FOUND")


# --------------------------------------------------------------------------- rate limit


class _SlidingWindowLimiter:
    """Per-key sliding log of accepted request times. Callers hold the lock."""

    def __init__(self) -> None:
        self._log: dict[str, deque[float]] = {}

    def clear(self) -> None:
        self._log.clear()

    def _recent(self, key: str, window: float, now: float) -> deque[float]:
        times = self._log.setdefault(key, deque())
        while times and times[0] <= now - window:
            times.popleft()
        return times

    def remaining(self, key: str, limit: int, window: float, now: float) -> int:
        return max(0, limit - len(self._recent(key, window, now)))

    def acquire(self, key: str, limit: int, window: float, now: float) -> tuple[bool, int, int]:
        """Take one request slot: (allowed, remaining, whole seconds until a slot frees)."""
        times = self._recent(key, window, now)
        if len(times) < limit:
            times.append(now)
            return True, limit - len(times), 0
        # The oldest request that still counts must leave the window first.
        oldest_that_blocks = times[len(times) - limit]
        reset = max(1, math.ceil(oldest_that_blocks + window - now))
        return False, 0, reset


# --------------------------------------------------------------------------- routing

_GENERATE = re.compile(r"/uploads/([^/]+)/tracks/generate-subtitles")
_TRACKS = re.compile(r"/uploads/([^/]+)/tracks")
_JOB_RESULT = re.compile(r"/job-results/([^/]+)")
_CONTROL_UPLOAD = re.compile(r"/_simulator/uploads/([^/]+)")
CONTROL_PREFIX = "/_simulator/"


def _match_api_route(method: str, path: str) -> tuple[str, str | None]:
    """Name the API route of a request, and the id in its path."""
    if path == "/uploads" and method == "GET":
        return "list_uploads", None
    for route, pattern, route_method in (
        ("generate_subtitles", _GENERATE, "POST"),
        ("upload_tracks", _TRACKS, "GET"),
        ("job_result", _JOB_RESULT, "GET"),
    ):
        match = pattern.fullmatch(path)
        if match and method == route_method:
            return route, unquote(match.group(1))
    return "unknown", None


def _bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _body_type(body: bytes) -> str | None:
    """The JSON:API ``data.type`` of a request body, if it has one."""
    try:
        document = json.loads(body)
    except ValueError:
        return None
    data = document.get("data") if isinstance(document, dict) else None
    kind = data.get("type") if isinstance(data, dict) else None
    return kind if isinstance(kind, str) else None


# --------------------------------------------------------------------------- simulator


class Simulator:
    """A threaded HTTP server that behaves like DatoCMS's subtitles API."""

    def __init__(self, config: SimulatorConfig | None = None,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        # Replaced whole by configure(), never mutated: a plain read needs no lock.
        self._config = dataclasses.replace(config) if config else SimulatorConfig()
        self._host = host
        self._requested_port = port
        self._lock = threading.RLock()
        self._random = random.Random(self._config.seed)
        self._limiter = _SlidingWindowLimiter()
        self._next_job_number = 1  # never reset, so old job ids never come back
        self._jobs: dict[str, _Job] = {}
        self._tracks: dict[tuple[str | None, str], list[_Job]] = {}
        self._upload_kinds: dict[str, str] = {}
        # environment -> upload id -> what GET /uploads lists (add_upload)
        self._listed: dict[str | None, dict[str, _ListedUpload]] = {}
        self._log: deque[RequestRecord] = deque(maxlen=MAX_LOGGED_REQUESTS)
        self._counts_by_route: Counter[str] = Counter()
        self._counts_by_status: Counter[str] = Counter()
        self._counts_by_fault: Counter[str] = Counter()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> "Simulator":
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = _Server((self._host, self._requested_port), self)
        # A short poll interval because stop() waits up to one interval.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
            name=f"datocms-simulator:{self._server.server_address[1]}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_open_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "Simulator":
        return self.start() if self._server is None else self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    # ----------------------------------------------------------------- configuration

    @property
    def config(self) -> SimulatorConfig:
        """A copy of the current configuration."""
        with self._lock:
            return dataclasses.replace(self._config, faults=dict(self._config.faults))

    def configure(self, **fields: Any) -> SimulatorConfig:
        """Change the given config fields, keep the others.

        ``faults`` is replaced as a whole: fault names left out get probability 0,
        so ``configure(faults={})`` turns every fault off.
        """
        known = {f.name for f in dataclasses.fields(SimulatorConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise TypeError(f"unknown config field(s) {unknown}; known: {sorted(known)}")
        with self._lock:
            self._config = dataclasses.replace(self._config, **fields)
            if "seed" in fields:
                self._random = random.Random(self._config.seed)
            return self.config

    def set_upload(self, upload_id: str, kind: str) -> None:
        """Make one upload behave as ``kind`` (see UPLOAD_KINDS), whatever its prefix."""
        kind = kind.replace("_", "-")
        if kind not in UPLOAD_KINDS:
            raise ValueError(f"unknown upload kind {kind!r}; known kinds: {', '.join(UPLOAD_KINDS)}")
        with self._lock:
            self._upload_kinds[upload_id] = kind

    def upload_kind(self, upload_id: str) -> str:
        with self._lock:
            explicit = self._upload_kinds.get(upload_id)
            listed = [uploads[upload_id] for uploads in self._listed.values() if upload_id in uploads]
        if explicit:
            return explicit
        if listed and listed[0].kind != "video":
            return "not-video"  # an added image or audio upload
        for prefix, kind in MAGIC_PREFIXES.items():
            if upload_id.startswith(prefix):
                return kind
        return "video"

    def reset(self) -> None:
        """Forget jobs, tracks, upload kinds, counters, the log and rate-limit windows."""
        with self._lock:
            self._jobs.clear()
            self._tracks.clear()
            self._upload_kinds.clear()
            self._listed.clear()
            self._log.clear()
            self._counts_by_route.clear()
            self._counts_by_status.clear()
            self._counts_by_fault.clear()
            self._limiter.clear()
            self._random = random.Random(self._config.seed)

    def complete_all_jobs(self, include_stuck: bool = False) -> int:
        """Finish every running job now; returns how many were finished."""
        now = time.monotonic()
        finished = 0
        with self._lock:
            for job in self._jobs.values():
                if job.is_done(now) or (job.kind == "stuck" and not include_stuck):
                    continue
                job.done_at = now
                finished += 1
        return finished

    # ----------------------------------------------------------------- bookkeeping

    def accepted_posts(self) -> Counter[tuple[str | None, str, str]]:
        """Accepted (202) POSTs per (environment, upload_id, language_code)."""
        # Each accepted POST made exactly one job, so the jobs are the count.
        with self._lock:
            return Counter((job.environment, job.upload_id, job.language_code)
                           for job in self._jobs.values())

    def requests(self) -> list[RequestRecord]:
        """A copy of the API request log, oldest first."""
        with self._lock:
            return list(self._log)

    def request_counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {
                "total": sum(self._counts_by_route.values()),
                "by_route": dict(self._counts_by_route),
                "by_status": dict(self._counts_by_status),
                "by_fault": dict(self._counts_by_fault),
            }

    def jobs(self) -> list[dict[str, Any]]:
        """Every job with its current phase and, once done, its track's status."""
        now = time.monotonic()
        with self._lock:
            return [self._job_view(job, now) for job in self._jobs.values()]

    def state(self) -> dict[str, Any]:
        """What ``GET /_simulator/state`` answers."""
        now = time.monotonic()
        with self._lock:
            running = sum(1 for job in self._jobs.values() if not job.is_done(now))
            return {
                "accepted_posts": [
                    {"environment": env, "upload_id": upload, "language_code": lang, "count": n}
                    for (env, upload, lang), n in self.accepted_posts().items()
                ],
                "request_counts": self.request_counts(),
                "jobs": {"total": len(self._jobs), "running": running,
                         "done": len(self._jobs) - running},
                "uploads": dict(self._upload_kinds),
                "config": self._config.to_json(),
            }

    def _job_view(self, job: _Job, now: float) -> dict[str, Any]:
        done = job.is_done(now)
        return {
            "id": job.job_id,
            "upload_id": job.upload_id,
            "environment": job.environment,
            "language_code": job.language_code,
            "name": job.name,
            "upload_kind": job.kind,
            "phase": "done" if done else "running",
            "track_id": job.track_id if job.creates_track() else None,
            "track_status": job.track_status(now) if done and job.creates_track() else None,
        }

    # ----------------------------------------------------------------- API requests

    def _serve(self, request: _Request) -> _Reply:
        if request.path.startswith(CONTROL_PREFIX):
            return self._serve_control(request)
        return self._serve_api(request)

    def _serve_api(self, request: _Request) -> _Reply:
        route, path_id = _match_api_route(request.method, request.path)
        fault, slow = self._draw_faults(route)
        if slow:
            time.sleep(self._config.slow_seconds)
        if fault in EXCLUSIVE_FAULTS:
            reply = self._fault_reply(fault, request)
        else:
            reply = self._handle_api(request, route, path_id)
            if fault == "drop_after_commit" and reply.status == 202:
                reply.drop = True
            elif fault == "drop_after_commit":
                fault = None  # nothing was committed, so nothing to lose
            elif fault == "echo_token" and not _echo_token(reply, _bearer_token(request.header("Authorization"))):
                fault = None  # no track in the answer to carry the token
        recorded_fault = fault or ("slow" if slow else None)
        self._add_rate_headers(reply, request)
        self._record(request, route, reply, recorded_fault)
        return reply

    def _draw_faults(self, route: str) -> tuple[str | None, bool]:
        """Pick at most one fault (exclusive, else one that alters the answer), and
        whether to answer slowly."""
        with self._lock:
            faults = self._config.faults
            slow = self._hits(faults["slow"])
            for name in EXCLUSIVE_FAULTS:
                if self._hits(faults[name]):
                    return name, slow
            if route == "generate_subtitles" and self._hits(faults["drop_after_commit"]):
                return "drop_after_commit", slow
            if route in TRACK_ROUTES and self._hits(faults["echo_token"]):
                return "echo_token", slow
            return None, slow

    def _hits(self, probability: float) -> bool:
        # Probability 0 draws nothing, so turning a fault on does not shift the others' draws.
        return probability > 0 and self._random.random() < probability

    def _fault_reply(self, fault: str, request: _Request) -> _Reply:
        if fault == "drop":
            return _Reply(status=0, drop=True)
        if fault == "html_502":
            return _Reply(status=502, body=_GATEWAY_PAGE, content_type="text/html; charset=utf-8")
        if fault == "http_500":
            return _error_reply(500, "INTERNAL_SERVER_ERROR")
        if fault == "http_503":
            return _error_reply(503, "SERVICE_UNAVAILABLE", transient=True)
        if fault == "transient":
            return _error_reply(409, "ENVIRONMENT_NOT_READY", transient=True)
        if fault == "huge_body":
            return _Reply(status=200, body=_huge_document())
        if fault == "redirect":
            return _Reply(status=302, content_type="text/plain",
                          headers={"Location": REDIRECT_HOST + request.path})
        reply = _error_reply(429, "RATE_LIMIT_EXCEEDED", {"reason": "platform_load"})
        reply.headers["X-RateLimit-Reset"] = "1"
        return reply

    def _handle_api(self, request: _Request, route: str, path_id: str | None) -> _Reply:
        rejection = self._check_headers(request)
        if rejection:
            return rejection
        if route == "generate_subtitles":
            return self._generate_subtitles(request, path_id)
        if route == "job_result":
            return self._job_result(path_id)
        if route == "upload_tracks":
            return self._upload_tracks(request, path_id)
        if route == "list_uploads":
            return self._list_uploads(request)
        return _not_found()

    def _check_headers(self, request: _Request) -> _Reply | None:
        """Auth, rate limit, API version and environment, in that order."""
        config = self._config
        token = _bearer_token(request.header("Authorization"))
        if token is None:
            return _error_reply(401, "INVALID_AUTHORIZATION_HEADER")
        if config.token is not None and not hmac.compare_digest(token.encode(), config.token.encode()):
            return _error_reply(401, "INVALID_AUTHORIZATION_HEADER")
        request.authorized = True
        with self._lock:
            allowed, remaining, reset = self._limiter.acquire(
                token, config.rate_limit, config.rate_window, time.monotonic())
        if not allowed:
            reply = _error_reply(429, "RATE_LIMIT_EXCEEDED",
                                 {"limit": config.rate_limit, "window_seconds": config.rate_window})
            reply.headers.update({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)})
            return reply
        request.rate_remaining = remaining
        if (request.header("X-Api-Version") or "").strip() != "3":
            return _error_reply(422, "INVALID_API_VERSION", {"supported": ["3"]})
        environment = request.header("X-Environment")
        if environment is not None and config.environments is not None \
                and environment not in config.environments:
            return _error_reply(422, "INVALID_ENVIRONMENT", {"environment": environment})
        return None

    def _add_rate_headers(self, reply: _Reply, request: _Request) -> None:
        config = self._config
        reply.headers["X-RateLimit-Limit"] = str(config.rate_limit)
        if "X-RateLimit-Remaining" in reply.headers:
            return
        remaining = request.rate_remaining
        if remaining is None:  # this request took no slot: show what is left
            token = _bearer_token(request.header("Authorization")) or ""
            with self._lock:
                remaining = self._limiter.remaining(
                    token, config.rate_limit, config.rate_window, time.monotonic())
        reply.headers["X-RateLimit-Remaining"] = str(remaining)

    # ----------------------------------------------------------------- endpoints

    def _generate_subtitles(self, request: _Request, upload_id: str) -> _Reply:
        kind = self.upload_kind(upload_id)
        if kind == "missing":
            return _not_found()
        attributes_or_error = self._parse_generate_body(request)
        if isinstance(attributes_or_error, _Reply):
            return attributes_or_error
        environment = request.header("X-Environment")
        if environment is not None and environment in self._config.immutable_environments:
            return _error_reply(422, SANDBOX_IMMUTABLE, {"environment": environment})
        if kind == "not-video":
            return _error_reply(422, "NOT_A_VIDEO", {"upload_id": upload_id})
        language_code, name = attributes_or_error
        job = self._create_job(upload_id, request.header("X-Environment"), language_code, name, kind)
        return _json_reply(202, {"data": {"type": "job", "id": job.job_id}})

    def _parse_generate_body(self, request: _Request) -> tuple[str, str | None] | _Reply:
        """The (language_code, name) of a valid body, or the 422 that rejects it."""
        if _media_type(request.header("Content-Type")) not in ACCEPTED_CONTENT_TYPES:
            return _error_reply(422, "INVALID_JSON_BODY",
                                {"reason": f"Content-Type must be one of {list(ACCEPTED_CONTENT_TYPES)}"})
        try:
            document = json.loads(request.body)
        except ValueError:
            return _error_reply(422, "INVALID_JSON_BODY", {"reason": "body is not valid JSON"})
        data = document.get("data") if isinstance(document, dict) else None
        if not isinstance(data, dict):
            return _error_reply(422, "INVALID_JSON_BODY", {"reason": "body must be {\"data\": {...}}"})
        accepted = self._config.accepted_types()
        if data.get("type") not in accepted:
            return _error_reply(422, "INVALID_TYPE", {"field": "type", "expected": list(accepted),
                                                      "got": data.get("type")})
        attributes = data.get("attributes")
        if not isinstance(attributes, dict):
            return _error_reply(422, "INVALID_ATTRIBUTES", {"reason": "attributes must be an object"})
        extraneous = sorted(set(attributes) - {"language_code", "name"})
        if extraneous:
            return _error_reply(422, "INVALID_ATTRIBUTES", {"extraneous_attributes": extraneous})
        return _validate_attributes(attributes)

    def _create_job(self, upload_id: str, environment: str | None,
                    language_code: str, name: str | None, kind: str) -> _Job:
        config = self._config
        now = time.monotonic()
        preparing = config.preparing_seconds * (SLOW_UPLOAD_PREPARING_FACTOR if kind == "slow" else 1)
        with self._lock:
            job = _Job(
                job_id=str(self._next_job_number), upload_id=upload_id, environment=environment,
                language_code=language_code, name=name, kind=kind,
                done_at=math.inf if kind == "stuck" else now + config.job_seconds,
                preparing_seconds=preparing,
            )
            self._next_job_number += 1
            self._jobs[job.job_id] = job
            if job.creates_track():
                self._tracks.setdefault((environment, upload_id), []).append(job)
        return job

    def _job_result(self, job_id: str) -> _Reply:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or not job.is_done(time.monotonic()):
            return _not_found()
        status, payload = _job_outcome(job)
        return _json_reply(200, {"data": {
            "type": "job_result", "id": job.job_id,
            "attributes": {"status": status, "payload": payload},
        }})

    def _upload_tracks(self, request: _Request, upload_id: str) -> _Reply:
        if self.upload_kind(upload_id) == "missing":
            return _not_found()
        now = time.monotonic()
        with self._lock:
            jobs = list(self._tracks.get((request.header("X-Environment"), upload_id), ()))
        tracks = [_track_resource(job, job.track_status(now)) for job in jobs if job.is_done(now)]
        return _json_reply(200, {"data": tracks})

    # ----------------------------------------------------------------- listed uploads (GET /uploads)

    def add_upload(self, upload_id: str, *, created_at: datetime | float | str | None = None,
                   age: float | None = None, kind: str = "video", duration: float | None = None,
                   mux_ready: bool = True, environment: str | None = None) -> dict[str, Any]:
        """List an upload in ``GET /uploads`` (replacing one with that id); returns its resource.

        ``created_at`` is an aware datetime, Unix seconds or ISO 8601 text; ``age`` says
        "that many seconds ago" instead; neither means now. ``duration`` defaults to a
        minute for videos and audio. ``mux_ready=False``: Mux is still processing it, so
        ``mux_playback_id`` is null.
        """
        if not isinstance(upload_id, str) or not upload_id or "/" in upload_id:
            raise ValueError("upload_id must be a non-empty string without '/'")
        if kind not in MEDIA_KINDS:
            raise ValueError(f"unknown media kind {kind!r}; known: {', '.join(MEDIA_KINDS)}")
        if created_at is not None and age is not None:
            raise ValueError("give created_at or age, not both")
        if age is not None:
            _require_finite("age", age)
            stamp = time.time() - age
        else:
            stamp = _unix_seconds(created_at) if created_at is not None else time.time()
        if duration is not None:
            _require_finite("duration", duration)
        elif kind != "image":
            duration = DEFAULT_MEDIA_SECONDS
        if environment is not None and (not isinstance(environment, str) or not environment):
            raise ValueError("environment must be a non-empty string or None")
        upload = _ListedUpload(upload_id, stamp, kind, None if kind == "image" else duration, bool(mux_ready))
        with self._lock:
            self._listed.setdefault(environment, {})[upload_id] = upload
        return _upload_resource(upload)

    def remove_upload(self, upload_id: str, environment: str | None = None) -> bool:
        """Stop listing an upload (as if deleted); whether it was listed."""
        with self._lock:
            return self._listed.get(environment, {}).pop(upload_id, None) is not None

    def _list_uploads(self, request: _Request) -> _Reply:
        query = request.query
        for name in query:
            if name not in LIST_UPLOADS_PARAMETERS:
                return _invalid_field(name, "VALIDATION_UNSUPPORTED", query[name][-1],
                                      "not a parameter the simulator supports")
        offset = _query_int(query, "page[offset]", 0, 0, 10 ** 9)
        limit = _query_int(query, "page[limit]", DEFAULT_PAGE_LIMIT, 1, MAX_PAGE_LIMIT)
        for checked in (offset, limit):
            if isinstance(checked, _Reply):
                return checked
        order = (query.get("order_by") or ["_created_at_ASC"])[-1]
        if order not in ("_created_at_ASC", "_created_at_DESC"):
            return _invalid_field("order_by", "VALIDATION_INVALID", order,
                                  "the simulator orders by _created_at_ASC or _created_at_DESC")
        wanted_type = (query.get("filter[fields][type][eq]") or [None])[-1]
        ids = (query.get("filter[ids]") or [None])[-1]
        wanted_ids = set(ids.split(",")) if ids is not None else None
        with self._lock:
            uploads = list(self._listed.get(request.header("X-Environment"), {}).values())
        matching = sorted(
            (u for u in uploads
             if (wanted_type is None or u.kind == wanted_type) and (wanted_ids is None or u.upload_id in wanted_ids)),
            key=lambda u: (u.created_at, u.upload_id), reverse=order.endswith("DESC"))
        page = matching[offset:offset + limit]
        return _json_reply(200, {"data": [_upload_resource(u) for u in page],
                                 "meta": {"total_count": len(matching)}})

    # ----------------------------------------------------------------- control

    def _serve_control(self, request: _Request) -> _Reply:
        path, method = request.path, request.method
        try:
            if method == "GET" and path == "/_simulator/state":
                return _json_reply(200, self.state())
            if method == "GET" and path == "/_simulator/requests":
                return _json_reply(200, {"requests": self._logged_requests(request.query)})
            if method == "GET" and path == "/_simulator/jobs":
                return _json_reply(200, {"jobs": self.jobs()})
            if method == "POST" and path == "/_simulator/config":
                new_config = self.configure(**_config_fields_from_json(_json_object(request.body)))
                return _json_reply(200, {"config": new_config.to_json()})
            if method == "POST" and path == "/_simulator/reset":
                self.reset()
                return _json_reply(200, {"ok": True})
            if method == "POST" and path == "/_simulator/complete-jobs":
                finished = self.complete_all_jobs(bool(_json_object(request.body).get("include_stuck")))
                return _json_reply(200, {"completed": finished})
            if method == "POST" and path == "/_simulator/add-upload":
                return _json_reply(200, {"upload": self.add_upload(**_add_upload_fields(_json_object(request.body)))})
            match = _CONTROL_UPLOAD.fullmatch(path)
            if method == "POST" and match:
                upload_id, kind = unquote(match.group(1)), _json_object(request.body).get("kind")
                self.set_upload(upload_id, str(kind))
                return _json_reply(200, {"upload_id": upload_id, "kind": self.upload_kind(upload_id)})
        except (TypeError, ValueError) as error:
            return _json_reply(400, {"error": str(error)})
        return _json_reply(404, {"error": f"no control endpoint {method} {path}"})

    def _logged_requests(self, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        records = self.requests()
        limit = int(query.get("limit", ["0"])[0] or 0)
        if limit > 0:
            records = records[-limit:]
        return [record.to_json() for record in records]

    def _record(self, request: _Request, route: str, reply: _Reply, fault: str | None) -> None:
        status = None if reply.drop else reply.status
        record = RequestRecord(
            time=time.monotonic(), method=request.method, path=request.path, route=route,
            status=status, fault=fault, environment=request.header("X-Environment"),
            body_type=_body_type(request.body) if request.body else None,
            authorized=request.authorized, content_type=request.header("Content-Type"),
            accept=request.header("Accept"), api_version=request.header("X-Api-Version"),
            user_agent=request.header("User-Agent"),
        )
        with self._lock:
            self._log.append(record)
            self._counts_by_route[route] += 1
            self._counts_by_status["dropped" if status is None else str(status)] += 1
            if fault:
                self._counts_by_fault[fault] += 1


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


def _echo_token(reply: _Reply, token: str | None) -> bool:
    """Name every track of a 200 answer after the bearer token; whether any was."""
    if reply.status != 200 or not token:
        return False
    document = json.loads(reply.body)
    data = document.get("data")
    if isinstance(data, dict) and data.get("type") == "job_result":
        payload = data["attributes"].get("payload") or {}
        data = payload.get("data")
    tracks = [item for item in (data if isinstance(data, list) else [data])
              if isinstance(item, dict) and item.get("type") == "upload_track"]
    for track in tracks:
        track["attributes"]["name"] = f"echo: Bearer {token}"
    if tracks:
        reply.body = json.dumps(document, separators=(",", ":")).encode()
    return bool(tracks)


def _huge_document() -> bytes:
    padding = HUGE_BODY_BYTES - len(b'{"data":null,"meta":{"padding":""}}')
    return b'{"data":null,"meta":{"padding":"' + b"x" * padding + b'"}}'


def _job_outcome(job: _Job) -> tuple[int, dict[str, Any]]:
    """The (status, payload) a finished job reports: a snapshot taken when it finished."""
    if job.kind == "no-audio":
        return 422, _error_document("NO_PRIMARY_AUDIO_TRACK", {"upload_id": job.upload_id})
    if job.kind == "mux-error":
        return 500, _error_document("MUX_ERROR", {"upload_id": job.upload_id})
    return 200, {"data": _track_resource(job, job.track_status(job.done_at))}


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError("body must be a JSON object")
    return document


def _config_fields_from_json(document: dict[str, Any]) -> dict[str, Any]:
    fields = dict(document)
    if "token" in fields:
        raise ValueError("the token cannot be changed over HTTP")
    for name in ("environments", "immutable_environments"):
        if isinstance(fields.get(name), list):
            fields[name] = frozenset(fields[name])
    return fields


# --------------------------------------------------------------------------- listed uploads

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
            "duration": None if upload.duration is None else int(round(upload.duration)),
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


def _query_int(query: dict[str, list[str]], name: str, default: int, low: int, high: int) -> int | _Reply:
    values = query.get(name)
    if not values:
        return default
    raw = values[-1]
    if not _DIGITS.fullmatch(raw) or not low <= int(raw) <= high:
        return _invalid_field(name, "VALIDATION_INVALID", raw, f"must be a whole number from {low} to {high}")
    return int(raw)


def _add_upload_fields(document: dict[str, Any]) -> dict[str, Any]:
    """``POST /_simulator/add-upload``'s body as add_upload's arguments."""
    fields = dict(document)
    known = {"upload_id", "created_at", "age", "kind", "duration", "mux_ready", "environment"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: {sorted(known)}")
    if "upload_id" not in fields:
        raise ValueError("upload_id is required")
    return fields


# --------------------------------------------------------------------------- HTTP server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.simulator = simulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """End kept-alive connections, so a stopped simulator answers nothing."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "subtitle-tasks-simulator"
    timeout = IDLE_CONNECTION_SECONDS
    # Headers and body go out in two writes; with Nagle on, the second would
    # wait for the client's delayed ACK (~40 ms per answer).
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet by design: request lines would go to stderr of every test run

    def _dispatch(self) -> None:
        body = self._read_body()
        if body is None:
            self._send(_error_reply(422, "INVALID_JSON_BODY", {"reason": "body too large or unreadable"}))
            self.close_connection = True
            return
        parts = urlsplit(self.path)
        request = _Request(method=self.command, path=parts.path, query=parse_qs(parts.query),
                           headers=self.headers, body=body)
        reply = self.server.simulator._serve(request)
        if reply.drop:
            self.close_connection = True
            return
        self._send(reply)

    def _read_body(self) -> bytes | None:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            return None
        if length > MAX_BODY_BYTES:
            return None
        return self.rfile.read(length) if length > 0 else b""

    def _read_chunked(self) -> bytes | None:
        chunks = []
        size_total = 0
        while True:
            size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            size_total += size
            if size_total > MAX_BODY_BYTES:
                return None
            chunks.append(self.rfile.read(size))
            self.rfile.readline()

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "max-age=0, private, must-revalidate")
        self.send_header("X-Request-Id", secrets.token_hex(8))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            # A client that stops reading (a huge_body cap) hangs up mid-answer.
            self.close_connection = True


# --------------------------------------------------------------------------- CLI


def _fault_argument(text: str) -> tuple[str, float]:
    name, separator, probability = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected NAME=PROB, got {text!r}")
    try:
        return name.strip(), float(probability)
    except ValueError:
        raise argparse.ArgumentTypeError(f"probability must be a number, got {probability!r}") from None


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="subtitle-tasks simulate",
        description="Serve a local simulator of DatoCMS's generate-subtitles API.",
    )
    defaults = SimulatorConfig()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--token", default=None, help="accept only this API token")
    parser.add_argument("--job-seconds", type=float, default=defaults.job_seconds)
    parser.add_argument("--preparing-seconds", type=float, default=defaults.preparing_seconds)
    parser.add_argument("--rate-limit", type=int, default=defaults.rate_limit)
    parser.add_argument("--rate-window", type=float, default=defaults.rate_window)
    parser.add_argument("--insist-type", choices=BODY_TYPES, default=None)
    parser.add_argument("--immutable-environment", action="append", default=[], metavar="NAME",
                        help="repeatable; POSTs naming this sandbox answer 422 " + SANDBOX_IMMUTABLE)
    parser.add_argument("--fault", type=_fault_argument, action="append", default=[],
                        metavar="NAME=PROB", help=f"repeatable; names: {', '.join(FAULT_NAMES)}")
    parser.add_argument("--seed", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            job_seconds=args.job_seconds, preparing_seconds=args.preparing_seconds,
            rate_limit=args.rate_limit, rate_window=args.rate_window, token=args.token,
            insist_type=args.insist_type, faults=dict(args.fault), seed=args.seed,
            immutable_environments=frozenset(args.immutable_environment),
        )
    except ValueError as error:
        parser.error(str(error))
    stop_requested = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda *_: stop_requested.set())
    simulator = Simulator(config, host=args.host, port=args.port).start()
    try:
        print(f"subtitle-tasks simulator listening on {simulator.url}", flush=True)
        while not stop_requested.wait(0.2):
            pass
    finally:
        simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
