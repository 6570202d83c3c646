"""What the pipeline knows about requests and generations, and the store interface.

A *request* is one caller's ask (its callbacks, its id). A *generation* is one
DatoCMS subtitle job for an (environment, upload, language): requests for the same
track made while one is in flight share it, so DatoCMS generates the track once.

Generation phases::

    submit --POST 202--> job --job result 200, track preparing--> track --ready/errored--> done
       \\________________________ready/errored/failed/deadline/cancelled______________/

Request states::

    waiting -> finishing (outcome decided, callbacks being sent) -> ready | failed
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypedDict

# Generation phases
SUBMIT, JOB, TRACK, DONE = "submit", "job", "track", "done"
# Request states
WAITING, FINISHING, READY, FAILED = "waiting", "finishing", "ready", "failed"
# Outcomes
OUTCOME_READY, OUTCOME_ERROR = "ready", "error"
# The two halves of a site's schedule: generations not yet submitted, and those polled.
SCHEDULE_SUBMIT, SCHEDULE_POLL = "submit", "poll"


def schedule_kind(phase: str) -> str:
    """Which half of its site's schedule a generation in ``phase`` waits in."""
    return SCHEDULE_SUBMIT if phase == SUBMIT else SCHEDULE_POLL


def sizes_by_site(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """``schedule_stats`` rows as site -> {"submit": n, "poll": n}, sites with entries only."""
    sizes: dict[str, dict[str, int]] = {}
    for row in rows:
        sizes.setdefault(row["site"], {SCHEDULE_SUBMIT: 0, SCHEDULE_POLL: 0})[row["kind"]] += row["scheduled"]
    return {site: n for site, n in sizes.items() if n[SCHEDULE_SUBMIT] or n[SCHEDULE_POLL]}


# Generation attributes Store.advance may change -> their hash field names (kept short:
# a fleet may hold 100,000 waiting generations).
GENERATION_FIELDS = {
    "phase": "phase", "attempts": "attempts", "errors": "errors", "job_id": "job", "track_id": "track",
    "posted_at": "posted", "known_tracks": "known_tracks", "body_type": "body_type", "last_error": "last_error",
    "phase_clock": "pclock", "visibility_probe": "vprobe", "shown": "shown",
}


def encode_value(value: Any) -> str:
    """How every store writes a value into a hash field (``from_hash`` reads it back)."""
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if isinstance(value, (tuple, set, frozenset)):
        return ",".join(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def encode_generation_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Store.advance's keyword arguments as hash fields."""
    out: dict[str, str] = {}
    for attr, value in fields.items():
        stored: object = value
        if attr == "known_tracks":
            stored = ",".join(value or ())  # any sequence of ids, never JSON
        elif attr in ("phase_clock", "shown"):
            # phase_clock: (POST accepted, seconds after it the track was last known not ready),
            # ~22 bytes; shown: (the last look without the track, the first with it), seconds
            # after the POST. Milliseconds are plenty.
            stored = f"{value[0]:.3f},{value[1]:.3f}" if value else None
        elif attr == "visibility_probe":
            stored = "1" if value else None  # post evidence (repost.py): present only while pending
        elif attr in ("attempts", "errors") and value == 0:
            stored = None  # stored as absent, read back as 0: bytes matter at 100,000 waiting
        out[GENERATION_FIELDS[attr]] = encode_value(stored)
    return out


def dedup_field(site: str | None, environment: str | None, upload_id: str, language_code: str) -> str:
    """Where the active index files a track's generation: one per (site, environment, upload, language)."""
    key = "|".join([environment or "", upload_id, language_code.lower()])
    return f"{site}#{key}" if site else key


def lock_millis(ttl: float) -> int:
    """A lock's time to live as Redis keeps it: whole milliseconds, at least one."""
    return max(1, int(ttl * 1000))


# Redis keeps a small hash as one compact listpack only while every value is at most
# this many bytes (hash-max-listpack-value); one longer value turns the whole hash into
# a hashtable, about three times the memory. A caller's callbacks easily pass it.
LISTPACK_VALUE_MAX = 64


def split_field(name: str, value: str, limit: int = LISTPACK_VALUE_MAX) -> dict[str, str]:
    """A long value as fields ``name.0``, ``name.1``... of at most ``limit`` UTF-8 bytes each."""
    if len(value.encode()) <= limit:
        return {name: value}
    parts: list[str] = []
    current: list[str] = []
    size = 0
    for char in value:  # whole characters only: each part must decode on its own
        width = len(char.encode())
        if size + width > limit:
            parts.append("".join(current))
            current, size = [], 0
        current.append(char)
        size += width
    parts.append("".join(current))
    return {f"{name}.{i}": part for i, part in enumerate(parts)}


def join_field(raw: dict[str, str], name: str) -> str | None:
    """What :func:`split_field` split (or a value stored whole), or None."""
    if name in raw:
        return raw[name]
    parts: list[str] = []
    while f"{name}.{len(parts)}" in raw:
        parts.append(raw[f"{name}.{len(parts)}"])
    return "".join(parts) if parts else None


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _pair(value: str | None) -> tuple[float, float] | None:
    try:
        start, last = (value or "").split(",")
        return float(start), float(last)
    except ValueError:  # absent, or not ours: the phase polls on the cold schedule
        return None


def _band(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:  # not ours: plan from the site's timing
        return None


@dataclass(frozen=True)
class Generation:
    id: str
    now: float  # the store's clock when this snapshot was read
    upload_id: str
    language_code: str
    name: str | None
    environment: str | None
    site: str  # the site's alias; "" for the default site
    phase: str
    attempts: int
    errors: int  # consecutive retryable failures in this phase
    created: float
    deadline: float
    due: float | None
    job_id: str | None
    track_id: str | None
    posted_at: float | None  # a POST may have gone out at this time (cleared when we know)
    known_tracks: tuple[str, ...]  # track ids the upload had before our first POST
    body_type: str | None
    last_error: str | None  # the latest retryable failure, for the deadline message
    outcome: str | None
    result: dict[str, Any] | None
    subscribers: tuple[str, ...]
    # When the POST was accepted (store time) and how long after it the track was last
    # known not ready, for the learned schedule (schedule.py); it runs on through the job
    # and track phases. None for a generation written before it existed, which then
    # polls on the cold schedule.
    phase_clock: tuple[float, float] | None = None
    # post evidence (repost.py): this generation's POST was probed and its track not yet
    # seen, so its job's end records how long the track took to show, as an upper bound.
    visibility_probe: bool = False
    # The upload's duration band (schedule.duration_band), when the request gave the
    # upload's duration: the learned schedule may plan from that band's timing.
    duration_band: int | None = None
    # When the track showed, as the looks bound it (seconds after the POST: the last look
    # without it, the first that found it, in the list or as the job's result), for
    # unseen.py's points; None until a look has found it.
    shown: tuple[float, float] | None = None

    @property
    def expired(self) -> bool:
        return self.now >= self.deadline

    @classmethod
    def from_hash(cls, generation_id: str, now: float, raw: dict[str, str]) -> Generation:
        known = raw.get("known_tracks")
        result = raw.get("result")
        return cls(
            id=generation_id,
            now=now,
            upload_id=raw["upload"],
            language_code=raw["lang"],
            name=raw.get("name") or None,
            environment=raw.get("env") or None,
            site=raw.get("site") or "",
            phase=raw["phase"],
            attempts=int(raw.get("attempts") or 0),
            errors=int(raw.get("errors") or 0),
            created=float(raw["created"]),
            deadline=float(raw["deadline"]),
            due=_float(raw.get("due")),
            job_id=raw.get("job") or None,
            track_id=raw.get("track") or None,
            posted_at=_float(raw.get("posted")),
            known_tracks=tuple(known.split(",")) if known else (),
            body_type=raw.get("body_type") or None,
            last_error=raw.get("last_error") or None,
            outcome=raw.get("outcome") or None,
            result=json.loads(result) if result else None,
            subscribers=tuple(s for s in raw.get("subs", "").split(",") if s),
            phase_clock=_pair(raw.get("pclock")),
            visibility_probe=raw.get("vprobe") == "1",
            duration_band=_band(raw.get("dband")),
            shown=_pair(raw.get("shown")),
        )


@dataclass(frozen=True)
class RequestRecord:
    id: str
    generation_id: str
    upload_id: str
    language_code: str
    state: str
    outcome: str | None
    created: float
    deadline: float
    finished: float | None
    on_ready: list[dict[str, Any]]
    on_error: list[dict[str, Any]]
    error: dict[str, Any] | None  # set for a request-level end (cancel); otherwise the generation's result rules
    notify_failures: int = 0  # failed attempts to hand its callbacks to the broker
    sent: int = 0  # callbacks already published (publish-then-settle path), skipped by a retry
    undelivered: tuple[dict[str, Any], ...] = ()  # callbacks given up on: {"index", "reason"}

    @classmethod
    def from_hash(cls, request_id: str, raw: dict[str, str]) -> RequestRecord:
        error = raw.get("error")
        return cls(
            id=request_id,
            generation_id=raw["gen"],
            upload_id=raw["upload"],
            language_code=raw["lang"],
            state=raw["state"],
            outcome=raw.get("outcome") or None,
            created=float(raw["created"]),
            deadline=float(raw["deadline"]),
            finished=_float(raw.get("finished")),
            on_ready=json.loads(join_field(raw, "on_ready") or "[]"),
            on_error=json.loads(join_field(raw, "on_error") or "[]"),
            error=json.loads(error) if error else None,
            notify_failures=int(raw.get("nfail") or 0),
            sent=int(raw.get("sent") or 0),
            undelivered=tuple(json.loads(raw["undelivered"])) if raw.get("undelivered") else (),
        )


@dataclass(frozen=True)
class BrokerWrites:
    """Redis writes that put callback messages on a Redis broker (``handoff.py``).

    ``settle`` runs them in the transaction that settles the request, on database
    ``db`` of the state's own server. Each command is ``(name, key, value)`` with name
    ``lpush``, ``pexpire`` or ``publish``.
    """

    db: int
    commands: tuple[tuple[str, str, str], ...]
    index: int = 0  # which of the request's callbacks these writes queue


def writes_groups(broker_writes: BrokerWrites | Sequence[BrokerWrites] | None) -> list[BrokerWrites]:
    """settle()'s broker writes as a list with one entry per callback."""
    if broker_writes is None:
        return []
    if isinstance(broker_writes, BrokerWrites):
        return [broker_writes]
    return list(broker_writes)


class RequestRow(TypedDict):
    """One request as ``Store.list_requests`` lists it; a field missing from its record is None."""

    request_id: str
    state: str
    upload_id: str | None
    language_code: str | None
    generation_id: str | None
    created_at: str | None
    finished_at: str | None


@dataclass(frozen=True)
class Created:
    generation_id: str
    joined: bool   # attached to a generation already in flight
    existed: bool  # this request id was already known (idempotent retry)
    conflict: bool = False  # ... but with other parameters: nothing was written
    full: bool = False  # the generation in flight has max_joins subscribers: nothing was written


class Store(Protocol):
    """Everything the pipeline persists. Each method is one atomic step."""

    def create_request(self, *, request_id: str, generation_id: str, upload_id: str, language_code: str,
                       name: str | None, environment: str | None, on_ready: list[dict[str, Any]],
                       on_error: list[dict[str, Any]], ttl: float, fingerprint: str = "", max_joins: int = 0,
                       site: str = "", duration_band: int | None = None) -> Created: ...

    def claim_due(self, lease: float, limit: int, pace: int = 0, window: float = 0.0,
                  holder: str = "") -> list[tuple[str, str]]:
        """Up to ``limit`` due steps as (generation, phase), each leased ``lease`` seconds.

        Fair by construction: the room is shared equally among the sites with due work
        (what one cannot use goes to the others), each site's share half to generations
        still to submit and half to polls (likewise), and with ``pace`` > 0 each site
        hands out at most ``pace`` steps per ``window`` seconds, counted fleet-wide.
        """
    def release(self, generation_id: str) -> None: ...
    def count_published(self, steps: int) -> None:
        """Add ``steps`` to the fleet-wide count of step tasks published (backpressure.py)."""
    def published_count(self) -> int:
        """The fleet-wide count of step tasks published (0 before the first)."""
    def load_generation(self, generation_id: str) -> Generation | None: ...
    def advance(self, generation_id: str, delay: float, fence: tuple[str, str] | None = None,
                **fields: Any) -> bool: ...
    def finish(self, generation_id: str, outcome: str, result: dict[str, Any]) -> list[str]: ...
    def load_request(self, request_id: str) -> RequestRecord | None: ...
    def cancel(self, request_id: str, error: dict[str, Any]) -> str: ...
    def settle(self, request_id: str, final_state: str,
               broker_writes: BrokerWrites | Sequence[BrokerWrites] | None = None,
               undelivered: Sequence[dict[str, Any]] = (), give_up: bool = False) -> bool: ...
    def notify_failed(self, request_id: str) -> int: ...
    def mark_sent(self, request_id: str, count: int) -> bool: ...
    def claim_finishing(self, stale: float, limit: int) -> list[str]: ...
    def repair_orphans(self, batch: int = 500) -> int: ...
    def lock(self, name: str, ttl: float, owner: str = "") -> str | None: ...
    def unlock(self, name: str, token: str) -> None: ...
    def extend_lock(self, name: str, token: str, ttl: float) -> bool: ...
    def preferred_body_type(self, site: str = "") -> str | None: ...
    def remember_body_type(self, body_type: str, site: str = "") -> None: ...
    def counts(self) -> dict[str, int]: ...
    def scheduled_by_site(self) -> dict[str, dict[str, int]]:
        """Sites with scheduled entries ("" the default) -> {"submit": n, "poll": n}."""

    # -- metrics (subtitle_tasks/metrics.py) -------------------------------------------
    def metrics_add(self, increments: Mapping[str, float]) -> None: ...
    def metrics_values(self) -> dict[str, float]: ...
    def count_outcomes(self, outcomes: Mapping[str, int]) -> None: ...
    def recent_outcomes(self, minutes: int = 60) -> dict[str, int]: ...
    def schedule_stats(self, overdue_after: float) -> dict[str, Any]: ...
    def list_requests(self, state: str | None = None, upload_id: str | None = None,
                      limit: int = 50) -> list[RequestRow]: ...

    # -- sweep cursor (subtitle_tasks/sweep.py) ----------------------------------------
    def sweep_cursor(self, site: str = "") -> dict[str, Any] | None:
        """Where a site's sweeps got to ("" the default site); None if none was kept."""
    def save_sweep_cursor(self, site: str, cursor: dict[str, Any], ttl: float) -> None:
        """Replace a site's sweep cursor (a JSON object), kept ``ttl`` seconds."""

    # -- learned poll timing (subtitle_tasks/schedule.py) --------------------------------
    def timing_stats(self, site: str, phase: str) -> list[float] | None:
        """The site's histogram of ``phase`` durations (schedule.BUCKETS counts), None if none yet."""
    def record_timing(self, site: str, phase: str, seconds: float, decay: float, until: float | None = None) -> None:
        """Add one observed duration: every count times ``decay``, then +1 in its bucket, or
        spread over [seconds, until] (schedule.spread) when given (one atomic step)."""

    def timing_points(self, site: str) -> list[str]:
        """The site's kept (shown, ready) points as unseen.encode() wrote them, newest first."""
    def record_timing_point(self, site: str, point: str, keep: int) -> None:
        """Keep one more encoded point (unseen.py), dropping all but the newest ``keep``."""

    # -- callback watch (subtitle_tasks/callback_watch.py) -----------------------------
    def watch_beat(self, worker: str, broker: str, fence: float) -> bool: ...
    def watch_dead(self, stale: float, limit: int = 100) -> list[tuple[str, str, float | None]]: ...
    def watch_hold(self, worker: str, task_id: str, value: str) -> None: ...
    def watch_holds(self, worker: str) -> dict[str, str]: ...
    def watch_release(self, worker: str, task_id: str, tag: str) -> bool: ...
    def watch_forget(self, worker: str, stale: float | None = None) -> bool: ...

    # -- step watch (subtitle_tasks/step_watch.py) -------------------------------------
    def step_beat(self, worker: str) -> bool: ...
    def step_hold(self, worker: str, generation_id: str, received_at: float, lease: float = 0.0) -> None: ...
    def step_unhold(self, worker: str, generation_id: str) -> None: ...
    def step_published(self, worker: str, generation_ids: Sequence[str]) -> None: ...
    def step_holds(self, worker: str) -> list[str]: ...
    def release_dead_steps(self, stale: float, limit: int = 100) -> tuple[int, list[str]]: ...
    def release_worker_steps(self, worker: str) -> int: ...
    def release_lost_steps(self, worker: str, generation_ids: Sequence[str]) -> int: ...

    # -- once marks (once.py)
    def once_done(self, task_id: str) -> bool:
        """Whether ``task_id`` ran to the end under OnceTask (``mark_once``, not yet expired)."""
    def mark_once(self, task_id: str, ttl: float) -> None:
        """Record that ``task_id`` ran to the end, kept ``ttl`` seconds."""
