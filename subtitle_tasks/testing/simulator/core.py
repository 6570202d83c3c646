"""``Simulator``: what the simulated DatoCMS holds (jobs, tracks, uploads, the request log and its
counters) and how it answers each API request, from faults and header checks to the endpoints."""

from __future__ import annotations

import dataclasses
import hmac
import json
import math
import random
import threading
import time
from collections import Counter, deque
from datetime import datetime
from typing import Any, TypedDict

from .config import SimulatorConfig
from .control import CONTROL_PREFIX, _serve_control
from .faults import EXCLUSIVE_FAULTS, TRACK_ROUTES, _echo_token, _fault_reply
from .jobs import ACCEPTED_CONTENT_TYPES, SANDBOX_IMMUTABLE, _Job, _job_outcome, _track_resource, _validate_attributes
from .limiter import _SlidingWindowLimiter
from .replies import _error_reply, _json_reply, _not_found, _Reply
from .routes import RequestRecord, _bearer_token, _body_type, _match_api_route, _media_type, _Request
from .server import _Server
from .uploads import (
    DEFAULT_MEDIA_SECONDS,
    DEFAULT_PAGE_LIMIT,
    LIST_UPLOADS_PARAMETERS,
    MAGIC_PREFIXES,
    MAX_PAGE_LIMIT,
    MEDIA_KINDS,
    SLOW_UPLOAD_PREPARING_FACTOR,
    UPLOAD_KINDS,
    _invalid_field,
    _last_value,
    _ListedUpload,
    _query_int,
    _require_finite,
    _unix_seconds,
    _upload_resource,
)

# Bounded so a long benchmark cannot grow the log without limit.
MAX_LOGGED_REQUESTS = 200_000


class RequestCounts(TypedDict):
    """What ``Simulator.request_counts()`` answers: API requests in all, per route, status, fault."""

    total: int
    by_route: dict[str, int]
    by_status: dict[str, int]  # "dropped" for a connection closed without an answer
    by_fault: dict[str, int]


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

    def start(self) -> Simulator:
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._server = _Server((self._host, self._requested_port), self._serve)
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

    def __enter__(self) -> Simulator:
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

    def request_counts(self) -> RequestCounts:
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
            return _serve_control(self, request)
        return self._serve_api(request)

    def _serve_api(self, request: _Request) -> _Reply:
        route, path_id = _match_api_route(request.method, request.path)
        fault, slow = self._draw_faults(route)
        if slow:
            time.sleep(self._config.slow_seconds)
        if fault in EXCLUSIVE_FAULTS:
            reply = _fault_reply(fault, request)
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

    def _handle_api(self, request: _Request, route: str, path_id: str | None) -> _Reply:
        rejection = self._check_headers(request)
        if rejection:
            return rejection
        if route == "list_uploads":
            return self._list_uploads(request)
        if path_id is None:  # "unknown": every other route has an id in its path
            return _not_found()
        if route == "generate_subtitles":
            return self._generate_subtitles(request, path_id)
        if route == "job_result":
            return self._job_result(path_id)
        if route == "upload_tracks":
            return self._upload_tracks(request, path_id)
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
        if isinstance(offset, _Reply):
            return offset
        if isinstance(limit, _Reply):
            return limit
        order = (query.get("order_by") or ["_created_at_ASC"])[-1]
        if order not in ("_created_at_ASC", "_created_at_DESC"):
            return _invalid_field("order_by", "VALIDATION_INVALID", order,
                                  "the simulator orders by _created_at_ASC or _created_at_DESC")
        wanted_type = _last_value(query, "filter[fields][type][eq]")
        ids = _last_value(query, "filter[ids]")
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

    # ----------------------------------------------------------------- request log

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
