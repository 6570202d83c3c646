"""One step of a generation: submit it, poll its job, or watch its track.

A step runs when the dispatcher finds the generation due (see dispatcher.py). It
reads the generation, makes at most a few API calls, and records the outcome and
when the next step is due in one atomic store call. It never sleeps for the next
step: waiting is a score in a sorted set, not a task parked in a worker.

Knows nothing of Celery beyond the notifier it is handed.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from . import cold, logs, repost, schedule, unseen
from .backoff import retry_delay
from .datocms import client as api_client
from .datocms import exceptions as api
from .datocms.resources import UploadTrack
from .errors import ErrorCode, code_for_api_error, error_fields
from .metrics import Recorder
from .planner import Planner
from .settings import Settings
from .state import DONE, JOB, OUTCOME_ERROR, OUTCOME_READY, SUBMIT, TRACK, Generation, Store

log = logging.getLogger("subtitle_tasks.pipeline")

# The first is tried first: what the official JS client sends (cma-client >= 5.6.0),
# so the server most likely takes it; the documented "upload_track" is the fallback.
BODY_TYPES = (api_client.BODY_TYPE_SUBTITLES_GENERATION, api_client.BODY_TYPE_UPLOAD_TRACK)


def other_body_type(body_type: str) -> str:
    return BODY_TYPES[1] if body_type == BODY_TYPES[0] else BODY_TYPES[0]


def post_not_applied(exc: api.DatoCMSError) -> bool:
    """True when a failed POST certainly created nothing, so it may be sent again at once.

    The client knows: a refusal (4xx, 429, 503) or a request that never left created
    no job; a 5xx or an answer lost after sending may have (``outcome_unknown``).
    """
    return not exc.outcome_unknown


def _context(gen: Generation) -> dict[str, Any]:
    """A generation's fields for structured logs (logs.py): who waits, on what, how far along."""
    return logs.context(generation_id=gen.id, request_ids=gen.subscribers[:20], site=gen.site or "default",
                        upload_id=gen.upload_id, language_code=gen.language_code, job_id=gen.job_id,
                        track_id=gen.track_id, attempt=gen.attempts, phase=gen.phase)


class _NoStore:
    """Where a Pipeline built without metrics (unit tests) counts: nowhere."""

    def metrics_add(self, increments: Any) -> None:
        pass

    def count_outcomes(self, outcomes: Any) -> None:
        pass


class Pipeline:
    def __init__(self, settings: Settings, store: Store, client_for: Callable[[str], Any],
                 notify: Callable[[str], object],
                 rng: Callable[[], float] = random.random, metrics: Recorder | None = None,
                 planner: Planner | None = None):
        self.settings = settings
        self.store = store
        self.client_for = client_for  # site alias -> that site's DatoCMS client
        self.notify = notify
        self.rng = rng
        self.metrics = metrics or Recorder(_NoStore())
        # What planning keeps between steps (prices, the pooled prior): the runtime's, so
        # one per process; a Pipeline of its own (unit tests, the simulated bench) otherwise.
        self.planner = planner or Planner()

    # -- entry point ------------------------------------------------------------------
    def advance(self, generation_id: str, owner: str = "") -> str:
        """Run the generation's due step; returns a short word for logs and tests.

        ``owner``: the worker running it (step_watch.py), named in the lock so that the
        lock can be broken within seconds if that worker dies.
        """
        # The lock lasts a lease: a step outliving it would be handed out again anyway.
        token = self.store.lock(f"gen:{generation_id}", self.settings.lease, owner=owner)
        if token is None:
            return "busy"
        try:
            gen = self.store.load_generation(generation_id)
            if gen is None or gen.phase == DONE:
                return "finished"
            if gen.due is not None and gen.due > gen.now + 0.001:
                return "not-due"  # a duplicate delivery of a step already done
            if gen.phase in (JOB, TRACK):
                self.metrics.poll(gen.site)
            outcome = self._run_step(gen, token)
            if gen.expired:
                # The step at the deadline still looked once (a job done just in time
                # counts); if that did not finish it, the request ends here.
                latest = self.store.load_generation(generation_id)
                if latest is not None and latest.phase != DONE:
                    return self._fail(latest, ErrorCode.DEADLINE_EXCEEDED, self._deadline_message(latest))
            return outcome
        finally:
            self.store.unlock(f"gen:{generation_id}", token)

    def _run_step(self, gen: Generation, token: str) -> str:
        try:
            if gen.phase == SUBMIT:
                return self._submit(gen, token)
            return {JOB: self._poll_job, TRACK: self._watch_track}[gen.phase](gen)
        except api.RetryableError as exc:
            return self._retry_later(gen, exc)
        except (api.PermanentError, api.JobFailed) as exc:
            return self._fail(gen, code_for_api_error(exc), str(exc), exc)

    # -- steps ------------------------------------------------------------------------
    def _submit(self, gen: Generation, token: str) -> str:
        if gen.posted_at is not None:
            # An earlier POST may have reached DatoCMS (worker killed, answer lost):
            # look for its track before creating a second one.
            track = self._find_new_track(gen, gen.known_tracks)
            if track is not None:
                log.info("generation %s: adopted track %s from an earlier POST", gen.id, track.id, extra=_context(gen))
                self._record(gen.site, repost.VISIBLE, gen.now - gen.posted_at)  # an upper bound
                return self._on_track(gen, track)
            if gen.now - gen.posted_at < self._repost_after(gen.site):
                self._schedule(gen, self._poll_delay(gen), attempts=gen.attempts + 1)
                return "reconciling"
            known = gen.known_tracks
        else:
            known = tuple(t.id for t in self.client_for(gen.site).list_tracks(gen.upload_id))
        # Fencing: the snapshot may have taken longer than the lock (slow answers, inline
        # retries). If the lock lapsed, another worker may be running this very step; only
        # a holder that renews it may POST.
        if not self.store.extend_lock(f"gen:{gen.id}", token, self.settings.lease):
            log.warning("generation %s: step outlived its lock; leaving the POST to its new holder", gen.id,
                        extra=_context(gen))
            return "lock-lost"
        # Mark the POST before sending it: a crash from here on reconciles, never re-POSTs blindly.
        # Fenced by the lock in the same script: if it was broken since the check above
        # (our worker was judged dead), the new holder owns the step and nothing is marked.
        if not self.store.advance(gen.id, self.settings.lease, fence=(f"gen:{gen.id}", token), posted_at=gen.now,
                                  known_tracks=known):
            return "not-posted"  # cancelled meanwhile, or the lock is no longer ours
        try:
            sent_at = time.monotonic()
            job_id, body_type = self._post(gen)
        except api.DatoCMSError as exc:
            if isinstance(exc, api.RetryableError):
                if self._server_looks_broken(gen, exc):
                    return self._give_up_on_server(gen, exc)
                if post_not_applied(exc):
                    self._schedule(gen, self._error_delay(gen, exc), errors=gen.errors + 1, posted_at=None)
                    return "retry"
                self._schedule(gen, self._error_delay(gen, exc), errors=gen.errors + 1)
                return "ambiguous"
            raise
        # The job phase's clock starts now; cold, the first poll is poll_initial away, as before.
        first = self._poll_delay(gen, 0, phase=JOB, elapsed=0.0, cold=self.settings.poll_initial, unseen_at=0.0)
        pending = self._probe_visibility(gen, known, sent_at)
        self._schedule(gen, first, phase=JOB, job_id=job_id, body_type=body_type,
                       posted_at=None, attempts=0, errors=0, phase_clock=(gen.now, 0.0), visibility_probe=pending)
        return "submitted"

    def _repost_after(self, site: str) -> float:
        """How long after a POST with an unknown outcome a second one may go out: learned
        from how soon the site's new tracks show in their upload's list (repost.py)."""
        return repost.repost_after(self._timing_stats(site, repost.VISIBLE), floor=2 * self.settings.lease,
                                   ceiling=self.settings.submit_grace)

    def _probe_visibility(self, gen: Generation, known: tuple[str, ...], sent_at: float) -> bool:
        """On a sample of accepted POSTs, look for the new track at once and record how soon
        it showed (repost.py). True when probed and not seen yet: the look that finds it
        records an upper bound.

        While the evidence is cold every POST is probed; under the learned policy the
        first look after the POST, ``poll_initial`` later, is a list look then anyway
        (cold.py), so the probe is left to it: the same evidence, to within that second,
        without a GET of its own."""
        visible = self._timing_stats(gen.site, repost.VISIBLE)
        if not repost.should_probe(visible, self.rng):
            return False
        if not schedule.is_warm(visible, repost.WARM) and self.settings.poll_policy == "learned":
            return True
        try:
            track = self._find_new_track(gen, known)
        except api.DatoCMSError:
            return True
        if track is None:
            return True
        self._record(gen.site, repost.VISIBLE, time.monotonic() - sent_at)
        return False

    def _post(self, gen: Generation) -> tuple[str, str]:
        client = self.client_for(gen.site)
        body_type = self.store.preferred_body_type(gen.site) or BODY_TYPES[0]
        try:
            job_id = client.generate_subtitles(gen.upload_id, gen.language_code, name=gen.name,
                                                    body_type=body_type)
        except api.InvalidType:
            # The experimental endpoint's body type changed once already; try the other
            # and remember what this server takes, so the fleet pays this once.
            body_type = other_body_type(body_type)
            job_id = client.generate_subtitles(gen.upload_id, gen.language_code, name=gen.name,
                                                    body_type=body_type)
            self.store.remember_body_type(body_type, gen.site)
            log.warning("site %s: DatoCMS refused the request body type; switched to %r",
                        gen.site or "default", body_type)
        return job_id, body_type

    def _poll_job(self, gen: Generation) -> str:
        # The site's timing, read once for the whole step: where to look and when next.
        learned = self.settings.poll_policy == "learned" and bool(gen.phase_clock)
        stats, banded = self._ready_stats(gen) if learned else (None, False)
        listed = self._look_in_track_list(gen, stats, learned)
        unseen_at: float | None = None  # set when a look in the list finds no track yet
        shown: tuple[float, float] | None = None
        if listed:
            # The upload's track list shows the new track with its current status, so one
            # request can see it ready; the job result only shows it as the job left it.
            track = self._find_new_track(gen, gen.known_tracks)
            if track is None and gen.phase_clock and not banded:
                # Not listed yet: plan from the generations whose track showed later still
                # (unseen.py), unless the length band plans.
                unseen_at = gen.now - gen.phase_clock[0]
        else:
            track = self.client_for(gen.site).get_job_result(gen.job_id)
        if track is None:
            self._schedule(gen, self._poll_delay(gen, stats=stats, unseen_at=unseen_at), attempts=gen.attempts + 1,
                           errors=0, **self._polled(gen))
            return "job-pending"
        if gen.phase_clock:
            # The track showed since the last look (in the list, or as the job's result): the
            # point unseen.py keeps for every generation, whichever look found it.
            elapsed = gen.now - gen.phase_clock[0]
            shown = (min(gen.phase_clock[1], elapsed), elapsed)
            if gen.visibility_probe:  # the track exists by now: an upper bound
                self._record(gen.site, repost.VISIBLE, elapsed)
        return self._on_track(gen, track, current=listed, stats=stats, shown=shown)

    @staticmethod
    def _look_in_track_list(gen: Generation, stats: list[float] | None, learned: bool) -> bool:
        """Whether this job poll looks for the new track in the upload's list rather than
        asking for the job result. Under the learned policy: always while the time since
        the POST is within what the site's timing (``stats``) observed, where the job
        result is asked only past it; while cold (or past it), the cold schedule's looks,
        which ask the job result one time in three (cold.py). The job result alone can
        tell that a job failed; the list alone shows the track as it is now. Under the
        exponential policy: the job result, always."""
        if not learned or not gen.phase_clock:
            return False
        if schedule.is_warm(stats) and gen.now - gen.phase_clock[0] < schedule.horizon(stats):
            return True
        return not cold.asks_job_result(gen.attempts)

    def _watch_track(self, gen: Generation) -> str:
        tracks = self.client_for(gen.site).list_tracks(gen.upload_id)
        track = next((t for t in tracks if t.id == gen.track_id), None)
        if track is None:
            return self._fail(gen, ErrorCode.TRACK_MISSING,
                              f"track {gen.track_id} is no longer in upload {gen.upload_id}'s track list")
        return self._on_track(gen, track)

    # -- outcomes ---------------------------------------------------------------------
    def _on_track(self, gen: Generation, track: UploadTrack, current: bool = True,
                  stats: list[float] | None = None, shown: tuple[float, float] | None = None) -> str:
        """Act on our track as a look found it: ``current`` when from the upload's track
        list, False when from a job result (the track as it was when the job ended).
        ``stats``: the site's timing if this step read it already. ``shown``: when a look
        (in the list or a job result) first found the track (Generation.shown), if this
        one did."""
        if track.is_ready or track.is_errored:
            self._learn(gen, shown or gen.shown)
        if track.is_ready:
            return self._finish(gen, OUTCOME_READY, track.resource)
        if track.is_errored:
            message = track.error or "DatoCMS marked the track as errored without a reason"
            return self._fail(gen, ErrorCode.TRACK_ERRORED, message, track_id=track.id)
        # Still preparing. The clock keeps running from the POST; what is known is that the
        # track was not ready now (a list) or when the job ended (a job result).
        seen_at = gen.now if current or gen.phase != JOB else self._job_done_at(gen)
        clock: dict[str, Any] = {}
        running_at = None
        if gen.phase_clock:
            running_at = seen_at - gen.phase_clock[0]
            clock = {"phase_clock": (gen.phase_clock[0], running_at)}
        # A new track phase restarts the cold schedule at its first gap, as the official client does.
        attempts = gen.attempts + 1 if gen.phase == TRACK else 0
        delay = self._poll_delay(gen, attempts, phase=TRACK, running_at=running_at, stats=stats,
                                 from_job_result=not current and gen.phase == JOB)
        if shown is not None:
            clock["shown"] = shown
        self._schedule(gen, delay, phase=TRACK, track_id=track.id,
                       attempts=attempts, errors=0, posted_at=None, visibility_probe=False, **clock)
        return "track-preparing"

    def _fail(self, gen: Generation, code: ErrorCode, message: str, exc: api.DatoCMSError | None = None,
              track_id: str | None = None) -> str:
        if track_id and not gen.track_id:
            self.store.advance(gen.id, self.settings.lease, track_id=track_id)
        log.info("generation %s (site %s) failed: %s", gen.id, gen.site or "default", code.value,
                 extra=_context(gen))
        return self._finish(gen, OUTCOME_ERROR, error_fields(code, message, exc))

    def _finish(self, gen: Generation, outcome: str, result: dict[str, Any]) -> str:
        notified = self.store.finish(gen.id, outcome, result)
        if notified:  # only the step that really ended it counts and reports it
            log.info("generation %s ended %s for %d request(s)", gen.id, outcome, len(notified), extra=_context(gen))
            self.metrics.generation_ended(gen.site, outcome, result.get("code") if outcome == OUTCOME_ERROR else None,
                                          len(notified), gen.now - gen.created)
        for request_id in notified:
            self.notify(request_id)
        return outcome

    def _retry_later(self, gen: Generation, exc: api.RetryableError) -> str:
        if self._server_looks_broken(gen, exc):
            return self._give_up_on_server(gen, exc)
        log.info("generation %s (site %s): %s; retrying", gen.id, gen.site or "default", exc, extra=_context(gen))
        self._schedule(gen, self._error_delay(gen, exc), errors=gen.errors + 1, last_error=str(exc))
        return "retry"

    def _server_looks_broken(self, gen: Generation, exc: api.DatoCMSError) -> bool:
        """Whether to stop retrying: this failure is a server fault rather than load (a
        non-transient 500/501/505+, an unreadable or oversized answer), and it makes
        ``max_server_errors`` failures in a row in this phase.

        Waiting out a broken server until the deadline (hours) helps nobody. The store
        keeps one count, ``errors`` (every consecutive retryable failure), so the bound
        is checked only when the latest failure is a fault; failures of other kinds
        just before it (429s, timeouts) count towards it too.
        """
        limit = getattr(self.settings, "max_server_errors", 8)
        return bool(limit) and isinstance(exc, api.UnexpectedServerError) and gen.errors + 1 >= limit

    def _give_up_on_server(self, gen: Generation, exc: api.DatoCMSError) -> str:
        message = (f"gave up after {gen.errors + 1} failed attempts in a row, the last a server fault "
                   f"(max_server_errors); last error: {exc}")
        return self._fail(gen, ErrorCode.PROTOCOL_ERROR, message, exc)

    # -- timing -----------------------------------------------------------------------
    def _schedule(self, gen: Generation, delay: float, **fields: Any) -> None:
        # Never sleep past the deadline: the step after it reports deadline_exceeded.
        delay = max(0.0, min(delay, gen.deadline - gen.now))
        self.store.advance(gen.id, delay, **fields)

    def _poll_delay(self, gen: Generation, attempts: int | None = None, *, phase: str | None = None,
                    elapsed: float | None = None, running_at: float | None = None,
                    cold: float | None = None, stats: list[float] | None = None,
                    unseen_at: float | None = None, from_job_result: bool = False) -> float:
        """The wait before the next poll: learned from the site's recent generations
        (schedule.py) in the job and track phases, and the cold schedule (cold.py) there
        while the site's timing is cold or past everything it observed; capped
        exponential backoff otherwise (policy ``exponential``, a generation without a
        phase clock, the reconcile look of a lost POST) or ``cold`` where given.
        ``stats``: the site's timing if the step read it already (read here otherwise).
        ``unseen_at``: when the latest look found the track not listed yet (0.0 for the
        first look, planned at the POST), to plan from the generations whose track showed
        later (unseen.py); None when the track is listed, or the length band plans.
        ``from_job_result``: the track's status was last seen in a job result."""
        n = gen.attempts if attempts is None else attempts
        phase = phase or gen.phase
        if elapsed is None and gen.phase_clock:
            elapsed = gen.now - gen.phase_clock[0]  # the clock runs from the POST, through both phases
        if self.settings.poll_policy != "learned" or phase not in (JOB, TRACK) or elapsed is None:
            stats = None
        else:
            if stats is None:
                stats, banded = self._ready_stats(gen)
                unseen_at = None if banded else unseen_at
            cold = self._cold_delay(phase, elapsed, from_job_result)
        if stats is not None and unseen_at is not None and schedule.is_warm(stats):
            delay = self._unseen_delay(gen, stats, elapsed or 0.0, unseen_at, cold)
            if delay is not None:
                return delay
        return schedule.next_delay(stats, elapsed or 0.0, n, target=self._poll_target(),
                                   initial=self.settings.poll_initial, maximum=self.settings.poll_max,
                                   remaining=gen.deadline - gen.now, rng=self.rng, cold=cold, running_at=running_at)

    def _cold_delay(self, phase: str, elapsed: float, from_job_result: bool) -> float:
        """The cold schedule's wait (cold.py): the official client's pace before the track
        shows, one target apart once it is listed."""
        initial, maximum = self.settings.poll_initial, self.settings.poll_max
        if phase == JOB:
            return cold.job_delay(elapsed, initial=initial, maximum=maximum)
        return cold.track_delay(target=self._poll_target(), initial=initial, maximum=maximum,
                                from_job_result=from_job_result)

    def _unseen_delay(self, gen: Generation, stats: list[float], elapsed: float, unseen_at: float,
                      cold: float | None = None) -> float | None:
        """The next poll of a generation whose track was not listed at ``unseen_at``, at the
        price that meets the target for the whole policy (unseen.py); None to plan from
        the histogram alone (too few points)."""
        points, price = self.planner.price(gen.site, self._points(gen.site), stats, target=self._poll_target(),
                                           initial=self.settings.poll_initial, maximum=self.settings.poll_max)
        if price is None:
            return None
        limits: dict[str, Any] = {"target": self._poll_target(), "initial": self.settings.poll_initial,
                                  "maximum": self.settings.poll_max, "remaining": gen.deadline - gen.now,
                                  "rng": self.rng, "cold": cold}
        if unseen_at <= 0:  # the first look is planned from the histogram (unseen.py says why)
            return schedule.next_delay(stats, elapsed, 0, weight=price, **limits)
        return unseen.next_delay(points, elapsed, unseen_at=unseen_at, weight=price, **limits)

    def _poll_target(self) -> float:
        """The learned schedule's target delay, less the half dispatcher tick a due step
        waits on average before it runs (the app hears of it then, not when it was due)."""
        return max(0.0, self.settings.poll_target - self.settings.dispatch_interval / 2)

    # -- learning how long a generation takes (schedule.py) -------------------------------
    @staticmethod
    def _polled(gen: Generation) -> dict[str, Any]:
        """The clock after a poll that found the track not ready yet."""
        if not gen.phase_clock:
            return {}
        return {"phase_clock": (gen.phase_clock[0], gen.now - gen.phase_clock[0])}

    def _job_done_at(self, gen: Generation) -> float:
        """When the job finished, as observed: between the last two polls (their midpoint)."""
        if gen.phase != JOB or not gen.phase_clock:
            return gen.now
        start, last = gen.phase_clock
        return start + schedule.observed(last, gen.now - start)

    def _ready_stats(self, gen: Generation) -> tuple[list[float] | None, bool]:
        """The timing the generation's polls plan from: its upload-duration band's, once
        that tells more than the site's (schedule.informative), else the site's; and
        whether it is the band's."""
        # The site's own, the other sites' prior making up what it lacks, as last planned from (planner.py).
        whole = self.planner.histogram(gen.site, self._timing_stats(gen.site, schedule.READY), self.store)
        if gen.duration_band is None:
            return whole, False
        part = self._timing_stats(gen.site, schedule.timing_name(gen.duration_band))
        return (part, True) if schedule.informative(part, whole) else (whole, False)

    def _learn(self, gen: Generation, shown: tuple[float, float] | None = None) -> None:
        """Record how long the generation took from its POST to its track's end, in the
        site's histogram and in its upload-duration band's; and, when it is known between
        which looks the track showed (``shown``), the pair as one of the site's points
        (unseen.py)."""
        if gen.phase not in (JOB, TRACK) or not gen.phase_clock:
            return
        start, last = gen.phase_clock
        # Ready somewhere between the last look that saw it not ready and now.
        low, high = max(0.0, min(last, gen.now - start)), gen.now - start
        self._record(gen.site, schedule.READY, low, until=high)
        if gen.duration_band is not None:
            self._record(gen.site, schedule.timing_name(gen.duration_band), low, until=high)
        point = unseen.point(shown, (low, high), self.rng) if shown is not None else None
        if point is not None:
            try:
                self.store.record_timing_point(gen.site, unseen.encode(point), unseen.KEEP)
            except Exception as exc:  # as _record: learning never fails a step
                log.warning("site %s: could not record a timing point: %s", gen.site or "default", exc)

    def _record(self, site: str, phase: str, seconds: float, until: float | None = None) -> None:
        try:
            self.store.record_timing(site, phase, seconds, schedule.DECAY, until)
        except Exception as exc:  # learning only tunes timing: it never fails a step
            log.warning("site %s: could not record a %s duration: %s", site or "default", phase, exc)

    def _points(self, site: str) -> list[unseen.Point]:
        try:
            return unseen.decode(self.store.timing_points(site))
        except Exception as exc:  # unreadable points: plan from the histogram
            log.warning("site %s: could not read the timing points: %s", site or "default", exc)
            return []

    def _timing_stats(self, site: str, phase: str) -> list[float] | None:
        try:
            return self.store.timing_stats(site, phase)
        except Exception as exc:  # unreadable stats: poll on the cold schedule
            log.warning("site %s: could not read the %s timing: %s", site or "default", phase, exc)
            return None

    def _error_delay(self, gen: Generation, exc: api.DatoCMSError) -> float:
        return retry_delay(gen.errors, hint=exc.retry_after, initial=self.settings.poll_initial,
                           maximum=self.settings.poll_max, rng=self.rng)

    def _deadline_message(self, gen: Generation) -> str:
        waited = gen.now - gen.created
        where = {SUBMIT: "submitting", JOB: f"waiting for job {gen.job_id}",
                 TRACK: f"waiting for track {gen.track_id} to be ready"}[gen.phase]
        message = f"gave up after {waited:.0f}s {where} (deadline reached)"
        if gen.last_error and gen.errors:
            message += f"; last error: {gen.last_error}"
        return message

    def _find_new_track(self, gen: Generation, known: tuple[str, ...]) -> UploadTrack | None:
        """A subtitles track in ``gen``'s language the upload did not have before our POST."""
        wanted = gen.language_code.lower()
        tracks: list[UploadTrack] = self.client_for(gen.site).list_tracks(gen.upload_id)
        for track in tracks:
            if track.id not in known and (track.language_code or "").lower() == wanted \
                    and track.track_type == "subtitles":
                return track
        return None
