"""The sweep: find a site's new videos and ask for the subtitles they lack.

One pass lists the site's video uploads newest first (``GET /uploads``, offset
pagination) and, for each upload and each language of ``SUBTITLE_TASKS_AUTO_LANGUAGES``,
decides: it already has a subtitles track in that language (``list_tracks``), or a
request already exists under the pair's deterministic request id, or ask for it with
``request_subtitles(request_id=...)``. Creating a request is idempotent on its id, so
overlapping or repeated sweeps never ask twice for one (upload, language).

A pass ends at the first upload older than ``since`` (default and maximum: Mux's
7-day window, after which it captions nothing); the uploads of that last page past the
boundary are counted as ``too_old``, older pages are never read.

It spends at most ``SUBTITLE_TASKS_SWEEP_SHARE`` of the site's per-window API budget
(the fleet's effective limit, which follows the plan the server announces): it counts
its own calls over a sliding window and sleeps when its share is spent, or stops when
``max_seconds`` would run out, leaving the rest to the cursor.

The cursor (one per site, through the store) records what is done: the range of
``created_at`` a finished pass covered (the next pass stops early once it reaches it,
less a few minutes of overlap for uploads that became visible late) and, while a pass
is unfinished, how far it got (offset, oldest upload handled), so the next sweep
resumes it before looking at newer uploads (the older ones are nearer their 7 days).
The cursor only ever claims work that was done, so a lost or stale cursor costs API
calls, never a missed or a duplicated request.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypedDict

from . import validation
from .api import request_subtitles
from .datocms import DatoCMSError, NotFound, Upload
from .errors import IdempotencyConflict, InvalidSubtitleRequest
from .runtime import runtime_for
from .settings import parse_language_list

log = logging.getLogger("subtitle_tasks.sweep")

MUX_WINDOW = 7 * 86400.0  # Mux captions an asset only within 7 days of its creation
# A finished pass is trusted down from its newest upload less this: an upload created
# just before it but listed only later (a slow commit) is still looked at once more.
OVERLAP = 300.0
# A video Mux has not finished holds the cursor back (it must be looked at again), but
# not for longer than this after its creation: one that never finishes must not make
# every later sweep re-read a week of uploads.
NOT_READY_GRACE = 3600.0
CURSOR_TTL = MUX_WINDOW + 86400.0
DEFAULT_PAGE_SIZE = 100
CURSOR_VERSION = 1

_PLAIN_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_MAX_REQUEST_ID = 128


def request_id_for(site: str | None, upload_id: str, language: str) -> str:
    """The request id a sweep uses for (site, upload, language): the same in every sweep.

    ``auto.{upload}.{lang}`` for the default site, ``auto.{site}.{upload}.{lang}`` for a
    named one (upload ids hold no dot, so the two never collide, whatever the alias);
    the tag is lowercased, so a change of case in the setting asks nothing new. An
    upload id that would not fit (over 128 characters in all) is replaced by a digest
    marked ``h:``; a colon never appears in an upload id.
    """
    head = f"auto.{site}." if site else "auto."
    tag = language.lower()
    rid = f"{head}{upload_id}.{tag}"
    if len(rid) <= _MAX_REQUEST_ID and _PLAIN_UPLOAD_ID.fullmatch(upload_id):
        return rid
    digest = base64.urlsafe_b64encode(hashlib.sha256(upload_id.encode()).digest()[:16]).decode().rstrip("=")
    return f"{head}h:{digest}.{tag}"


def same_language(track_tag: str | None, wanted: str) -> bool:
    """Whether a track's tag covers a wanted one: equal, or one a subtag-prefix of the other.

    ``it`` and ``it-IT`` match (an Italian track is there); ``pt-BR`` and ``pt-PT`` do not.
    """
    if not track_tag:
        return False
    have, want = track_tag.lower().split("-"), wanted.lower().split("-")
    n = min(len(have), len(want))
    return have[:n] == want[:n]


def empty_report(site: str, languages: tuple[str, ...], since: float, dry_run: bool) -> dict[str, Any]:
    """A report before anything was done (what a disabled sweep returns)."""
    return {
        "site": site or None, "languages": list(languages), "since": since, "dry_run": dry_run,
        # uploads listed, videos among them, and (upload, language) pairs by outcome
        "listed": 0, "videos": 0, "requested": 0, "skipped_has_track": 0, "skipped_requested": 0,
        # videos: past the boundary (last page only), not on Mux yet, covered by the cursor,
        # refused at the edge, deleted meanwhile
        "too_old": 0, "not_ready": 0, "already_swept": 0, "refused": 0, "gone": 0,
        "api_calls": 0, "pages": 0, "resumed_from": None, "stopped": None, "error": None,
        "api_budget": None, "seconds": 0.0, "requests": [],
    }


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc).isoformat()


class _Stop(Exception):
    """End the sweep early, keeping what was done (the reason goes in the report)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Pace:
    """At most ``share`` of the site's per-window budget, over any window of our calls.

    A sliding log of when each call *ended*: a call starts only once fewer than
    ``per_window`` calls ended in the last ``window`` seconds, so the server, which counts
    a call somewhere between its start and its end, never sees more than that in any
    window. The budget is re-read from the shared limiter once a window (it follows the
    plan the server announces); without one, the configured limit stands in.
    """

    def __init__(self, *, share: float, limiter: Any, limit: int, window: float, deadline: float | None,
                 monotonic: Callable[[], float], sleep: Callable[[float], None]):
        self.share, self.limiter, self.limit, self.window = share, limiter, limit, window
        self.deadline, self.monotonic, self.sleep = deadline, monotonic, sleep
        self.per_window = 1
        self._refresh_at = -math.inf
        self._ends: deque[float] = deque()

    def _budget(self, now: float) -> int:
        if now >= self._refresh_at:
            limit = self.limit
            snapshot = getattr(self.limiter, "snapshot", None)
            if snapshot is not None:
                try:
                    limit = int(snapshot()["effective_limit"])
                except Exception as exc:  # advisory: the configured limit is a safe ceiling
                    log.warning("sweep: could not read the shared API budget (%s); using %d", exc, limit)
            self.per_window = max(1, math.floor(limit * self.share + 1e-9))
            self._refresh_at = now + self.window
        return self.per_window

    def check_deadline(self) -> None:
        if self.deadline is not None and self.monotonic() >= self.deadline:
            raise _Stop("max_seconds")

    def before_call(self) -> None:
        while True:
            self.check_deadline()
            now = self.monotonic()
            budget = self._budget(now)
            while self._ends and self._ends[0] <= now - self.window:
                self._ends.popleft()
            if len(self._ends) < budget:
                return
            wait = self._ends[-budget] + self.window - now
            if self.deadline is not None and now + wait >= self.deadline:
                raise _Stop("max_seconds")
            self.sleep(wait)

    def after_call(self) -> None:
        self._ends.append(self.monotonic())


class _Progress(TypedDict):
    """An unfinished pass as the cursor records it, read back."""

    top: float  # created_at of the newest upload the pass saw
    low: float | None  # created_at of the oldest upload it handled
    low_ids: set[str]  # the uploads handled with that created_at
    offset: int  # where the next page starts
    pending: float | None  # created_at of the oldest recent video not yet on Mux


def _length_hint(upload: Upload) -> float | None:
    """The upload's length as request_subtitles' hint; a length the edge would refuse
    (zero, or past its bound) is left out rather than costing the request."""
    try:
        return validation.upload_duration(upload.duration)
    except InvalidSubtitleRequest:
        return None


class Sweep:
    """One sweep of one site. Build it with :func:`sweep`; ``run()`` returns the report."""

    def __init__(self, *, store: Any, client: Any, request: Callable[..., Any], site: str, languages: tuple[str, ...],
                 since: float, dry_run: bool, max_requests: int | None, page_size: int, pace: _Pace,
                 clock: Callable[[], float], monotonic: Callable[[], float]):
        self.store, self.client, self.request = store, client, request
        self.site, self.languages, self.since, self.dry_run = site, languages, since, dry_run
        self.max_requests, self.page_size, self.pace = max_requests, page_size, pace
        self.clock, self.monotonic = clock, monotonic
        self.language_key = sorted(tag.lower() for tag in languages)
        self.pending: float | None = None  # oldest recent video not yet on Mux
        self.report = empty_report(site, languages, since, dry_run)

    # -- the cursor ----------------------------------------------------------------------
    def _read_cursor(self) -> tuple[tuple[float, float] | None, _Progress | None]:
        """(covered (floor, top) of the last finished pass, the unfinished pass) as far as usable."""
        raw = self.store.sweep_cursor(self.site)
        if not raw or raw.get("v") != CURSOR_VERSION or raw.get("languages") != self.language_key:
            return None, None  # other languages: what was covered is not covered for these
        try:
            covered = (float(raw["floor"]), float(raw["top"])) if raw.get("top") is not None else None
            unfinished = raw.get("pass")
            progress: _Progress | None = None
            if isinstance(unfinished, dict) and unfinished.get("top") is not None:
                low = unfinished.get("low")
                pending = unfinished.get("pending")
                progress = {"top": float(unfinished["top"]), "low": None if low is None else float(low),
                            "low_ids": {str(i) for i in unfinished.get("low_ids") or ()},
                            "offset": max(0, int(unfinished.get("offset") or 0)),
                            "pending": None if pending is None else float(pending)}
        except (KeyError, TypeError, ValueError):
            log.warning("sweep %s: unreadable cursor, starting over", self.site or "default")
            return None, None
        return covered, progress

    def _save(self, covered: tuple[float, float] | None, unfinished: dict[str, Any] | None) -> None:
        if self.dry_run:
            return
        cursor = {"v": CURSOR_VERSION, "languages": self.language_key,
                  "floor": covered[0] if covered else None, "top": covered[1] if covered else None,
                  "pass": unfinished}
        self.store.save_sweep_cursor(self.site, cursor, CURSOR_TTL)

    # -- API calls, paced and counted ----------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        self.pace.before_call()
        self.report["api_calls"] += 1
        try:
            return fn()
        finally:
            self.pace.after_call()

    # -- one upload ----------------------------------------------------------------------
    def _handle(self, upload: Upload, created: float, now: float) -> None:
        """Ask for what ``upload`` lacks; raises _Stop before a call or request it may not make."""
        report = self.report
        if not upload.on_mux:
            # Mux is still processing it: nothing can be asked yet; a recent one holds the cursor.
            report["not_ready"] += 1
            if now - created < NOT_READY_GRACE:
                self.pending = created if self.pending is None else min(self.pending, created)
            return
        ids = {tag: request_id_for(self.site, upload.id, tag) for tag in self.languages}
        missing = [tag for tag in self.languages if self.store.load_request(ids[tag]) is None]
        report["skipped_requested"] += len(self.languages) - len(missing)
        if not missing:
            return
        try:
            tracks = self._call(lambda: self.client.list_tracks(upload.id))
        except NotFound:
            report["gone"] += 1  # deleted since it was listed
            return
        subtitles = [t.language_code for t in tracks if t.track_type == "subtitles" and not t.is_errored]
        for tag in missing:
            if any(same_language(have, tag) for have in subtitles):
                report["skipped_has_track"] += 1
                continue
            if self.max_requests is not None and report["requested"] >= self.max_requests:
                raise _Stop("max_requests")
            if not self.dry_run:
                try:
                    self.request(upload.id, tag, request_id=ids[tag], site=self.site or None,
                                 upload_duration=_length_hint(upload))
                except IdempotencyConflict:
                    report["skipped_requested"] += 1  # made since we looked, with other parameters
                    continue
                except InvalidSubtitleRequest as exc:  # JoinLimitReached, an id DatoCMS allows and we do not
                    report["refused"] += 1
                    log.warning("sweep %s: %s (%s) refused: %s", self.site or "default", upload.id, tag, exc)
                    continue
            report["requested"] += 1
            report["requests"].append(ids[tag])

    # -- the pass ------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        report = self.report
        started = self.monotonic()
        now = self.clock()
        boundary = now - self.since
        covered, progress = self._read_cursor()
        # Stop at what the last finished pass covered, if it reached down to this boundary.
        stop_at = covered[1] - OVERLAP if covered and covered[0] <= boundary else None
        top: float | None
        low: float | None
        low_ids: set[str]
        if progress:
            offset, top, low, low_ids = progress["offset"], progress["top"], progress["low"], progress["low_ids"]
            self.pending = progress["pending"]
            report["resumed_from"] = {"offset": offset, "created_at": _iso(low)}
        else:
            offset, top, low, low_ids = 0, None, None, set()
        next_offset, check_shift, complete, reached_covered = offset, bool(progress), False, False

        def unfinished() -> dict[str, Any] | None:
            if top is None:
                return None
            return {"top": top, "low": low, "low_ids": sorted(low_ids), "offset": next_offset,
                    "pending": self.pending}

        try:
            while not complete:
                uploads, total = self._call(functools.partial(
                    self.client.list_uploads, video_only=True, newest_first=True, offset=offset, limit=self.page_size))
                report["pages"] += 1
                report["listed"] += len(uploads)
                if check_shift and offset > 0 and low is not None \
                        and (not uploads or uploads[0].created_at.timestamp() < low):
                    # Uploads were deleted since the pass stopped: step back, so none slips by.
                    offset = next_offset = max(0, offset - self.page_size)
                    continue
                check_shift = False
                if top is None:
                    top = uploads[0].created_at.timestamp() if uploads else None
                for index, upload in enumerate(uploads):
                    created = upload.created_at.timestamp()
                    if created < boundary:
                        report["too_old"] += sum(1 for u in uploads[index:] if u.is_video)
                        complete = True
                        break
                    if stop_at is not None and created < stop_at:
                        complete = reached_covered = True
                        break
                    if upload.is_video:
                        report["videos"] += 1
                        in_this_pass = low is not None and (low < created <= top or
                                                            (created == low and upload.id in low_ids))
                        in_last_pass = covered is not None and covered[0] <= created < covered[1] - OVERLAP
                        if in_this_pass or in_last_pass:
                            report["already_swept"] += 1
                        else:
                            self.pace.check_deadline()
                            self._handle(upload, created, now)
                    if low is None or created < low:
                        low, low_ids = created, {upload.id}
                    elif created == low:
                        low_ids.add(upload.id)
                    next_offset = offset + index + 1
                else:
                    offset = next_offset = offset + len(uploads)
                    if len(uploads) < self.page_size or offset >= total:
                        complete = True
                    else:
                        self._save(covered, unfinished())
            newest = top if self.pending is None or top is None else min(top, self.pending)
            floor = covered[0] if reached_covered and covered else boundary
            self._save((floor, newest) if newest is not None else None, None)
            report["stopped"] = "done"
        except _Stop as stop:
            report["stopped"] = stop.reason
            self._save(covered, unfinished())
        except DatoCMSError as exc:
            # The next sweep resumes here; a 429, an outage or a refused token all end this one.
            report["stopped"], report["error"] = "error", f"{type(exc).__name__}: {exc}"
            self._save(covered, unfinished())
        report["api_budget"] = {"per_window": self.pace.per_window, "window": self.pace.window}
        report["seconds"] = round(self.monotonic() - started, 3)
        return report


def sweep(*, site: str | None = None, languages: Any = None, since: float | None = None, dry_run: bool = False,
          max_seconds: float | None = None, max_requests: int | None = None, page_size: int = DEFAULT_PAGE_SIZE,
          app: Any = None, clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Sweep one site (``site`` None: the default one) and return a report of what was done.

    ``languages``: tags (a list, or comma-separated) instead of SUBTITLE_TASKS_AUTO_LANGUAGES;
    none configured means the sweep is off (``stopped: "disabled"``, no API call).
    ``since``: how far back to look, in seconds (default and at most 7 days, Mux's window).
    ``dry_run``: decide, but request nothing and keep no cursor. ``max_seconds`` and
    ``max_requests`` end it early; the cursor carries the rest to the next sweep.
    Raises ValueError (ConfigurationError for an unknown site or a bad tag) on bad
    arguments, StateUnavailable-like Redis errors as they come; API failures end the
    sweep with ``stopped: "error"`` instead.
    """
    runtime = runtime_for(app)
    settings = runtime.settings
    tags = settings.auto_languages if languages is None else parse_language_list("languages", languages)
    if since is None:
        since = MUX_WINDOW
    if isinstance(since, bool) or not isinstance(since, (int, float)) or not 0 < since <= MUX_WINDOW:
        raise ValueError(f"since must be seconds above 0 and at most {MUX_WINDOW:g} (Mux captions only "
                         f"assets younger than 7 days), got {since!r}")
    for name, value, low in (("max_seconds", max_seconds, 0), ("max_requests", max_requests, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low):
            raise ValueError(f"{name} must be a number >= {low} or None, got {value!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 500:
        raise ValueError(f"page_size must be an int from 1 to 500, got {page_size!r}")
    target = runtime.site(site)  # ConfigurationError when unknown
    if not tags:
        return {**empty_report(target.alias, tags, float(since), dry_run), "stopped": "disabled"}
    store = runtime.store
    client = runtime.client_for(target.alias or None)
    pace = _Pace(share=settings.sweep_share, limiter=getattr(client, "rate_limiter", None),
                 limit=settings.rate_limit, window=settings.rate_window,
                 deadline=None if max_seconds is None else monotonic() + max_seconds,
                 monotonic=monotonic, sleep=sleep)

    def ask(upload_id: str, language: str, **options: Any) -> Any:
        return request_subtitles(upload_id, language, app=app, **options)

    report = Sweep(store=store, client=client, request=ask, site=target.alias, languages=tags,
                   since=float(since), dry_run=dry_run, max_requests=max_requests, page_size=page_size,
                   pace=pace, clock=clock, monotonic=monotonic).run()
    log.info("sweep %s%s: %d requested, %d with a track, %d already requested, %d too old, %d API calls (%s)",
             target.label, " (dry run)" if dry_run else "", report["requested"], report["skipped_has_track"],
             report["skipped_requested"], report["too_old"], report["api_calls"], report["stopped"])
    return report
