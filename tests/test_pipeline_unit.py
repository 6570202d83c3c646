"""Pipeline steps in isolation: MemoryStore on a fake clock, a scripted DatoCMS client.

No network, no sleeping, no Celery. Each test scripts what the API answers, runs
steps with ``env.step`` (which moves the fake clock to the generation's due time,
as the dispatcher would hand it out then) and checks the recorded state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from subtitle_tasks import repost, schedule
from subtitle_tasks.datocms import exceptions as api
from subtitle_tasks.datocms.resources import UploadTrack
from subtitle_tasks.pipeline import Pipeline
from subtitle_tasks.settings import load_settings
from subtitle_tasks.state import DONE, FINISHING, JOB, OUTCOME_READY, SUBMIT, TRACK
from subtitle_tasks.state.stub import MemoryStore

START = 1_700_000_000.0
POLL_INITIAL, POLL_MAX, LEASE, GRACE = 1.0, 8.0, 30.0, 60.0
POST_PATH = "/uploads/u1/tracks/generate-subtitles"
TRACKS_PATH = "/uploads/u1/tracks"


# -- realistic API answers --------------------------------------------------------------

def track(track_id: str, *, upload: str = "u1", lang: str = "it-IT", status: str = "ready",
          error: str | None = None, kind: str = "subtitles") -> UploadTrack:
    return UploadTrack.from_resource({
        "id": track_id,
        "type": "upload_track",
        "attributes": {"type": kind, "name": "Italiano", "language_code": lang, "closed_captions": False,
                       "status": status, "error": error},
        "relationships": {"upload": {"data": {"id": upload, "type": "upload"}}},
    })


def rate_limited(retry_after: float = 7.0) -> api.RateLimited:
    return api.RateLimited(f"POST {POST_PATH} failed (Too Many Requests)", status=429, code="RATE_LIMIT_EXCEEDED",
                           request_id="rq-429", retry_after=retry_after, method="POST", path=POST_PATH)


def connect_refused() -> api.NetworkError:
    return api.NetworkError(f"POST {POST_PATH}: could not connect (ConnectionError: refused)", request_sent=False,
                            details={"exception": "ConnectionError"}, method="POST", path=POST_PATH)


def read_timeout() -> api.NetworkError:
    return api.NetworkError(f"POST {POST_PATH}: timed out waiting for the answer (ReadTimeout: read timeout=10)",
                            request_sent=True, outcome_unknown=True, details={"exception": "ReadTimeout"},
                            method="POST", path=POST_PATH)


def server_error(status: int = 500, method: str = "POST", path: str = POST_PATH) -> api.ServerError:
    return api.ServerError(f"{method} {path} failed (Internal Server Error)", status=status, request_id="rq-5xx",
                           outcome_unknown=method == "POST" and status != 503, method=method, path=path)


def server_fault(status: int = 500, method: str = "GET", path: str = "/job-results/job-1") -> api.UnexpectedServerError:
    return api.UnexpectedServerError(f"{method} {path} failed (Internal Server Error)", status=status,
                                     code="INTERNAL_SERVER_ERROR", request_id="rq-fault",
                                     outcome_unknown=method == "POST", method=method, path=path)


def unreadable(method: str = "GET", path: str = TRACKS_PATH) -> api.ProtocolError:
    return api.ProtocolError(f"{method} {path}: unexpected answer: success answer is not JSON", status=200,
                             request_id="rq-proto", outcome_unknown=method == "POST", method=method, path=path)


def sandbox_immutable() -> api.SandboxImmutable:
    return api.SandboxImmutable(f"POST {POST_PATH} failed: {{\"environment\": \"frozen\"}}", status=422,
                                code="IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT", request_id="rq-sbx",
                                details={"environment": "frozen"}, method="POST", path=POST_PATH)


def invalid_type() -> api.InvalidType:
    return api.InvalidType(f"POST {POST_PATH} failed: field: type", status=422, code="INVALID_TYPE",
                           request_id="rq-422", details={"field": "type", "code": "INVALID_TYPE"},
                           method="POST", path=POST_PATH)


def unauthorized(method: str = "GET", path: str = "/job-results/job-1") -> api.Unauthorized:
    return api.Unauthorized(f"{method} {path} failed (Unauthorized)", status=401,
                            code="INVALID_AUTHORIZATION_HEADER", request_id="rq-401", method=method, path=path)


def not_found(method: str, path: str) -> api.NotFound:
    return api.NotFound(f"{method} {path} failed (Not Found)", status=404, code="NOT_FOUND", request_id="rq-404",
                        method=method, path=path)


def job_failed(job_id: str = "job-1") -> api.JobFailed:
    payload = {"data": [{"type": "api_error", "id": "err-1",
                         "attributes": {"code": "NO_PRIMARY_AUDIO_TRACK", "details": {}, "transient": False}}]}
    return api.JobFailed(f"job {job_id} failed", job_id=job_id, payload=payload, status=422,
                         code="NO_PRIMARY_AUDIO_TRACK", request_id="rq-job", method="GET",
                         path=f"/job-results/{job_id}")


class FakeDatoCMS:
    """Answers from scripts; an unscripted call fails the test."""

    def __init__(self) -> None:
        self.tracks: dict[str, list[UploadTrack]] = {}  # what list_tracks returns, per upload
        self.posts: deque = deque()          # job id or exception, per POST
        self.jobs: deque = deque()           # UploadTrack, None (running) or exception, per job poll
        self.list_failures: deque = deque()  # exceptions list_tracks raises before answering again
        self.calls: list[tuple] = []
        self.on_post: Callable[[], None] | None = None  # runs as a POST arrives
        self.on_list: Callable[[], None] | None = None

    def generate_subtitles(self, upload_id: str, language_code: str, *, name: str | None = None,
                           body_type: str = "upload_track") -> str:
        self.calls.append(("post", upload_id, language_code, name, body_type))
        if self.on_post:
            self.on_post()
        return self._next(self.posts, "POST")

    def get_job_result(self, job_id: str) -> UploadTrack | None:
        self.calls.append(("job", job_id))
        return self._next(self.jobs, "job poll")

    def list_tracks(self, upload_id: str) -> list[UploadTrack]:
        self.calls.append(("tracks", upload_id))
        if self.on_list:
            self.on_list()
        if self.list_failures:
            raise self.list_failures.popleft()
        return list(self.tracks.get(upload_id, []))

    @staticmethod
    def _next(script: deque, what: str) -> Any:
        if not script:
            raise AssertionError(f"unscripted {what}")
        outcome = script.popleft()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def count(self, kind: str) -> int:
        return sum(1 for call in self.calls if call[0] == kind)


class FakeClock:
    def __init__(self) -> None:
        self.t = START

    def __call__(self) -> float:
        return self.t


class Env:
    def __init__(self, rng: Callable[[], float] = lambda: 1.0, visible_within: float | None = 1.0,
                 policy: str = "exponential") -> None:
        """``policy``: the poll policy. The step mechanics tested here (errors, retries,
        deadlines, the POST) are the same under both; ``exponential`` makes every job poll
        a job result, so the scripts stay short. test_schedule.py tests ``learned``."""
        self.clock = FakeClock()
        self.store = MemoryStore(clock=self.clock)
        # A fleet that has learnt how soon new tracks show (repost.py), so an accepted POST
        # is probed only on the rng's one-in-twenty; None: a cold fleet, which probes every one.
        if visible_within is not None:
            for _ in range(12):
                self.store.record_timing("", repost.VISIBLE, visible_within, schedule.DECAY)
        self.client = FakeDatoCMS()
        self.notified: list[str] = []
        self.settings = load_settings({"poll_initial": POLL_INITIAL, "poll_max": POLL_MAX, "lease": LEASE,
                                       "http_timeout": 10, "submit_grace": GRACE, "poll_policy": policy},
                                      environ={})
        self.pipeline = Pipeline(self.settings, self.store, lambda site: self.client, self.notified.append, rng=rng)

    def request(self, rid: str = "r1", *, upload: str = "u1", lang: str = "it-IT", ttl: float = 3600.0) -> str:
        return self.store.create_request(
            request_id=rid, generation_id=f"g-{rid}", upload_id=upload, language_code=lang, name="Italiano",
            environment=None, on_ready=[], on_error=[], ttl=ttl,
        ).generation_id

    def step(self, gid: str) -> str:
        """Run the generation's step at the time it is due (or now, if that is later)."""
        gen = self.store.load_generation(gid)
        if gen is not None and gen.due is not None and gen.due > self.clock.t:
            self.clock.t = gen.due
        return self.pipeline.advance(gid)

    def gen(self, gid: str):
        return self.store.load_generation(gid)

    def delay(self, gid: str) -> float:
        gen = self.gen(gid)
        return gen.due - gen.now

    def submitted(self, rid: str = "r1", job_id: str = "job-1", **kwargs) -> str:
        gid = self.request(rid, **kwargs)
        self.client.posts.append(job_id)
        assert self.step(gid) == "submitted"
        return gid


@pytest.fixture
def env() -> Env:
    return Env()


# -- submit -------------------------------------------------------------------------------

def test_submit_snapshots_tracks_posts_and_moves_to_the_job_phase(env):
    env.client.tracks["u1"] = [track("old-it"), track("old-en", lang="en")]
    gid = env.submitted()
    assert env.client.calls == [("tracks", "u1"), ("post", "u1", "it-IT", "Italiano", "subtitles_generation")]
    gen = env.gen(gid)
    assert (gen.phase, gen.job_id, gen.body_type) == (JOB, "job-1", "subtitles_generation")
    assert gen.posted_at is None and gen.attempts == 0 and gen.errors == 0
    assert gen.known_tracks == ("old-it", "old-en")
    assert env.delay(gid) == pytest.approx(POLL_INITIAL)
    assert env.notified == []


def test_the_post_is_recorded_before_it_is_sent(env):
    env.client.tracks["u1"] = [track("old-it")]
    gid = env.request()
    seen = []
    env.client.on_post = lambda: seen.append(env.gen(gid))
    env.client.posts.append("job-1")
    env.step(gid)
    during = seen[0]
    # A worker killed mid-POST leaves this: reconcile on the next step, due a lease later.
    assert during.phase == SUBMIT and during.posted_at == pytest.approx(START)
    assert during.known_tracks == ("old-it",)
    assert during.due - during.now == pytest.approx(LEASE)


def test_invalid_type_switches_body_type_and_remembers_it(env):
    env.client.posts.extend([invalid_type(), "job-1"])
    gid = env.request()
    assert env.step(gid) == "submitted"
    # the official JS client's type first, then the documented one
    assert [c[4] for c in env.client.calls if c[0] == "post"] == ["subtitles_generation", "upload_track"]
    assert env.gen(gid).body_type == "upload_track"
    assert env.store.preferred_body_type() == "upload_track"
    # the next generation starts with the type the server took
    env.client.calls.clear()
    env.submitted("r2", upload="u2", job_id="job-2")
    assert [c[4] for c in env.client.calls if c[0] == "post"] == ["upload_track"]


def test_both_body_types_refused_is_invalid_request(env):
    env.client.posts.extend([invalid_type(), invalid_type()])
    gid = env.request()
    assert env.step(gid) == "error"
    assert env.gen(gid).result["code"] == "invalid_request"
    assert env.gen(gid).result["api_code"] == "INVALID_TYPE"
    assert env.store.preferred_body_type() is None
    assert env.notified == ["r1"]


def test_cancelled_during_the_snapshot_is_not_posted(env):
    gid = env.request()
    env.client.on_list = lambda: env.store.cancel("r1", {"code": "cancelled", "message": "test"})
    assert env.step(gid) == "not-posted"
    assert env.client.count("post") == 0
    assert env.notified == []  # the cancel path sends its own callback


# -- a POST whose outcome is unknown ------------------------------------------------------

def ambiguous(env: Env, exc: api.DatoCMSError) -> str:
    env.client.tracks["u1"] = [track("old-it")]
    gid = env.request()
    env.client.posts.append(exc)
    assert env.step(gid) == "ambiguous"
    return gid


@pytest.mark.parametrize("exc", [read_timeout(), server_error(500)], ids=["read-timeout", "500"])
def test_unknown_outcome_keeps_posted_at(env, exc):
    gid = ambiguous(env, exc)
    gen = env.gen(gid)
    assert gen.phase == SUBMIT and gen.posted_at == pytest.approx(START)
    assert gen.known_tracks == ("old-it",) and gen.errors == 1
    assert 0 < env.delay(gid) <= POLL_MAX
    assert env.notified == []


@pytest.mark.parametrize("status", ["preparing", "ready"])
def test_reconcile_adopts_a_new_track_of_the_language(env, status):
    gid = ambiguous(env, read_timeout())
    env.client.tracks["u1"] += [track("new-en", lang="en"), track("new-audio", kind="audio"),
                                track("new-it", lang="IT-it", status=status)]
    env.client.calls.clear()
    outcome = env.step(gid)
    assert env.client.calls == [("tracks", "u1")]  # looked, did not POST again
    gen = env.gen(gid)
    if status == "preparing":
        assert outcome == "track-preparing"
        assert (gen.phase, gen.track_id, gen.posted_at, gen.attempts) == (TRACK, "new-it", None, 0)
    else:
        assert outcome == "ready" and gen.result["id"] == "new-it"
        assert env.notified == ["r1"]


def test_reconcile_ignores_tracks_known_before_the_post(env):
    gid = ambiguous(env, server_error(500))  # "old-it" (ready, same language) predates the POST
    assert env.step(gid) == "reconciling"
    assert env.gen(gid).phase == SUBMIT and env.notified == []


def test_reconcile_within_grace_waits_without_posting(env):
    gid = ambiguous(env, read_timeout())
    for attempt in (1, 2, 3):
        assert env.step(gid) == "reconciling"
        gen = env.gen(gid)
        assert gen.attempts == attempt and gen.posted_at == pytest.approx(START)
    assert env.client.count("post") == 1
    assert env.clock.t - START < GRACE


def test_reconcile_after_grace_posts_again(env):
    gid = ambiguous(env, read_timeout())
    env.clock.t = START + GRACE + 0.5
    env.client.posts.append("job-2")
    env.client.calls.clear()
    assert env.step(gid) == "submitted"
    # one look for the earlier POST's track, then the POST; the old snapshot still rules
    assert [c[0] for c in env.client.calls] == ["tracks", "post"]
    gen = env.gen(gid)
    assert (gen.phase, gen.job_id, gen.posted_at) == (JOB, "job-2", None)
    assert gen.known_tracks == ("old-it",)


def test_a_step_that_outlived_its_lock_does_not_post(env):
    gid = env.request()
    taken = []

    def slow_snapshot():
        # The snapshot takes longer than the lock; another worker's dispatcher hands the
        # step out again and that worker takes the lock.
        env.clock.t += LEASE + 1
        taken.append(env.store.lock(f"gen:{gid}", LEASE))

    env.client.on_list = slow_snapshot
    assert env.step(gid) == "lock-lost"
    assert taken[0] and env.client.count("post") == 0
    assert env.gen(gid).posted_at is None  # nothing marked: the new holder starts clean


def test_a_second_post_waits_two_leases_even_with_a_short_grace():
    env = Env()
    env.settings = load_settings({"poll_initial": POLL_INITIAL, "poll_max": POLL_MAX, "lease": LEASE,
                                  "http_timeout": 10, "submit_grace": 5}, environ={})
    env.pipeline = Pipeline(env.settings, env.store, lambda site: env.client, env.notified.append)
    gid = ambiguous(env, read_timeout())
    env.clock.t = START + 2 * LEASE - 1  # grace long gone; the first POST may still be in flight
    assert env.step(gid) == "reconciling"
    env.clock.t = START + 2 * LEASE + 1
    env.client.posts.append("job-2")
    assert env.step(gid) == "submitted"
    assert env.client.count("post") == 2


# -- a POST refused, so certainly not applied ------------------------------------------------

@pytest.mark.parametrize("exc,at_least", [(rate_limited(7.0), 7.0), (connect_refused(), POLL_INITIAL * 0.5)],
                         ids=["429", "connect-refused"])
def test_refused_post_clears_posted_at_and_retries_later(env, exc, at_least):
    gid = env.request()
    env.client.posts.append(exc)
    assert env.step(gid) == "retry"
    gen = env.gen(gid)
    assert gen.phase == SUBMIT and gen.posted_at is None and gen.errors == 1
    assert env.delay(gid) >= at_least
    # the next step starts over: a fresh snapshot, then the POST
    env.client.posts.append("job-1")
    env.client.calls.clear()
    assert env.step(gid) == "submitted"
    assert [c[0] for c in env.client.calls] == ["tracks", "post"]
    assert env.gen(gid).errors == 0


def test_snapshot_failing_retryably_retries_later(env):
    gid = env.request()
    env.client.list_failures.append(server_error(503, "GET", TRACKS_PATH))
    assert env.step(gid) == "retry"
    assert env.client.count("post") == 0
    assert env.gen(gid).errors == 1 and env.gen(gid).posted_at is None


# -- the job ------------------------------------------------------------------------------

def test_job_pending_backs_off_capped_exponentially(env):
    gid = env.submitted()
    env.client.jobs.extend([None] * 6)
    delays, attempts = [], []
    for _ in range(6):
        assert env.step(gid) == "job-pending"
        delays.append(env.delay(gid))
        attempts.append(env.gen(gid).attempts)
    assert delays == pytest.approx([1, 2, 4, 8, 8, 8])  # rng fixed at 1.0: no jitter taken off
    assert attempts == [1, 2, 3, 4, 5, 6]


def test_job_pending_delay_is_jittered_by_rng():
    env = Env(rng=lambda: 0.0)
    gid = env.submitted()
    env.client.jobs.extend([None] * 3)
    delays = []
    for _ in range(3):
        env.step(gid)
        delays.append(env.delay(gid))
    assert delays == pytest.approx([0.5, 1, 2])  # equal jitter: half of the delay at the lowest draw


def test_job_done_with_a_ready_track_finishes_and_notifies_each_subscriber_once(env):
    gid = env.submitted("r1")
    assert env.request("r2") == gid  # joined while the job runs
    ready = track("t-new")
    env.client.jobs.append(ready)
    assert env.step(gid) == OUTCOME_READY
    assert env.notified == ["r1", "r2"]
    gen = env.gen(gid)
    assert gen.phase == DONE and gen.outcome == OUTCOME_READY and gen.result == ready.resource
    for rid in ("r1", "r2"):
        req = env.store.load_request(rid)
        assert req.state == FINISHING and req.outcome == OUTCOME_READY
    # a late duplicate of the step changes nothing and calls nobody
    env.client.calls.clear()
    assert env.pipeline.advance(gid) == "finished"
    assert env.client.calls == [] and env.notified == ["r1", "r2"]


def test_retryable_poll_error_counts_errors_not_attempts(env):
    gid = env.submitted()
    env.client.jobs.extend([server_error(503, "GET", "/job-results/job-1"), None])
    assert env.step(gid) == "retry"
    assert (env.gen(gid).errors, env.gen(gid).attempts) == (1, 0)
    assert env.step(gid) == "job-pending"
    assert (env.gen(gid).errors, env.gen(gid).attempts) == (0, 1)


def test_job_failed_ends_with_job_failed_and_the_api_code(env):
    gid = env.submitted()
    env.client.jobs.append(job_failed("job-1"))
    assert env.step(gid) == "error"
    result = env.gen(gid).result
    assert result["code"] == "job_failed" and result["api_code"] == "NO_PRIMARY_AUDIO_TRACK"
    assert result["api_status"] == 422 and result["api_request_id"] == "rq-job"
    assert env.notified == ["r1"]


def test_unauthorized_ends_with_unauthorized(env):
    gid = env.submitted()
    env.client.jobs.append(unauthorized())
    assert env.step(gid) == "error"
    result = env.gen(gid).result
    assert (result["code"], result["api_status"], result["api_code"]) == (
        "unauthorized", 401, "INVALID_AUTHORIZATION_HEADER")


@pytest.mark.parametrize("where", ["snapshot", "post"])
def test_not_found_on_submit_is_upload_not_found(env, where):
    gid = env.request()
    if where == "snapshot":
        env.client.list_failures.append(not_found("GET", TRACKS_PATH))
    else:
        env.client.posts.append(not_found("POST", POST_PATH))
    assert env.step(gid) == "error"
    result = env.gen(gid).result
    assert result["code"] == "upload_not_found" and result["api_status"] == 404
    assert env.notified == ["r1"]


# -- the track ----------------------------------------------------------------------------

def preparing(env: Env) -> str:
    gid = env.submitted()
    env.client.jobs.append(track("t9", status="preparing"))
    assert env.step(gid) == "track-preparing"
    return gid


def test_preparing_track_moves_to_the_track_phase(env):
    gid = preparing(env)
    gen = env.gen(gid)
    assert (gen.phase, gen.track_id, gen.attempts, gen.job_id) == (TRACK, "t9", 0, "job-1")
    assert env.delay(gid) == pytest.approx(POLL_INITIAL)


def test_track_list_preparing_then_ready(env):
    gid = preparing(env)
    env.client.tracks["u1"] = [track("other"), track("t9", status="preparing")]
    assert env.step(gid) == "track-preparing"
    assert env.gen(gid).attempts == 1 and env.delay(gid) == pytest.approx(2 * POLL_INITIAL)
    ready = track("t9")
    env.client.tracks["u1"] = [track("other"), ready]
    assert env.step(gid) == OUTCOME_READY
    assert env.gen(gid).result == ready.resource and env.notified == ["r1"]


def test_track_list_errored(env):
    gid = preparing(env)
    env.client.tracks["u1"] = [track("t9", status="errored", error="transcription failed")]
    assert env.step(gid) == "error"
    result = env.gen(gid).result
    assert result["code"] == "track_errored" and result["message"] == "transcription failed"


def test_track_missing_from_the_list(env):
    gid = preparing(env)
    env.client.tracks["u1"] = [track("other")]
    assert env.step(gid) == "error"
    assert env.gen(gid).result["code"] == "track_missing"


def test_job_result_with_an_errored_track_records_the_track(env):
    gid = env.submitted()
    env.client.jobs.append(track("t-err", status="errored"))
    assert env.step(gid) == "error"
    gen = env.gen(gid)
    assert gen.track_id == "t-err" and gen.result["code"] == "track_errored"
    assert gen.result["message"] == "DatoCMS marked the track as errored without a reason"


# -- timing and coordination ----------------------------------------------------------------

def test_at_the_deadline_one_last_poll_then_deadline_exceeded(env):
    gid = env.submitted(ttl=100)
    env.clock.t = START + 100
    env.client.calls.clear()
    env.client.jobs.append(None)  # still running at the deadline
    assert env.step(gid) == "error"
    assert env.client.calls == [("job", "job-1")]
    result = env.gen(gid).result
    assert result["code"] == "deadline_exceeded" and "waiting for job job-1" in result["message"]
    assert env.notified == ["r1"]
    assert env.store.load_request("r1").state == FINISHING


def test_a_job_done_just_at_the_deadline_still_counts(env):
    gid = env.submitted(ttl=100)
    env.clock.t = START + 100
    env.client.jobs.append(track("t1"))
    assert env.step(gid) == "ready"
    assert env.gen(gid).outcome == "ready"


def test_deadline_message_names_the_last_error(env):
    gid = env.submitted(ttl=100)
    env.clock.t = START + 99
    env.client.jobs.append(server_error(503, method="GET", path="/job-results/job-1"))
    env.step(gid)
    env.clock.t = START + 100
    env.client.jobs.append(server_error(503, method="GET", path="/job-results/job-1"))
    assert env.step(gid) == "error"
    message = env.gen(gid).result["message"]
    assert "deadline" in message and "last error" in message and "503" in message


def test_duplicate_delivery_is_not_due(env):
    gid = env.submitted()
    env.client.calls.clear()
    assert env.pipeline.advance(gid) == "not-due"  # the clock has not moved: the step already ran
    assert env.client.calls == []


def test_busy_lock_skips_the_step(env):
    gid = env.request()
    token = env.store.lock(f"gen:{gid}", LEASE)
    assert env.pipeline.advance(gid) == "busy"
    assert env.client.calls == [] and env.gen(gid).phase == SUBMIT
    env.store.unlock(f"gen:{gid}", token)
    env.client.posts.append("job-1")
    assert env.step(gid) == "submitted"
    assert env.store.lock(f"gen:{gid}", LEASE)  # the step released its lock


def test_delays_never_exceed_the_time_left(env):
    gid = env.submitted(ttl=10)
    env.client.jobs.extend([None] * 10)
    outcomes = []
    while (outcome := env.step(gid)) == "job-pending":
        gen = env.gen(gid)
        assert gen.due <= gen.deadline + 1e-6
        outcomes.append(env.delay(gid))
    assert outcome == "error" and env.gen(gid).result["code"] == "deadline_exceeded"
    assert outcomes == pytest.approx([1, 2, 4, 2])  # the last wait is cut to the deadline
    assert env.clock.t == pytest.approx(START + 10)


def test_a_long_retry_after_is_cut_to_the_deadline(env):
    gid = env.request(ttl=5)
    env.client.posts.append(rate_limited(retry_after=30))
    assert env.step(gid) == "retry"
    gen = env.gen(gid)
    assert gen.due == pytest.approx(gen.deadline)


def test_unknown_or_finished_generation_is_finished(env):
    assert env.pipeline.advance("no-such-generation") == "finished"
    gid = env.request()
    env.store.cancel("r1", {"code": "cancelled", "message": "test"})
    assert env.pipeline.advance(gid) == "finished"
    assert env.store.load_request("r1").state == FINISHING


# -- bounded server faults ------------------------------------------------------------------

class Overrides:
    """Settings with some values replaced (whether or not Settings has the field yet)."""

    def __init__(self, settings, **values) -> None:
        self._settings = settings
        self.__dict__.update(values)

    def __getattr__(self, name: str):
        return getattr(self._settings, name)


def with_max_server_errors(limit: int) -> Env:
    env = Env()
    env.settings = Overrides(env.settings, max_server_errors=limit)
    env.pipeline = Pipeline(env.settings, env.store, lambda site: env.client, env.notified.append)
    return env


def test_server_faults_in_a_row_end_the_generation_as_protocol_error(env):
    gid = env.submitted()
    env.client.jobs.extend([server_fault()] * 8)
    for errors in range(1, 8):  # the default bound is 8
        assert env.step(gid) == "retry"
        assert env.gen(gid).errors == errors
    assert env.step(gid) == "error"
    result = env.gen(gid).result
    assert result["code"] == "protocol_error"
    assert result["api_status"] == 500 and result["api_code"] == "INTERNAL_SERVER_ERROR"
    assert "8 failed attempts in a row" in result["message"] and "last error" in result["message"]
    assert "500 INTERNAL_SERVER_ERROR" in result["message"]
    assert env.notified == ["r1"]


@pytest.mark.parametrize("make", [
    lambda: server_error(502, "GET", "/job-results/job-1"),
    lambda: server_error(503, "GET", "/job-results/job-1"),
    lambda: server_error(504, "GET", "/job-results/job-1"),
    lambda: rate_limited(1.0),
    lambda: api.NetworkError("GET /job-results/job-1: timed out", request_sent=True),
    lambda: api.TransientAPIError("GET /job-results/job-1 failed", status=500, code="SOMETHING"),
], ids=["502", "503", "504", "429", "network", "transient-500"])
def test_load_and_gateway_errors_are_not_bounded(make):
    env = with_max_server_errors(3)
    gid = env.submitted()
    env.client.jobs.extend([make() for _ in range(10)])
    assert [env.step(gid) for _ in range(10)] == ["retry"] * 10
    assert env.gen(gid).errors == 10 and env.notified == []


def test_a_success_resets_the_count_of_server_faults():
    env = with_max_server_errors(3)
    gid = env.submitted()
    env.client.jobs.extend([server_fault(), server_fault(), None, server_fault(), server_fault()])
    assert [env.step(gid) for _ in range(5)] == ["retry", "retry", "job-pending", "retry", "retry"]
    env.client.jobs.append(server_fault())
    assert env.step(gid) == "error"


def test_unreadable_answers_count_in_the_track_phase():
    env = with_max_server_errors(3)
    gid = preparing(env)
    env.client.list_failures.extend([unreadable(), unreadable(), unreadable()])
    assert [env.step(gid) for _ in range(3)] == ["retry", "retry", "error"]
    result = env.gen(gid).result
    assert result["code"] == "protocol_error" and "not JSON" in result["message"]


def test_the_bound_applies_when_the_latest_failure_is_a_fault():
    # The store keeps one count of failures in a row: a fault after a run of 429s
    # ends the generation once the run reaches the bound.
    env = with_max_server_errors(3)
    gid = env.submitted()
    env.client.jobs.extend([rate_limited(1.0), rate_limited(1.0), server_fault()])
    assert [env.step(gid) for _ in range(3)] == ["retry", "retry", "error"]


def test_server_faults_on_submit_are_bounded_too():
    env = with_max_server_errors(3)
    gid = env.request()
    env.client.list_failures.extend([server_fault(500, "GET", TRACKS_PATH)] * 2)
    assert [env.step(gid) for _ in range(2)] == ["retry", "retry"]
    env.client.posts.append(server_fault(500, "POST", POST_PATH))  # the snapshot works; the POST does not
    assert env.step(gid) == "error"
    result = env.gen(gid).result
    assert result["code"] == "protocol_error" and POST_PATH in result["message"]
    assert env.client.count("post") == 1


def test_sandbox_refusal_ends_with_sandbox_immutable(env):
    gid = env.request()
    env.client.posts.append(sandbox_immutable())
    assert env.step(gid) == "error"
    result = env.gen(gid).result
    assert result["code"] == "sandbox_immutable"
    assert result["api_code"] == "IMMUTABLE_UPLOAD_TRACKS_IN_SANDBOX_ENVIRONMENT" and result["api_status"] == 422
    assert env.client.count("post") == 1  # never retried with the other body type


# -- learning how soon a POST's track shows (repost.py) ---------------------------------------

def test_a_cold_fleet_looks_for_each_accepted_posts_track_and_learns_how_soon_it_showed():
    env = Env(visible_within=None)
    gid = env.request()
    env.client.posts.append("job-1")
    env.client.on_post = lambda: env.client.tracks.setdefault("u1", []).append(track("new-it", status="preparing"))
    assert env.step(gid) == "submitted"
    assert [c[0] for c in env.client.calls] == ["tracks", "post", "tracks"]  # snapshot, POST, probe
    assert not env.gen(gid).visibility_probe  # seen: nothing pending
    stats = env.store.timing_stats("", repost.VISIBLE)
    assert schedule.weight(stats) == pytest.approx(1.0) and schedule.quantile(stats, 1.0) < 1.0


def test_a_probe_that_does_not_see_the_track_records_the_jobs_end_as_an_upper_bound():
    env = Env(visible_within=None)
    gid = env.request()
    env.client.posts.append("job-1")
    assert env.step(gid) == "submitted"
    assert env.gen(gid).visibility_probe
    env.client.jobs.extend([None, track("new-it", status="preparing")])
    env.step(gid)
    assert env.step(gid) == "track-preparing"
    gen = env.gen(gid)
    assert not gen.visibility_probe
    stats = env.store.timing_stats("", repost.VISIBLE)
    assert schedule.weight(stats) == pytest.approx(1.0)
    assert schedule.quantile(stats, 1.0) >= (gen.phase_clock[0] - START) * 0.85  # POST to job end, bucketed


def test_a_warm_fleet_probes_one_post_in_twenty():
    for draw, probes in ((0.01, 1), (0.5, 0)):
        env = Env(rng=lambda draw=draw: draw)
        env.submitted()
        assert env.client.count("tracks") == 1 + probes


def test_a_lost_answer_is_sent_again_after_the_learned_wait_not_the_fixed_grace():
    env = Env(visible_within=40.0)  # this site's new tracks have shown within ~40 s of their POST
    env.settings = load_settings({"poll_initial": POLL_INITIAL, "poll_max": POLL_MAX, "lease": LEASE,
                                  "http_timeout": 10, "submit_grace": 300}, environ={})
    env.pipeline = Pipeline(env.settings, env.store, lambda site: env.client, env.notified.append,
                            rng=lambda: 1.0)
    wait = env.pipeline._repost_after("")
    assert 2 * 40.0 <= wait <= 2 * 40.0 * 1.2  # the margin over the learned bound, far below 300 s
    gid = ambiguous(env, read_timeout())
    env.clock.t = START + wait - 1
    assert env.step(gid) == "reconciling"
    env.clock.t = START + wait + 1
    env.client.posts.append("job-2")
    assert env.step(gid) == "submitted"
    assert env.client.count("post") == 2


def test_an_adopted_track_counts_as_evidence_too():
    env = Env(visible_within=None)
    gid = ambiguous(env, read_timeout())
    before = schedule.weight(env.store.timing_stats("", repost.VISIBLE))
    env.clock.t = START + 25
    env.client.tracks["u1"].append(track("new-it", status="preparing"))
    assert env.step(gid) == "track-preparing"
    stats = env.store.timing_stats("", repost.VISIBLE)
    assert schedule.weight(stats) == pytest.approx(before * schedule.DECAY + 1)
